"""One PNG per experiment, drawn from the same rows that go into its CSV.

matplotlib is imported inside the functions (it is slow to import) and used through
`Figure` objects, never pyplot, so no global figure state is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fogfl.dissemination.experiments import ExperimentResult, Row, StudyParams

COLOURS = {
    "mqtt": "#1f77b4",
    "mqtt-flat": "#1f77b4",
    "mqtt-fog": "#9467bd",
    "coap": "#ff7f0e",
    "coap-observe": "#d62728",
    "gossip": "#2ca02c",
}
MARKERS = {"mqtt": "o", "coap": "s", "coap-observe": "^", "gossip": "D"}
LINES = {"coap-observe": "--"}
LABELS = {
    "mqtt": "MQTT (one broker)",
    "mqtt-flat": "MQTT, one cloud broker",
    "mqtt-fog": "MQTT, fog brokers bridged to cloud",
    "coap": "CoAP request/response",
    "coap-observe": "CoAP Observe",
    "gossip": "push gossip",
}
DPI = 130


def plot(result: ExperimentResult, params: StudyParams, path: Path) -> None:
    """Draw `result` into the PNG at `path`."""
    PLOTTERS[result.name](result, params, path)


def _figure(columns: int, title: str, width: float = 5.2, height: float = 4.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height), layout="constrained")
    axes = figure.subplots(1, columns, squeeze=False)[0]
    figure.suptitle(title, fontsize=13)
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    return figure, axes


def _plain_log_ticks(axis: Any, minor: bool = False) -> None:
    """A log axis labelled 1, 2, 4, 60 rather than 2⁰, 2¹, 6×10¹ (`minor`: label the
    ticks between powers of ten too, for an axis that spans about one decade)."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:,.0f}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain if minor else FuncFormatter(lambda value, _: ""))


def _byte_ticks(axis: Any) -> None:
    """Byte counts as B / kB / MB (powers of 1000)."""
    from matplotlib.ticker import FuncFormatter

    from fogfl.views import human_bytes

    axis.set_major_formatter(FuncFormatter(lambda value, _: human_bytes(value)))
    axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


def _column(rows: Sequence[Row], key: str) -> np.ndarray:
    return np.asarray([float(row[key]) for row in rows])


def _by(rows: Sequence[Row], key: str, value: object) -> list[Row]:
    return [row for row in rows if row[key] == value]


def plot_load(result: ExperimentResult, params: StudyParams, path: Path) -> None:
    figure, (messages, volume, redundancy) = _figure(3, "Cost of one event reaching N nodes")
    for protocol in ("mqtt", "coap", "coap-observe", "gossip"):
        rows = _by(result.rows, "protocol", protocol)
        nodes = _column(rows, "nodes")
        style = {
            "color": COLOURS[protocol],
            "label": LABELS[protocol],
            "marker": MARKERS[protocol],
            "ms": 4,
            "linestyle": LINES.get(protocol, "-"),
        }
        messages.plot(nodes, _column(rows, "messages"), **style)
        if protocol == "gossip":
            messages.fill_between(
                nodes,
                _column(rows, "messages_p10"),
                _column(rows, "messages_p90"),
                color=COLOURS[protocol],
                alpha=0.2,
                label="gossip p10–p90",
            )
        volume.plot(nodes, _column(rows, "bytes"), **style)
        redundancy.plot(nodes, _column(rows, "redundancy"), **style)
    messages.set(xscale="log", yscale="log", xlabel="nodes N", ylabel="messages per event")
    volume.set(xscale="log", yscale="log", xlabel="nodes N", ylabel="bytes per event")
    redundancy.set(
        xscale="log", xlabel="nodes N", ylabel="update copies per node reached", ylim=(0, None)
    )
    for ax in (messages, volume, redundancy):
        _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(messages.yaxis)
    _byte_ticks(volume.yaxis)
    volume.legend(fontsize=8)
    redundancy.legend(fontsize=8)
    messages.legend(fontsize=8, title="MQTT ≈ CoAP Observe (N vs N−1)", title_fontsize=8)
    figure.savefig(path, dpi=DPI)


def plot_failure(result: ExperimentResult, params: StudyParams, path: Path) -> None:
    broker = (
        "fails like a node"
        if params.broker_failure is None
        else f"fails with p={params.broker_failure:g}"
    )
    figure, (ax,) = _figure(
        1,
        f"Coverage under failures (N={params.nodes}, {params.trials} trials per rate, links "
        f"fail with p={params.link_failure:g}, broker {broker})",
        width=8.5,
        height=5.0,
    )
    draw_failure(ax, result, params.seed)
    figure.savefig(path, dpi=DPI)


