"""Windows: 10 samples in, the next bandwidth out, split by time 70/15/15, normalised with
the training part's extremes only."""

from __future__ import annotations

import numpy as np
import pytest

from fogfl.bandwidth.series import BANDWIDTH, LinkSeries
from fogfl.bandwidth.windows import Normalisation, windowed
from fogfl.errors import BandwidthError


def ramp(n: int, name: str = "ramp") -> LinkSeries:
    features = np.column_stack([np.zeros(n), np.arange(n, dtype=float), np.zeros(n), np.ones(n)])
    return LinkSeries(name, np.arange(n, dtype=float), features)


def test_windows_align_inputs_and_targets_and_split_by_time() -> None:
    data = windowed([ramp(100)])
    # Targets at positions 10…69 train, 70…84 validation, 85…99 test.
    assert data.train.targets.tolist() == list(range(10, 70))
    assert data.validation.targets.tolist() == list(range(70, 85))
    assert data.test.targets.tolist() == list(range(85, 100))
    assert data.test.inputs.shape == (15, 10, 4)
    assert data.test.inputs[0, :, BANDWIDTH].tolist() == list(range(75, 85))


def test_normalisation_comes_from_the_training_part_only() -> None:
    series = ramp(100)
    series.features[95, BANDWIDTH] = 1e6  # a spike in the test part
    data = windowed([series])
    assert data.normalisation.high[BANDWIDTH] == 69
    assert data.normalisation.low[BANDWIDTH] == 0
    # A constant feature is only shifted.
    assert data.normalisation.scale[0] == 1.0


def test_every_series_contributes_to_every_split() -> None:
    data = windowed([ramp(100, "a"), ramp(40, "b")])
    assert set(data.test.series.tolist()) == {0, 1}
    assert data.names == ("a", "b")


def test_a_too_short_series_is_refused() -> None:
    with pytest.raises(BandwidthError, match=r"trace short has 19 samples; .* at least 20"):
        windowed([ramp(19, "short")])


def test_normalisation_round_trips_and_refuses_garbage() -> None:
    norm = Normalisation(np.array([0.0, 1, 2, 3]), np.array([1.0, 3, 2, 4]))
    back = Normalisation.from_json(norm.to_json(), "x")
    assert np.array_equal(back.low, norm.low) and np.array_equal(back.high, norm.high)
    assert norm.bandwidth_mbit_s(norm.bandwidth(np.array([2.5]))).tolist() == [2.5]
    for bad in ({"low": [0, 1]}, {"low": [0, 1], "high": [1, 2]}, {"low": "a", "high": "b"}):
        with pytest.raises(BandwidthError, match="normalisation"):
            Normalisation.from_json(bad, "x")
