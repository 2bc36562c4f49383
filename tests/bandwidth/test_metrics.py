"""The forecast metrics against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from fogfl.bandwidth.metrics import forecast_metrics


def test_metrics_by_hand() -> None:
    actual = np.array([100.0, 100.0, 50.0, 10.0])
    predicted = np.array([101.0, 105.0, 50.0, 20.0])
    m = forecast_metrics(predicted, actual, scale=10.0)
    assert m["mse"] == pytest.approx((1 + 25 + 0 + 100) / 4)
    assert m["mae"] == pytest.approx((1 + 5 + 0 + 10) / 4)
    assert m["mape"] == pytest.approx(100 * (0.01 + 0.05 + 0 + 1.0) / 4)
    assert m["accuracy"] == pytest.approx(50.0)  # 1% and 0% are within 2%
    assert m["within_10pct"] == pytest.approx(75.0)
    assert m["mse_scaled"] == pytest.approx(m["mse"] / 100)
    assert m["mae_scaled"] == pytest.approx(m["mae"] / 10)


def test_zero_actual_values_leave_mape_but_count_for_accuracy() -> None:
    m = forecast_metrics(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.0, 2.0]))
    assert m["mape"] == 0.0  # only the last window defines a percentage
    assert m["accuracy"] == pytest.approx(200 / 3)  # the exact 0 and the exact 2


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        forecast_metrics(np.zeros(3), np.zeros(2))
