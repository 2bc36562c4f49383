"""Forecast error metrics, all computed in Mbit/s against the actual next bandwidth."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

METRICS = ("mse", "mae", "mape", "accuracy", "within_10pct", "mse_scaled", "mae_scaled")


def relative_errors(predicted: FloatArray, actual: FloatArray) -> FloatArray:
    """|predicted − actual| / actual; where the actual value is 0 the error is 0 for an
    exact prediction and infinite otherwise."""
    error = np.abs(predicted - actual)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = error / np.abs(actual)
    return np.where(actual == 0, np.where(error == 0, 0.0, np.inf), relative)


def forecast_metrics(
    predicted: FloatArray, actual: FloatArray, scale: float = 1.0
) -> dict[str, float]:
    """mse (Mbit/s²), mae (Mbit/s), mape (%, over the windows whose actual value is not 0),
    accuracy (% of predictions within 2% of the actual value, the seed's measure),
    within_10pct (% within 10%), and mse/mae in units of `scale` (the training split's
    bandwidth range, the seed's normalised units)."""
    predicted = np.asarray(predicted, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if predicted.shape != actual.shape or predicted.size == 0:
        raise ValueError(f"{predicted.shape} predictions for {actual.shape} actual values")
    error = predicted - actual
    relative = relative_errors(predicted, actual)
    defined = actual != 0
    mse = float(np.mean(error**2))
    mae = float(np.mean(np.abs(error)))
    return {
        "mse": mse,
        "mae": mae,
        "mape": float(100 * np.mean(relative[defined])) if defined.any() else float("nan"),
        "accuracy": float(100 * np.mean(relative <= 0.02)),
        "within_10pct": float(100 * np.mean(relative <= 0.10)),
        "mse_scaled": mse / scale**2,
        "mae_scaled": mae / scale,
    }
