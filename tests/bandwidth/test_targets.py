"""The LSTM's targets by hand: what the network learns for each, and how its output becomes a
forecast (a residual of 0 is the last value; every target round-trips)."""

from __future__ import annotations

import numpy as np
import pytest

from fogfl.bandwidth import cli
from fogfl.bandwidth.predictor import SEED_ARCHITECTURE, Architecture
from fogfl.bandwidth.targets import TARGETS, forecasts, network_inputs, network_targets
from fogfl.bandwidth.windows import Normalisation
from fogfl.errors import BandwidthError

# Bandwidth between 0 and 200 Mbit/s in training: a range of 200.
NORM = Normalisation(np.array([0.0, 0.0, 0.0, 0.0]), np.array([100.0, 200.0, 0.1, 1.0]))


def windows_of(*bandwidths: list[float]) -> np.ndarray:
    rows = np.zeros((len(bandwidths), len(bandwidths[0]), 4))
    rows[:, :, 1] = bandwidths
    rows[:, :, 0] = 50.0
    return rows


def test_level_is_the_normalised_next_bandwidth() -> None:
    windows = windows_of([10.0, 20.0, 30.0])
    assert network_targets("level", windows, np.array([50.0]), NORM) == pytest.approx([0.25])
    assert forecasts("level", windows, np.array([0.5]), NORM) == pytest.approx([100.0])


def test_a_residual_of_zero_is_the_last_value() -> None:
    windows = windows_of([10.0, 20.0, 30.0], [5.0, 5.0, 7.0])
    change = network_targets("residual", windows, np.array([40.0, 6.0]), NORM)
    assert change == pytest.approx([10 / 200, -1 / 200])  # in the training range's units
    assert forecasts("residual", windows, np.zeros(2), NORM) == pytest.approx([30.0, 7.0])
    np.testing.assert_array_equal(
        network_inputs("residual", windows, NORM), network_inputs("level", windows, NORM)
    )


def test_window_target_is_the_change_in_units_of_the_windows_mean() -> None:
    slow, fast = [10.0, 10.0, 10.0, 20.0], [100.0, 100.0, 100.0, 200.0]
    windows = windows_of(slow, fast)
    change = network_targets("window", windows, np.array([25.0, 250.0]), NORM)
    assert change == pytest.approx([5 / 12.5, 50 / 125])  # the same move at both levels
    inputs = network_inputs("window", windows, NORM)
    np.testing.assert_allclose(inputs[0, :, 1], inputs[1, :, 1])
    assert inputs[0, :, 1] == pytest.approx([-0.8, -0.8, -0.8, 0.0])
    assert inputs[0, :, 0] == pytest.approx([0.5] * 4)  # other features: min-max as before


def test_a_window_of_zeros_stays_finite() -> None:
    windows = windows_of([0.0, 0.0, 0.0])
    inputs = network_inputs("window", windows, NORM)
    assert np.all(np.isfinite(inputs))
    # The scale's floor is 1 % of the training range: 2 Mbit/s.
    assert network_targets("window", windows, np.array([1.0]), NORM) == pytest.approx([0.5])


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_round_trips(target: str) -> None:
    rng = np.random.default_rng(0)
    windows = windows_of(*rng.uniform(0, 200, (6, 10)).tolist())
    actual = rng.uniform(0, 200, 6)
    learnt = network_targets(target, windows, actual, NORM)
    assert forecasts(target, windows, learnt, NORM) == pytest.approx(actual)


def test_the_target_is_part_of_the_saved_architecture() -> None:
    saved = Architecture(target="residual").to_json()
    assert Architecture.from_json(saved, "p.json").target == "residual"
    older = {k: v for k, v in saved.items() if k != "target"}
    assert Architecture.from_json(older, "p.json").target == "level"
    with pytest.raises(BandwidthError, match="unknown target 'delta'"):
        Architecture.from_json({**saved, "target": "delta"}, "p.json")
    with pytest.raises(BandwidthError, match="unknown target"):
        network_targets("delta", windows_of([1.0]), np.array([1.0]), NORM)


def test_the_default_is_the_residual_and_the_seeds_model_stays_available() -> None:
    assert Architecture().target == "residual" == cli.DEFAULT_TARGET
    assert SEED_ARCHITECTURE.target == "level"
    # Only the target differs: the seed's layers are the default's.
    assert {**SEED_ARCHITECTURE.to_json(), "target": None} == {
        **Architecture().to_json(),
        "target": None,
    }
    assert SEED_ARCHITECTURE.lstm_units == (128, 64, 32)
    assert (SEED_ARCHITECTURE.lstm_dropout, SEED_ARCHITECTURE.dense_dropout) == (0.2, 0.3)
