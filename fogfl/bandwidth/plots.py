"""PNGs of the predictor's and the agent's results: forecasts against the actual bandwidth,
error CDFs per predictor, the agent's reward curve and its choices over a trace.

matplotlib is imported inside the functions and drawn on `Figure` objects with the Agg
canvas, never pyplot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fogfl.bandwidth.evaluation import ControllerResult, PredictorComparison
from fogfl.bandwidth.metrics import relative_errors

DPI = 120
FORECAST_PLOT = "predicted_vs_actual.png"
ERROR_CDF_PLOT = "error_cdf.png"
REWARD_PLOT = "reward_curve.png"
CHOICES_PLOT = "choices.png"


def _figure(width: float = 8.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return path


def forecast_plot(comparison: PredictorComparison, path: Path, points: int = 300) -> Path:
    """The first `points` test windows: actual bandwidth, the LSTM and the best baseline."""
    figure = _figure()
    axes = figure.add_subplot()
    shown = slice(0, min(points, comparison.windows))
    axes.plot(comparison.actual[shown], color="black", linewidth=1.2, label="actual")
    best = comparison.best_baseline
    for name in ("lstm", best):
        if name in comparison.forecasts:
            axes.plot(comparison.forecasts[name][shown], linewidth=0.9, label=name)
    axes.set_xlabel("test window (time order, series after series)")
    axes.set_ylabel("next bandwidth (Mbit/s)")
    axes.legend(loc="best")
    axes.set_title("forecast of the next sample on the test split")
    return _save(figure, path)


def error_cdf_plot(comparison: PredictorComparison, path: Path) -> Path:
    """Per predictor, the share of test windows within each relative error."""
    figure = _figure()
    axes = figure.add_subplot()
    for name, forecast in comparison.forecasts.items():
        errors = np.sort(np.minimum(relative_errors(forecast, comparison.actual), 10.0)) * 100
        share = np.arange(1, len(errors) + 1) / len(errors)
        axes.step(errors, share, where="post", label=name)
    for limit in (2, 10):
        axes.axvline(limit, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xscale("symlog", linthresh=1.0)
    axes.set_xlabel("relative error (%)")
    axes.set_ylabel("share of test windows")
    axes.set_ylim(0, 1.01)
    axes.legend(loc="lower right")
    return _save(figure, path)


def reward_curve_plot(episode_rewards: Sequence[float], path: Path) -> Path:
    """Mean reward per round of each training episode, with its 100-episode moving mean."""
    figure = _figure()
    axes = figure.add_subplot()
    rewards = np.asarray(episode_rewards, dtype=np.float64)
    episodes = np.arange(1, len(rewards) + 1)
    axes.plot(episodes, rewards, linewidth=0.5, alpha=0.5, label="episode")
    window = min(100, len(rewards))
    moving = np.convolve(rewards, np.ones(window) / window, mode="valid")
    axes.plot(episodes[window - 1 :], moving, linewidth=1.5, label=f"mean of last {window}")
    axes.set_xlabel("episode")
    axes.set_ylabel("mean reward per round")
    axes.legend(loc="lower right")
    return _save(figure, path)


def choices_plot(results: dict[str, ControllerResult], rounds: int, path: Path) -> Path:
    """The first episode's rounds: the link's throughput during each upload, and the
    byte ratio each controller sent (a cross for a missed deadline)."""
    figure = _figure(8.0, 5.5)
    link, chosen = figure.subplots(2, 1, sharex=True)
    first = next(iter(results.values())).outcomes[:rounds]
    link.plot([o.round + 1 for o in first], [o.mean_mbit_s for o in first], color="black")
    link.set_ylabel("throughput during the upload (Mbit/s)", fontsize=8)
    link.set_title(f"first held-out episode: {rounds} rounds")
    for name, result in results.items():
        if name.startswith("fixed_"):
            continue
        outcomes = result.outcomes[:rounds]
        x = [o.round + 1 for o in outcomes]
        (line,) = chosen.plot(
            x, [o.codec.byte_ratio for o in outcomes], marker="o", markersize=3, label=name
        )
        missed = [o for o in outcomes if o.missed]
        chosen.scatter(
            [o.round + 1 for o in missed], [o.codec.byte_ratio for o in missed],
            marker="x", s=40, color=line.get_color(),
        )  # fmt: skip
    chosen.set_xlabel("round")
    chosen.set_ylabel("bytes sent ÷ float32 bytes")
    chosen.legend(loc="upper right", fontsize=7, ncol=3)
    return _save(figure, path)
