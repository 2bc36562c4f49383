"""The PNGs of an output folder, drawn from its `Results` alone, so a `fogfl sim` folder and
a `fogfl up` run directory get the same plots.

matplotlib is imported inside the functions (it is slow to import) and drawn on `Figure`
objects with the Agg canvas, never pyplot, so no global figure state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fogfl.sim.results import METRIC_LABELS, Results, VariantHistory, higher_is_better

METRIC_PLOT = "metric_per_round.png"
CLIENTS_PLOT = "clients_central_vs_federated.png"
COMMUNICATION_PLOT = "communication.png"
DPI = 130
COSTS = (
    ("client_updates", "client updates sent"),
    ("bytes_edge", "edge-tier bytes"),
    ("bytes_cloud", "cloud-tier bytes"),
)


def render(results: Results, out_dir: Path) -> list[Path]:
    """Draw every plot the results support into `out_dir`; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _metric_per_round(results, out_dir / METRIC_PLOT),
        _communication(results, out_dir / COMMUNICATION_PLOT),
    ]
    if _central_column(results) is not None:
        written.append(_clients(results, out_dir / CLIENTS_PLOT))
    return written


def _metric_per_round(results: Results, path: Path) -> Path:
    metric = results.metric
    figure, (axes,) = _figure(1, f"{results.title}: {_label(metric)} per round")
    for index, variant in enumerate(results.variants):
        rounds, values = _series(variant, "round", metric)
        colour = _colour(index)
        axes.plot(rounds, values, marker="o", ms=3, color=colour, label=variant.name)
        central = results.centralized.get(variant.name, {}).get(metric)
        if central is not None:
            axes.axhline(central, color=colour, linestyle="--", linewidth=1, alpha=0.8)
    _target_line(axes, results, horizontal=True)
    axes.set_xlabel("round (0 = untrained model)")
    axes.set_ylabel(_label(metric) + (" (dashed: centralized)" if results.centralized else ""))
    _legend(axes, len(results.variants))
    return _save(figure, path)


def _communication(results: Results, path: Path) -> Path:
    metric = results.metric
    figure, panels = _figure(len(COSTS), f"{results.title}: communication vs {_label(metric)}")
    for axes, (column, label) in zip(panels, COSTS, strict=True):
        spread: list[float] = []
        for index, variant in enumerate(results.variants):
            costs, values = _cumulative(variant, column, metric)
            if not costs:
                continue
            colour = _colour(index)
            axes.plot(costs, values, color=colour, linewidth=1, alpha=0.7)
            axes.plot(costs[-1:], values[-1:], marker="o", color=colour, label=variant.name)
            spread.extend(c for c in costs if c > 0)
        if spread and max(spread) / min(spread) > 50:
            axes.set_xscale("log")
        _target_line(axes, results, horizontal=True)
        axes.set_xlabel(f"{label}, cumulative")
        axes.set_ylabel(_label(metric))
    _legend(panels[0], len(results.variants))
    return _save(figure, path)


def _clients(results: Results, path: Path) -> Path:
    label = _central_column(results)
    assert label is not None
    metric = f"eval_{label}"
    figure, (axes,) = _figure(
        1, f"{results.title}: {_label(metric)} per client", width=6.0, height=5.4
    )
    names = [v.name for v in results.variants]
    low, high = math.inf, -math.inf
    few = len(results.clients) <= 20
    for index, name in enumerate(names):
        rows = [r for r in results.clients if r.get("variant") == name]
        points = [
            (float(r[f"{label}_central"]), float(r[f"{label}_federated"]), r.get("client", ""))
            for r in rows
            if r.get(f"{label}_central") and r.get(f"{label}_federated")
        ]
        if not points:
            continue
        xs, ys, _ = zip(*points, strict=True)
        axes.scatter(xs, ys, s=18, color=_colour(index), label=name)
        if few:
            for x, y, client in points:
                axes.annotate(client, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        low, high = min(low, *xs, *ys), max(high, *xs, *ys)
    if math.isfinite(low):
        axes.plot([low, high], [low, high], color="grey", linestyle=":", linewidth=1)
    better = "above" if higher_is_better(metric) else "below"
    axes.set_xlabel(f"{_label(metric)}, centralized model")
    axes.set_ylabel(f"{_label(metric)}, federated model ({better} the diagonal: federated better)")
    _legend(axes, len(names))
    return _save(figure, path)


def _central_column(results: Results) -> str | None:
    """The per-client metric with central and federated values, the report's metric first."""
    preferred = METRIC_LABELS.get(results.metric, "").lower()
    labels = [preferred, "mae", "rmse", "accuracy", "loss"]
    for label in labels:
        if label and any(row.get(f"{label}_central") for row in results.clients):
            return label
    return None


def _series(variant: VariantHistory, x: str, y: str) -> tuple[list[float], list[float]]:
    pairs = [(r.get(x), r.get(y)) for r in variant.rows]
    kept = [(a, b) for a, b in pairs if a is not None and b is not None]
    return [a for a, _ in kept], [b for _, b in kept]


def _cumulative(variant: VariantHistory, cost: str, metric: str) -> tuple[list[float], list[float]]:
    """(cost so far, metric after the round) for every round with both."""
    total = 0.0
    costs, values = [], []
    for row in variant.rows:
        total += row.get(cost) or 0.0
        value = row.get(metric)
        if (row.get("round") or 0) >= 1 and value is not None and row.get(cost) is not None:
            costs.append(total)
            values.append(value)
    return costs, values


def _target_line(axes: Any, results: Results, horizontal: bool) -> None:
    if results.target is not None and horizontal:
        axes.axhline(results.target, color="black", linestyle=":", linewidth=1)
        axes.annotate(
            f"target {results.target:g}",
            (0.01, results.target),
            xycoords=("axes fraction", "data"),
            fontsize=8,
            xytext=(0, 3),
            textcoords="offset points",
        )


def _figure(
    columns: int, title: str, width: float = 5.6, height: float = 4.4
) -> tuple[Any, Sequence[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height), layout="constrained")
    axes = figure.subplots(1, columns, squeeze=False)[0]
    figure.suptitle(title, fontsize=12)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return figure, list(axes)


def _legend(axes: Any, entries: int) -> None:
    if entries:
        axes.legend(fontsize=7 if entries > 6 else 8, ncols=2 if entries > 10 else 1)


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return path


def _colour(index: int) -> Any:
    from matplotlib import colormaps

    palette = colormaps["tab10" if index < 10 else "tab20"]
    return palette(index % palette.N)


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)
