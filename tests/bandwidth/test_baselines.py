"""The baselines against hand computations, on the same windows as the LSTM."""

from __future__ import annotations

import numpy as np
import pytest

from fogfl.bandwidth.baselines import (
    RecursiveLeastSquares,
    all_baselines,
    ewma,
    harmonic_mean,
    last_value,
)
from fogfl.bandwidth.series import LinkSeries
from fogfl.bandwidth.windows import windowed

HISTORY = np.array([[1.0, 2.0, 4.0, 4.0, 8.0, 1.0, 2.0, 4.0, 4.0, 8.0]])


def test_last_value() -> None:
    assert last_value(HISTORY).tolist() == [8.0]


def test_ewma_by_hand() -> None:
    s = 1.0
    for x in HISTORY[0, 1:]:
        s = 0.5 * x + 0.5 * s
    assert ewma(HISTORY).tolist() == [pytest.approx(s)]
    assert ewma(HISTORY, alpha=1.0).tolist() == [8.0]


def test_harmonic_mean_of_the_last_five() -> None:
    assert harmonic_mean(HISTORY).tolist() == [
        pytest.approx(5 / (1 + 1 / 2 + 1 / 4 + 1 / 4 + 1 / 8))
    ]
    assert harmonic_mean(np.array([[3.0, 0.0, 2.0]]), k=2).tolist() == [0.0]


def test_rls_learns_an_autoregressive_series_exactly() -> None:
    x = [0.3, 0.9]
    for _ in range(200):
        x.append(0.5 * x[-1] - 0.3 * x[-2] + 0.4)
    model = RecursiveLeastSquares(order=2, forgetting=1.0, ridge=1e-9)
    errors = []
    for t in range(2, len(x)):
        recent = np.array(x[t - 2 : t])
        errors.append(abs(model.predict(recent) - x[t]))
        model.update(recent, x[t])
    assert errors[0] > 0.01  # it starts as "last value"
    assert max(errors[-50:]) < 1e-6
    np.testing.assert_allclose(model.weights, [-0.3, 0.5, 0.4], atol=1e-5)


def test_every_baseline_forecasts_every_test_window() -> None:
    rng = np.random.default_rng(0)
    n = 200
    bandwidth = 5 + np.sin(np.arange(n) / 5) + rng.normal(0, 0.05, n)
    features = np.column_stack([np.zeros(n), bandwidth, np.zeros(n), np.ones(n)])
    data = windowed([LinkSeries("s", np.arange(n, dtype=float), features)])
    forecasts = all_baselines(data)
    assert set(forecasts) == {"last_value", "ewma", "harmonic_mean", "rls"}
    for name, values in forecasts.items():
        assert values.shape == data.test.targets.shape, name
    # On a smooth series the online AR model beats repeating the last value.
    err = {k: np.mean(np.abs(v - data.test.targets)) for k, v in forecasts.items()}
    assert err["rls"] < err["last_value"]
