"""Comparisons on held-out data: the LSTM beside the baselines on the same test windows, and
the agent beside the rules, the oracle, random and every fixed codec on the same rounds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fogfl.bandwidth.agent import Forecaster, forecast_for
from fogfl.bandwidth.baselines import all_baselines
from fogfl.bandwidth.controllers import Controller
from fogfl.bandwidth.environment import (
    EnvironmentSettings,
    LinkTrace,
    RoundOutcome,
    UploadEnvironment,
)
from fogfl.bandwidth.metrics import forecast_metrics
from fogfl.bandwidth.predictor import Predictor
from fogfl.bandwidth.series import BANDWIDTH
from fogfl.bandwidth.windows import WindowedData

FloatArray = npt.NDArray[np.float64]
PREDICTORS = ("lstm", "last_value", "ewma", "harmonic_mean", "rls")


@dataclass
class PredictorComparison:
    """Per predictor: its forecasts for the test windows and their metrics."""

    actual: FloatArray
    forecasts: dict[str, FloatArray]
    metrics: dict[str, dict[str, float]]
    windows: int

    @property
    def best_baseline(self) -> str:
        baselines = [n for n in self.metrics if n != "lstm"]
        return min(baselines, key=lambda n: self.metrics[n]["mse"])

    def summary(self) -> dict[str, Any]:
        best = self.best_baseline
        lstm = self.metrics.get("lstm")
        return {
            "windows": self.windows,
            "predictors": self.metrics,
            "best_baseline": best,
            "lstm_beats_best_baseline": None
            if lstm is None
            else {
                "mse": lstm["mse"] < self.metrics[best]["mse"],
                "mae": lstm["mae"] < self.metrics[best]["mae"],
            },
        }


def compare_predictors(
    data: WindowedData, predictor: Predictor | None, split: str = "test"
) -> PredictorComparison:
    """Every baseline, and the LSTM when given, on exactly the windows of `split`."""
    windows = data.split(split)
    forecasts = dict(all_baselines(data, split))
    if predictor is not None:
        forecasts = {"lstm": predictor.predict(windows.inputs), **forecasts}
    scale = float(data.normalisation.scale[BANDWIDTH])
    metrics = {n: forecast_metrics(f, windows.targets, scale) for n, f in forecasts.items()}
    return PredictorComparison(windows.targets, forecasts, metrics, len(windows))


@dataclass
class ControllerResult:
    """A controller's rounds over every held-out trace and start."""

    name: str
    outcomes: list[RoundOutcome] = field(default_factory=list)
    predicted_upload_s: list[float | None] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        rewards = [o.reward for o in self.outcomes]
        sizes = [o.upload.bytes for o in self.outcomes]
        return {
            "reward": float(np.mean(rewards)),
            "deadline_miss_rate": float(np.mean([o.missed for o in self.outcomes])),
            "bytes_per_round": float(np.mean(sizes)),
            "bytes_sent": float(np.sum(sizes)),
            "mean_byte_ratio": float(np.mean([o.codec.byte_ratio for o in self.outcomes])),
            "mean_fidelity_on_time": float(
                np.mean([o.codec.fidelity if not o.missed else 0.0 for o in self.outcomes])
            ),
            "rounds": float(len(self.outcomes)),
        }


def episode_starts(trace: LinkTrace, count: int) -> list[float]:
    """`count` evenly spaced starting moments over one loop of the trace."""
    return [trace.duration_s * i / count for i in range(count)]


def run_controller(
    controller: Controller,
    traces: Sequence[LinkTrace],
    environment: EnvironmentSettings,
    starts: int = 5,
    forecaster: Forecaster | None = None,
) -> ControllerResult:
    """The controller's rounds from the same starts of every trace; it sees the measured
    history, the forecast (when a forecaster is given) and, for the oracle, the future."""
    result = ControllerResult(controller.name)
    for trace in traces:
        for start in episode_starts(trace, starts):
            env = UploadEnvironment(trace, environment, start)
            while not env.done:
                decision = controller.decide(
                    env.history, forecast_for(env.history, forecaster), env.upload_seconds
                )
                result.predicted_upload_s.append(decision.predicted_upload_s)
                result.outcomes.append(env.step(decision.codec))
    return result


def compare_controllers(
    controllers: Sequence[Controller],
    traces: Sequence[LinkTrace],
    environment: EnvironmentSettings,
    starts: int = 5,
    forecasters: dict[str, Forecaster] | None = None,
) -> dict[str, ControllerResult]:
    """Every controller on the same rounds; `forecasters` by controller name."""
    forecasters = forecasters or {}
    return {
        c.name: run_controller(c, traces, environment, starts, forecasters.get(c.name))
        for c in controllers
    }
