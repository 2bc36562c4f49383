"""Rich renderings for the command line: the per-round table and the monitor's views."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fogfl.roles.monitor import MonitorState, Observation

ROUND_COLUMNS = (
    ("round", "round"),
    ("clients", "clients"),
    ("failed_regions", "failed"),
    ("train_loss", "train loss"),
    ("eval_loss", "eval loss"),
    ("eval_mae", "MAE"),
    ("eval_rmse", "RMSE"),
    ("eval_accuracy", "accuracy"),
    ("bytes_up", "up"),
    ("bytes_down", "down"),
    ("round_seconds", "s"),
)


def progress_bars(label_width: int) -> Progress:
    """Labelled progress bars with counts and elapsed time, for long commands."""
    return Progress(
        TextColumn(f"{{task.description:<{label_width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


def rounds_table(rows: Sequence[dict[str, str]], title: str = "") -> Table:
    """metrics.csv as a table; columns that are empty or zero in every row are left out."""
    shown = [
        (key, label)
        for key, label in ROUND_COLUMNS
        if any(row.get(key) not in (None, "", "0") for row in rows)
    ]
    table = Table(
        title=title or None,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    for _key, label in shown or ROUND_COLUMNS[:1]:
        table.add_column(label, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(key, row.get(key, "")) for key, _ in shown))
    return table


def progress_line(rounds_done: int, rounds: int, elapsed_s: float, width: int = 30) -> Text:
    filled = int(width * rounds_done / max(rounds, 1))
    bar = "█" * filled + "░" * (width - filled)
    return Text(f"rounds {bar} {rounds_done}/{rounds}   {elapsed_s:5.1f} s", style="bold")


def up_view(
    rows: Sequence[dict[str, str]], rounds_done: int, rounds: int, elapsed_s: float
) -> RenderableType:
    return Group(progress_line(rounds_done, rounds, elapsed_s), rounds_table(rows))


def monitor_view(state: MonitorState, recent: Sequence[Observation]) -> RenderableType:
    regions = Table(
        title=f"run {state.run_id or '?'} · round {state.round} · {state.messages} messages"
        f" · {state.undecodable} undecodable · {state.other_runs} of other runs",
        title_justify="left",
    )
    for label in ("region", "round", "updates", "partials", "examples in last partial"):
        regions.add_column(label, justify="right")
    for name, progress in sorted(state.regions.items()):
        regions.add_row(
            name,
            str(progress.round),
            f"{progress.updates}/{'?' if progress.expected is None else progress.expected}",
            str(progress.partials),
            str(progress.last_partial_examples),
        )
    messages = Table(title="latest messages", title_justify="left")
    for label in ("time", "topic", "kind", "round", "sender", "region", "bytes", "num_examples"):
        messages.add_column(label)
    for seen in recent:
        messages.add_row(
            time.strftime("%H:%M:%S", time.localtime(seen.time)),
            seen.topic,
            Text(f"undecodable: {seen.error}", style="red")
            if seen.error
            else seen.kind + (" (final)" if seen.final else ""),
            "" if seen.round is None else str(seen.round),
            seen.sender,
            seen.region,
            f"{seen.bytes:,}",
            "" if seen.num_examples is None else str(seen.num_examples),
        )
    if not state.clients:
        return Group(regions, messages)
    clients = Table(title="clients", title_justify="left")
    for label in (
        "client",
        "region",
        "round",
        "codec",
        "upload s",
        "predicted s",
        "download s",
        "link",
        "uplink",
    ):
        clients.add_column(label, justify="right")
    for name, link in sorted(state.clients.items()):
        clients.add_row(
            name,
            link.region,
            str(link.round),
            link.codec,
            _seconds(link.upload_seconds),
            _seconds(link.predicted_upload_seconds),
            _seconds(link.download_seconds),
            link.state,
            "" if link.rate_mbit is None else f"{link.rate_mbit:g} Mbit/s",
        )
    return Group(regions, clients, messages)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _cell(column: str, cell: str) -> str:
    try:
        value = float(cell)
    except ValueError:
        return cell
    if column.startswith("bytes"):
        return human_bytes(value)
    if column == "round_seconds":
        return f"{value:.1f}"
    if value.is_integer():
        return str(int(value))
    return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.2e}"


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" or count >= 100 else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"
