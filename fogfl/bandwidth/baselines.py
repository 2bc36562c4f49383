"""The simple forecasters the LSTM must beat, each on the same windows: last value, EWMA,
harmonic mean of the last k samples (model-predictive bitrate control's predictor), and a
linear autoregressive model fitted online by recursive least squares."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # annotations only: the runtime's controllers import this module
    from fogfl.bandwidth.windows import WindowedData, Windows

FloatArray = npt.NDArray[np.float64]

EWMA_ALPHA = 0.5
HARMONIC_K = 5
RLS_ORDER = 5
RLS_FORGETTING = 0.99


def last_value(history: FloatArray) -> FloatArray:
    """The last sample of each window (rows of `history`)."""
    return np.asarray(history[:, -1], dtype=np.float64)


def ewma(history: FloatArray, alpha: float = EWMA_ALPHA) -> FloatArray:
    """s₀ = x₀, sᵢ = α·xᵢ + (1 − α)·sᵢ₋₁ over each window; the forecast is the last s."""
    smoothed = np.asarray(history[:, 0], dtype=np.float64).copy()
    for column in range(1, history.shape[1]):
        smoothed = alpha * history[:, column] + (1 - alpha) * smoothed
    return smoothed


def harmonic_mean(history: FloatArray, k: int = HARMONIC_K) -> FloatArray:
    """k / Σ 1/xᵢ over each window's last k samples; 0 when one of them is 0."""
    recent = np.asarray(history[:, -k:], dtype=np.float64)
    with np.errstate(divide="ignore"):
        inverse = np.where(recent > 0, 1.0 / np.where(recent > 0, recent, 1.0), np.inf)
    total = inverse.sum(axis=1)
    return np.where(np.isinf(total), 0.0, recent.shape[1] / total)


class RecursiveLeastSquares:
    """x̂ₜ = w·[xₜ₋ₚ … xₜ₋₁, 1], refitted after each observation to the exponentially
    weighted least squares (forgetting λ) of everything seen. It keeps the weighted normal
    equations R w = r and solves them, which gives RLS's weights without the covariance
    recursion's loss of positive definiteness on long series; `ridge` is RLS's 1/δ."""

    def __init__(self, order: int, forgetting: float = RLS_FORGETTING, ridge: float = 1e-2):
        self.order = order
        self.forgetting = forgetting
        self.ridge = ridge
        self.weights: FloatArray = np.zeros(order + 1)
        self.weights[order - 1] = 1.0  # until it has learnt anything: the last value
        self.gram = np.zeros((order + 1, order + 1))
        self.moment = np.zeros(order + 1)
        self.seen = 0

    def regressors(self, recent: FloatArray) -> FloatArray:
        return np.append(recent[-self.order :], 1.0)

    def predict(self, recent: FloatArray) -> float:
        return float(self.weights @ self.regressors(recent))

    def update(self, recent: FloatArray, actual: float) -> None:
        phi = self.regressors(recent)
        self.gram = self.forgetting * self.gram + np.outer(phi, phi)
        self.moment = self.forgetting * self.moment + phi * actual
        self.seen += 1
        if self.seen > self.order:
            prior = np.zeros(self.order + 1)
            prior[self.order - 1] = 1.0  # the ridge pulls towards "last value", not 0
            regularised = self.gram + self.ridge * np.eye(self.order + 1)
            self.weights = np.asarray(
                np.linalg.solve(regularised, self.moment + self.ridge * prior), dtype=np.float64
            )


def rls(
    data: WindowedData,
    split: str = "test",
    order: int = RLS_ORDER,
    forgetting: float = RLS_FORGETTING,
) -> FloatArray:
    """RLS forecasts for `split`'s windows: per series, one model runs through all its
    windows in time order (train, validation, test), forecasting each before it learns the
    actual value; it works on the normalised bandwidth."""
    wanted = data.split(split)
    every = [data.train, data.validation, data.test]
    series = np.concatenate([w.series for w in every])
    position = np.concatenate([w.position for w in every])
    history = data.normalisation.bandwidth(np.concatenate([w.history for w in every]))
    targets = data.normalisation.bandwidth(np.concatenate([w.targets for w in every]))
    forecasts: dict[tuple[int, int], float] = {}
    for index in np.unique(series):
        model = RecursiveLeastSquares(order, forgetting)
        rows = np.flatnonzero(series == index)
        for row in rows[np.argsort(position[rows])]:
            forecasts[(int(index), int(position[row]))] = model.predict(history[row])
            model.update(history[row], float(targets[row]))
    keys = zip(wanted.series.tolist(), wanted.position.tolist(), strict=True)
    scaled = np.array([forecasts[key] for key in keys])
    return data.normalisation.bandwidth_mbit_s(scaled)


def window_baselines(windows: Windows) -> dict[str, FloatArray]:
    """The baselines that need only each window's own history."""
    functions: dict[str, Callable[[FloatArray], FloatArray]] = {
        "last_value": last_value,
        "ewma": ewma,
        "harmonic_mean": harmonic_mean,
    }
    return {name: f(windows.history) for name, f in functions.items()}


def all_baselines(data: WindowedData, split: str = "test") -> dict[str, FloatArray]:
    """Every baseline's forecasts for the windows of `split`, by name."""
    return {**window_baselines(data.split(split)), "rls": rls(data, split)}
