"""`fogfl dissemination`: parse the flags, run the study, show progress and a summary table.

Only typer and the standard library are imported at module level, so that `fogfl --help`
stays fast; numpy, scipy and matplotlib load when the command runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer

if TYPE_CHECKING:
    from fogfl.dissemination.study import StudyReport

Number = TypeVar("Number", int, float)


def dissemination(
    experiments: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(
            help="load, failure, partition, balance, fog, live (default: the five models).",
            show_default=False,
        ),
    ] = None,
    nodes: Annotated[
        int, typer.Option("--nodes", "-n", help="Nodes N (live: publisher + N−1 subscribers).")
    ] = 200,
    trials: Annotated[int, typer.Option(help="Trials per setting.")] = 25,
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives the same numbers.")
    ] = 1234,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Output folder (default: a new folder under runs/).", show_default=False),
    ] = None,
    message_bytes: Annotated[int, typer.Option(help="Size of a message carrying the update.")] = 50,
    request_bytes: Annotated[
        int, typer.Option(help="Size of a CoAP GET (carries no update).")
    ] = 16,
    alpha: Annotated[float, typer.Option(help="Gossip lasts round(α·ln N) rounds.")] = 1.5,
    fanout: Annotated[
        int, typer.Option(help="Neighbours a gossiping node pushes to per round.")
    ] = 3,
    edge_prob: Annotated[
        float, typer.Option(help="Erdős–Rényi edge probability of the gossip graph.")
    ] = 0.05,
    load_nodes: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="N values of the load experiment, comma-separated [default: 10,25,…,10000].",
            show_default=False,
        ),
    ] = None,
    failure_rates: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Node failure rates, comma-separated [default: 0,0.1,…,0.5].", show_default=False
        ),
    ] = None,
    link_failure: Annotated[float, typer.Option(help="Probability that a link is down.")] = 0.1,
    broker_failure: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            help="Probability that the broker is down [default: the node failure rate].",
            show_default=False,
        ),
    ] = None,
    partition_rounds: Annotated[int, typer.Option(help="Rounds the two halves gossip apart.")] = 6,
    merge_rounds: Annotated[int, typer.Option(help="Rounds after the partition heals.")] = 12,
    healing_links: Annotated[int, typer.Option(help="Links that heal the partition.")] = 3,
    publishers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Publishers in the balance experiment [default: 25, at most N].",
            show_default=False,
        ),
    ] = None,
    fog_brokers: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Fog broker counts B, comma-separated [default: 1,2,4,…,64].", show_default=False
        ),
    ] = None,
    mqtt_host: Annotated[str, typer.Option(help="live: host of an existing broker.")] = "127.0.0.1",
    mqtt_port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="live: port of an existing broker (default: start Mosquitto).", show_default=False
        ),
    ] = None,
    live_timeout: Annotated[float, typer.Option(help="live: seconds before giving up.")] = 60.0,
    no_plots: Annotated[
        bool, typer.Option("--no-plots", help="Write CSVs and summary.json only.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
) -> None:
    """How one update reaches N nodes: MQTT vs CoAP vs gossip vs bridged fog brokers."""
    from fogfl.dissemination.experiments import StudyParams
    from fogfl.dissemination.live import LiveOptions
    from fogfl.dissemination.study import choose_experiments, default_out_dir, run_study
    from fogfl.logs import setup_logging

    setup_logging(log_level.upper())
    defaults = StudyParams()
    params = StudyParams(
        nodes=nodes,
        trials=trials,
        seed=seed,
        message_bytes=message_bytes,
        request_bytes=request_bytes,
        alpha=alpha,
        fanout=fanout,
        edge_prob=edge_prob,
        load_nodes=_numbers(load_nodes, int, "--load-nodes") or defaults.load_nodes,
        failure_rates=_numbers(failure_rates, float, "--failure-rates") or defaults.failure_rates,
        link_failure=link_failure,
        broker_failure=broker_failure,
        partition_rounds=partition_rounds,
        merge_rounds=merge_rounds,
        healing_links=healing_links,
        # Defaults that do not fit a small N shrink to fit; values given explicitly are checked.
        publishers=publishers if publishers is not None else min(defaults.publishers, nodes),
        fog_brokers=_numbers(fog_brokers, int, "--fog-brokers")
        or tuple(b for b in defaults.fog_brokers if b <= nodes),
    )
    names = choose_experiments(experiments or [])
    out_dir = out or default_out_dir()
    live = LiveOptions(
        nodes=nodes,
        message_bytes=message_bytes,
        host=mqtt_host,
        port=mqtt_port,
        timeout_s=live_timeout,
        workdir=out_dir / "broker",
    )
    with _progress() as progress:
        report = run_study(names, params, out_dir, progress, live, plots=not no_plots)
    _print_summary(report)


def _numbers(text: str | None, kind: Callable[[str], Number], flag: str) -> tuple[Number, ...]:
    from fogfl.errors import ConfigError

    if not text:
        return ()
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r}: give comma-separated numbers, e.g. 0,0.1,0.2"
        ) from None


@contextmanager
def _progress() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    from fogfl.views import progress_bars

    with progress_bars(10) as progress:

        def start(name: str, steps: int) -> Callable[[int], None]:
            task = progress.add_task(name, total=steps)
            return lambda done: progress.advance(task, done)

        yield start


def _print_summary(report: StudyReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Dissemination study", title_justify="left", show_lines=True)
    table.add_column("experiment", style="bold")
    table.add_column("measure")
    table.add_column("result")
    table.add_column("time", justify="right")
    for result in report.results:
        for index, (measure, value) in enumerate(result.highlights):
            first = index == 0
            table.add_row(
                result.name if first else "",
                measure,
                value,
                f"{report.seconds[result.name]:.2f} s" if first else "",
            )
    console = Console()
    console.print(table)
    console.print(
        f"wrote {len(report.results)} CSV/PNG pairs and {report.summary_path.name} to "
        f"[bold]{report.out_dir}[/] in {report.total_seconds:.1f} s",
        highlight=False,
    )