def draw_failure(ax: Any, result: ExperimentResult, seed: int = 0) -> None:
    """Every trial's coverage as a dot, per failure rate and protocol, with the median and
    the mean marked: MQTT's coverage is all or nothing (the broker is up or it is not), so
    its mean lies where no trial is."""
    per_trial = result.summary.get("coverage_per_trial", {})
    rates = [float(row["failure_rate"]) for row in result.rows]
    protocols = ("mqtt", "coap", "gossip")
    width = 0.8 / len(protocols)
    jitter = np.random.default_rng(seed)
    for offset, protocol in enumerate(protocols):
        colour = COLOURS[protocol]
        for index, rate in enumerate(rates):
            values = np.asarray(per_trial.get(str(rate), {}).get(protocol, []), dtype=float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            centre = index + (offset - (len(protocols) - 1) / 2) * width
            xs = centre + jitter.uniform(-0.35, 0.35, values.size) * width
            first = index == 0
            ax.scatter(
                xs,
                values,
                s=9,
                color=colour,
                alpha=0.35,
                linewidths=0,
                label=f"{LABELS[protocol]}, one trial" if first else None,
                gid=f"trials-{protocol}",
            )
            ax.hlines(
                float(np.median(values)),
                centre - width / 2,
                centre + width / 2,
                color=colour,
                linewidth=2.5,
                label="median" if first and offset == 0 else None,
            )
            ax.scatter(
                [centre],
                [float(np.mean(values))],
                marker="D",
                s=36,
                color="white",
                edgecolors=colour,
                linewidths=1.5,
                zorder=5,
                label="mean" if first and offset == 0 else None,
            )
    ax.set_xticks(range(len(rates)), [f"{rate:g}" for rate in rates])
    ax.set(
        xlabel="share of nodes failed",
        ylabel="coverage (share of alive nodes reached)",
        ylim=(-0.03, 1.05),
    )
    # Below the axes: inside, it would cover the trials near 0 coverage.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=3)


def plot_partition(result: ExperimentResult, params: StudyParams, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    figure, (ax,) = _figure(
        1,
        f"Partition and merge (N={params.nodes}, {params.healing_links} links heal "
        f"after round {params.partition_rounds})",
        width=7.5,
        height=4.8,
    )
    rounds = _column(result.rows, "round")
    for key, label, colour in (
        ("a", "knows update A", "#1f77b4"),
        ("b", "knows update B", "#ff7f0e"),
        ("both", "knows both", "#2ca02c"),
    ):
        ax.plot(
            rounds,
            _column(result.rows, f"{key}_mean"),
            marker="o",
            ms=3,
            color=colour,
            label=f"{label} (mean)",
        )
        ax.fill_between(
            rounds,
            _column(result.rows, f"{key}_p10"),
            _column(result.rows, f"{key}_p90"),
            color=colour,
            alpha=0.15,
        )
    ax.axvline(params.partition_rounds + 0.5, color="grey", linestyle="--", label="partition heals")
    ax.set(xlabel="gossip round", ylabel="share of all nodes", ylim=(0, 1.05))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="center right")
    figure.savefig(path, dpi=DPI)


def plot_balance(result: ExperimentResult, params: StudyParams, path: Path) -> None:
    figure, (lorenz, bars) = _figure(
        2, f"Send load with {params.publishers} publishers (N={params.nodes})"
    )
    first_trial = _by(result.rows, "trial", 0)
    protocols = ("mqtt", "coap", "gossip")
    for protocol in protocols:
        loads = np.sort(
            [float(r[f"{protocol}_sends"]) for r in first_trial if r[f"{protocol}_sends"] != ""]
        )
        share = np.concatenate([[0.0], np.cumsum(loads) / max(loads.sum(), 1.0)])
        population = np.linspace(0.0, 1.0, share.size)
        lorenz.plot(population, share, color=COLOURS[protocol], label=LABELS[protocol])
    lorenz.plot([0, 1], [0, 1], color="grey", linestyle=":", label="equal load")
    lorenz.set(
        xlabel="share of machines, least loaded first",
        ylabel="share of all sends",
        title="Lorenz curve (trial 0)",
    )
    lorenz.legend(fontsize=8)
    means = [result.summary[p]["gini_mean"] for p in protocols]
    # A skewed spread can put the mean outside p10–p90: the bar then has no error on that side.
    low = [
        max(m - result.summary[p]["gini_p10"], 0.0) for m, p in zip(means, protocols, strict=True)
    ]
    high = [
        max(result.summary[p]["gini_p90"] - m, 0.0) for m, p in zip(means, protocols, strict=True)
    ]
    bars.bar(
        [LABELS[p] for p in protocols],
        means,
        yerr=[low, high],
        capsize=6,
        color=[COLOURS[p] for p in protocols],
    )
    for x, value in enumerate(means):
        bars.annotate(
            f"{value:.2f}",
            (x, value),
            ha="center",
            va="bottom",
            xytext=(0, 4),
            textcoords="offset points",
        )
    bars.set(
        ylabel="Gini coefficient of sends (0 = equal)",
        ylim=(0, 1.1),
        title="Gini, mean and p10–p90 over trials",
    )
    bars.tick_params(axis="x", labelsize=8)
    figure.savefig(path, dpi=DPI)


def plot_fog(result: ExperimentResult, params: StudyParams, path: Path) -> None:
    figure, (load, backhaul, coverage) = _figure(
        3, f"Fog hierarchy vs one broker vs gossip (N={params.nodes})"
    )
    for protocol in ("mqtt-flat", "mqtt-fog", "gossip"):
        rows = _by(result.rows, "protocol", protocol)
        brokers = _column(rows, "fog_brokers")
        style = {"color": COLOURS[protocol], "label": LABELS[protocol], "marker": "o", "ms": 3}
        load.plot(brokers, _column(rows, "busiest_sends"), **style)
        # A log axis cannot show 0 (gossip within a single region): leave those points out.
        crossing = _column(rows, "backhaul_bytes")
        backhaul.plot(brokers, np.where(crossing > 0, crossing, np.nan), **style)
        coverage.plot(brokers, _column(rows, "one_broker_failed_mean"), **style)
        coverage.fill_between(
            brokers,
            _column(rows, "one_broker_failed_p10"),
            _column(rows, "one_broker_failed_p90"),
            color=COLOURS[protocol],
            alpha=0.15,
        )
    for ax in (load, backhaul, coverage):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("fog brokers B (each serving N/B nodes)")
        _plain_log_ticks(ax.xaxis)
    load.set(yscale="log", ylabel="sends by the busiest broker or node, per event")
    _plain_log_ticks(load.yaxis, minor=True)
    backhaul.set(yscale="log", ylabel="bytes per event crossing fog ↔ cloud")
    _byte_ticks(backhaul.yaxis)
    coverage.set(ylabel="coverage when one broker fails (mean, p10–p90)", ylim=(0, 1.05))
    for ax in (load, backhaul, coverage):
        ax.legend(fontsize=8)
    figure.savefig(path, dpi=DPI)


def plot_live(result: ExperimentResult, params: StudyParams, path: Path) -> None:
    counted = [row for row in result.rows if row["unit"] == "messages"]
    figure, (ax,) = _figure(
        1,
        f"One event through {result.summary['broker']} (N={result.summary['nodes']})",
        width=7.5,
        height=4.8,
    )
    x = np.arange(len(counted))
    model = [float(row["model"]) for row in counted]
    measured = [float(row["measured"]) if row["measured"] != "" else 0.0 for row in counted]
    ax.bar(x - 0.2, model, width=0.4, label="model", color="#9e9e9e")
    ax.bar(x + 0.2, measured, width=0.4, label="measured", color="#1f77b4")
    for position, predicted, value, row in zip(x, model, measured, counted, strict=True):
        text = "n/a" if row["measured"] == "" else f"{value:,.0f}"
        for offset, label, height in ((-0.2, f"{predicted:,.0f}", predicted), (0.2, text, value)):
            ax.annotate(
                label,
                (position + offset, height),
                ha="center",
                va="bottom",
                xytext=(0, 3),
                textcoords="offset points",
                fontsize=8,
            )
    ax.set_xticks(x, [str(row["quantity"]) for row in counted], fontsize=8, rotation=12)
    ax.set(ylabel="messages per event")
    ax.legend()
    figure.savefig(path, dpi=DPI)


PLOTTERS: dict[str, Callable[[ExperimentResult, StudyParams, Path], None]] = {
    "load": plot_load,
    "failure": plot_failure,
    "partition": plot_partition,
    "balance": plot_balance,
    "fog": plot_fog,
    "live": plot_live,
}
