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
ROUNDS_PLOT = "rounds.png"
TIME_PLOT = "metric_vs_sim_time.png"
# Every PNG `render` may write; all are removed before drawing, so a folder never shows a
# plot of an earlier run beside the new ones.
PLOTS = (METRIC_PLOT, CLIENTS_PLOT, COMMUNICATION_PLOT, ROUNDS_PLOT, TIME_PLOT)
DPI = 130
FAILED_COLOUR = "#d62728"
LONG_COLOUR = "#ff7f0e"
FAILED_LABEL = "round with a failed region"
LONG_LABEL = "long round"
COSTS = (
    ("client_updates", "client updates sent"),
    ("bytes_up", "uplink bytes (updates and partials)"),
    ("bytes_edge", "edge-tier bytes"),
    ("bytes_cloud", "cloud-tier bytes"),
)


def render(results: Results, out_dir: Path) -> list[Path]:
    """Draw every plot the results support into `out_dir`, after removing the plots an
    earlier run left there; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_plots(out_dir)
    return [_save(figure, out_dir / name) for name, figure in figures(results).items()]


def figures(results: Results) -> dict[str, Any]:
    """Every figure the results support (matplotlib `Figure`s), by file name."""
    drawn = {
        METRIC_PLOT: _metric_per_round(results),
        COMMUNICATION_PLOT: _communication(results),
        ROUNDS_PLOT: _rounds(results),
    }
    if _central_column(results) is not None:
        drawn[CLIENTS_PLOT] = _clients(results)
    if any(v is not None for variant in results.variants for v in variant.values("sim_seconds")):
        drawn[TIME_PLOT] = _metric_vs_time(results)
    return drawn


def remove_plots(out_dir: Path) -> list[Path]:
    """Remove the PNGs `render` writes from `out_dir` (other files stay); returns them."""
    removed = []
    for name in PLOTS:
        path = out_dir / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def _metric_per_round(results: Results) -> Any:
    metric = results.metric
    figure, (axes,) = _figure(1, f"{results.title}: {_label(metric)} per round")
    for index, variant in enumerate(results.variants):
        rounds, values = _series(variant, "round", metric)
        colour = _colour(index)
        axes.plot(rounds, values, marker="o", ms=3, color=colour, label=variant.name)
        _mark_points(axes, variant, rounds, values)
    _centralized_lines(axes, results)
    _mark_rounds(axes, results)
    _target_line(axes, results, horizontal=True)
    axes.set_xlabel("round (0 = untrained model)")
    axes.set_ylabel(_label(metric))
    _round_ticks(axes.xaxis)
    _legend(axes)
    return figure


def _centralized_lines(axes: Any, results: Results) -> None:
    """One dashed line per distinct centralized result, labelled with the variants it is
    the baseline of (variants with the same clients share one)."""
    groups: dict[float, list[int]] = {}
    for index, variant in enumerate(results.variants):
        central = results.centralized.get(variant.name, {}).get(results.metric)
        if central is not None:
            groups.setdefault(central, []).append(index)
    for value, members in groups.items():
        names = [results.variants[i].name for i in members]
        if len(groups) == 1 and len(members) == len(results.variants) > 1:
            who = "every variant"
        else:
            who = ", ".join(names) if len(names) <= 3 else f"{names[0]} and {len(names) - 1} more"
        axes.axhline(
            value,
            color=_colour(members[0]),
            linestyle="--",
            linewidth=1.2,
            alpha=0.9,
            label=f"centralized ({who}): {value:.3g}",
        )


def _rounds(results: Results) -> Any:
    """Seconds per round and the regions that answered or failed, with the problems marked."""
    timed = results.kind == "up"
    figure, (seconds_axes, regions_axes) = _figure(
        2, f"{results.title}: rounds" + ("" if timed else " (simulated: compute time)")
    )
    durations: list[float] = []
    several = len(results.variants) > 1
    for index, variant in enumerate(results.variants):
        rounds, seconds = _series(variant, "round", "round_seconds")
        colour = _colour(index)
        seconds_axes.plot(rounds, seconds, marker="o", ms=3, color=colour, label=variant.name)
        _mark_points(seconds_axes, variant, rounds, seconds)
        durations += [s for s in seconds if s > 0]
        kept = [
            (int(n), int(answered), int(row.get("failed_regions") or 0))
            for row in variant.rows
            if (n := row.get("round")) and (answered := row.get("regions")) is not None
        ]
        if not kept:
            continue
        numbers, ok, failed = (list(column) for column in zip(*kept, strict=True))
        if several:
            regions_axes.plot(numbers, ok, marker="o", ms=3, color=colour, label=variant.name)
            _mark_points(regions_axes, variant, [float(n) for n in numbers], [float(v) for v in ok])
        else:
            regions_axes.bar(numbers, ok, color=colour, label="regions that answered")
            if any(failed):
                regions_axes.bar(
                    numbers, failed, bottom=ok, color=FAILED_COLOUR, label="failed regions"
                )
    if durations and max(durations) / min(durations) > 30:
        seconds_axes.set_yscale("log")
        _plain_ticks(seconds_axes.yaxis)
    else:
        seconds_axes.set_ylim(bottom=0)
    timeout = results.round_timeout_s
    if timeout is not None and durations and timeout > 3 * max(durations):
        # Far above every round: a line there would squash the rounds or fall off the axes.
        seconds_axes.set_title(f"server round timeout {timeout:g} s, far above", fontsize=9)
    elif timeout is not None:
        seconds_axes.axhline(
            results.round_timeout_s,
            color="black",
            linestyle=":",
            linewidth=1,
            label=f"server round timeout {results.round_timeout_s:g} s",
        )
    _mark_rounds(seconds_axes, results)
    seconds_axes.set_xlabel("round")
    seconds_axes.set_ylabel("seconds")
    regions_axes.set_xlabel("round")
    regions_axes.set_ylabel("regions that answered" if several else "regions")
    # Headroom above the bars for the legend.
    regions_axes.set_ylim(0, max(regions_axes.get_ylim()[1], 1) * 1.4)
    for axes in (seconds_axes, regions_axes):
        _round_ticks(axes.xaxis)
    _round_ticks(regions_axes.yaxis)
    if several:  # one variant's bars show its failed regions in red already
        _mark_rounds(regions_axes, results)
    _legend(seconds_axes)
    _legend(regions_axes)
    return figure


def _communication(results: Results) -> Any:
    metric = results.metric
    figure, panels = _figure(len(COSTS), f"{results.title}: communication vs {_label(metric)}")
    for axes, (column, label) in zip(panels, COSTS, strict=True):
        spread: list[float] = []
        for index, variant in enumerate(results.variants):
            costs, values, rounds = _cumulative(variant, column, metric)
            if not costs:
                continue
            colour = _colour(index)
            axes.plot(costs, values, color=colour, linewidth=1, alpha=0.7, marker=".", ms=4)
            axes.plot(costs[-1:], values[-1:], marker="o", color=colour, label=variant.name)
            _mark_points(axes, variant, costs, values, rounds, labelled=True)
            spread.extend(c for c in costs if c > 0)
        log = bool(spread) and max(spread) / min(spread) > 30
        if log:
            axes.set_xscale("log")
        if column.startswith("bytes"):
            _bytes_ticks(axes.xaxis)
        else:
            _count_ticks(axes.xaxis, log)
        _target_line(axes, results, horizontal=True)
        axes.set_xlabel(f"{label}, cumulative" + (" (log scale)" if log else ""))
        axes.set_ylabel(_label(metric))
        # Each panel's x is its own cost; the variants are the same in all three.
        _legend(axes)
    return figure


def _metric_vs_time(results: Results) -> Any:
    """The metric against the simulated wall-clock time (the clients' links, fogfl.sim.clock)."""
    metric = results.metric
    figure, (axes,) = _figure(1, f"{results.title}: {_label(metric)} vs simulated time")
    for index, variant in enumerate(results.variants):
        times, values, rounds = _cumulative(variant, "sim_seconds", metric)
        if not times:
            continue
        colour = _colour(index)
        axes.plot(times, values, color=colour, linewidth=1, alpha=0.7, marker=".", ms=4)
        axes.plot(times[-1:], values[-1:], marker="o", color=colour, label=variant.name)
        _mark_points(axes, variant, times, values, rounds, labelled=True)
    _target_line(axes, results, horizontal=True)
    axes.set_xlabel("simulated wall-clock seconds, cumulative")
    axes.set_ylabel(_label(metric))
    _legend(axes)
    return figure


def _clients(results: Results) -> Any:
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
    _legend(axes)
    return figure


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


def _cumulative(
    variant: VariantHistory, cost: str, metric: str
) -> tuple[list[float], list[float], list[float]]:
    """(cost so far, metric after the round, the round) for every round with both."""
    total = 0.0
    costs, values, rounds = [], [], []
    for row in variant.rows:
        total += row.get(cost) or 0.0
        value = row.get(metric)
        if (row.get("round") or 0) >= 1 and value is not None and row.get(cost) is not None:
            costs.append(total)
            values.append(value)
            rounds.append(row.get("round") or 0.0)
    return costs, values, rounds


def _mark_points(
    axes: Any,
    variant: VariantHistory,
    xs: Sequence[float],
    ys: Sequence[float],
    rounds: Sequence[float] | None = None,
    labelled: bool = False,
) -> None:
    """Red crosses on the points of rounds with a failed region, orange rings on long ones
    (`labelled`: in the legend, for plots whose x axis is not the round)."""
    numbers = list(xs if rounds is None else rounds)
    for kind, label, style in (
        ("failed", FAILED_LABEL, {"marker": "X", "s": 70, "color": FAILED_COLOUR, "zorder": 5}),
        (
            "long",
            LONG_LABEL,
            {"marker": "o", "s": 110, "facecolors": "none", "edgecolors": LONG_COLOUR, "zorder": 6},
        ),
    ):
        marked = variant.problem_rounds(kind)
        points = [(x, y) for x, y, n in zip(xs, ys, numbers, strict=True) if int(n) in marked]
        if not points:
            continue
        px, py = zip(*points, strict=True)
        known = axes.get_legend_handles_labels()[1]
        shown = label if labelled and label not in known else None
        axes.scatter(px, py, linewidths=1.5, label=shown, **style)


def _mark_rounds(axes: Any, results: Results) -> None:
    """A red band over every round with a failed region and an orange strip along the top
    over every long round, each in the legend once, so that a failure shows even where the
    round has no metric."""
    for kind, colour, label, bottom, alpha in (
        ("failed", FAILED_COLOUR, FAILED_LABEL, 0.0, 0.18),
        ("long", LONG_COLOUR, LONG_LABEL, 0.93, 0.7),
    ):
        rounds = sorted(set().union(*(v.problem_rounds(kind) for v in results.variants)))
        for position, number in enumerate(rounds):
            axes.axvspan(
                number - 0.4,
                number + 0.4,
                ymin=bottom,
                color=colour,
                alpha=alpha,
                linewidth=0,
                label=label if position == 0 else None,
            )


def _round_ticks(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _plain_ticks(axis: Any) -> None:
    """Log-scale ticks as plain numbers (2, 10, 100), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


def _count_ticks(axis: Any, log: bool) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if not log:
        axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))


def _bytes_ticks(axis: Any) -> None:
    """Byte counts as kB / MB / GB (powers of 1000, as the tables write them)."""
    from matplotlib.ticker import FuncFormatter

    from fogfl.views import human_bytes

    axis.set_major_formatter(FuncFormatter(lambda value, _: human_bytes(value)))
    axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


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


def _legend(axes: Any) -> None:
    """A legend of every labelled line, band and marker on `axes` (none when nothing is)."""
    handles, _ = axes.get_legend_handles_labels()
    entries = len(handles)
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
