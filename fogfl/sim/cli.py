"""`fogfl sim` and `fogfl report`: parse the flags, run or read, show progress and a table.

Only typer and the standard library are imported at module level, so that `fogfl --help`
stays fast; torch, Flower and matplotlib load when a command runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from fogfl.sim.experiment import Experiment
    from fogfl.sim.results import Results, RoundProblem
    from fogfl.sim.runner import Progress


def sim(
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--config",
            "-c",
            help="An experiment file (configs/experiments/*.yaml), or a fogfl configuration "
            "for one plain run [default: one plain run of the configuration defaults].",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Output folder [default: runs/sim-<experiment>-<time>].", show_default=False
        ),
    ] = None,
    task: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Workload for every variant (drops the file's task options).", show_default=False
        ),
    ] = None,
    clients: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Total clients, spread over the regions, in every variant.", show_default=False
        ),
    ] = None,
    regions: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Regions in every variant.", show_default=False),
    ] = None,
    rounds: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Rounds of every variant.", show_default=False),
    ] = None,
    local_epochs: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Local epochs per round in every variant.", show_default=False),
    ] = None,
    seed: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Seed of every variant.", show_default=False),
    ] = None,
    data_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Data folder of the task (task.options.data_dir, e.g. for ecg5000).",
            show_default=False,
        ),
    ] = None,
    set_values: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--set",
            help="KEY=VALUE for every variant, a dotted config key and a YAML value "
            "(--set task.options.duration_s=120). Repeatable.",
            show_default=False,
        ),
    ] = None,
    only: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Run only this variant (repeatable).", show_default=False),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes for the clients (0: all in this process).")
    ] = 2,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write no PNGs.")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
) -> None:
    """Simulate an experiment's variants (each of its parts in turn, each into a folder of
    its own), or one plain run, in one process (the hierarchy without MQTT)."""
    import os

    from fogfl.errors import ConfigError
    from fogfl.logs import setup_logging
    from fogfl.sim.experiment import (
        Reshape,
        configuration_variables,
        is_experiment_file,
        load_experiments,
        missing_agents,
        plain_experiment,
        select,
        select_each,
    )
    from fogfl.sim.runner import default_out_dir

    setup_logging(log_level.upper())
    reshape = Reshape(
        task=task,
        clients=clients,
        regions=regions,
        rounds=rounds,
        local_epochs=local_epochs,
        seed=seed,
        data_dir=data_dir,
        settings=_settings(set_values or []),
    )
    console = _console()
    variables = configuration_variables(os.environ)
    if config is not None and is_experiment_file(config):
        loaded = load_experiments(config, reshape)
        if variables:
            # An experiment is its file and its flags, so that it reruns the same anywhere.
            console.print(
                f"[yellow]fogfl sim: ignoring {', '.join(variables)}[/]: an experiment file "
                "is not changed by FOGFL_* variables; use --set KEY=VALUE",
                highlight=False,
            )
    else:
        loaded = [plain_experiment(config, reshape)]  # the environment applies, as in `fogfl up`
        if variables:
            console.print(
                f"fogfl sim: configuration from the environment: {', '.join(variables)}",
                highlight=False,
            )
    experiments = select_each(loaded, only or [])
    for index, experiment in enumerate(experiments):
        untrained = missing_agents(experiment)
        for name, folder in untrained.items():
            console.print(
                f"[yellow]fogfl sim: leaving out variant {name}[/]: wire.agent {folder} holds "
                f"no trained agent; train one with `fogfl agent train --out {folder}` "
                "(docs/bandwidth.md)",
                highlight=False,
            )
        kept = [v.name for v in experiment.variants if v.name not in untrained]
        if not kept:
            raise ConfigError("no variant is left to run: train the agents above first")
        experiments[index] = select(experiment, kept)
    if len(loaded) == 1:
        out_dirs = [out or default_out_dir(experiments[0].name)]
    else:  # a file of parts: a folder for each
        root = out or default_out_dir(config.stem if config is not None else "sim")
        out_dirs = [root / experiment.name for experiment in experiments]
    for experiment, out_dir in zip(experiments, out_dirs, strict=True):
        _simulate(console, experiment, out_dir, workers, plots=not no_plots)


def _simulate(
    console: Console, experiment: Experiment, out_dir: Path, workers: int, plots: bool
) -> None:
    """Run one experiment into `out_dir`, with a progress bar and its table at the end."""
    import time

    from fogfl.sim.runner import run_experiment

    console.print(
        f"fogfl sim: experiment [bold]{experiment.name}[/], {len(experiment.variants)} "
        f"variant{'' if len(experiment.variants) == 1 else 's'}, {max(workers, 0)} workers, "
        f"outputs in {out_dir}",
        highlight=False,
    )
    started = time.monotonic()
    with _progress(len(experiment.variants)) as progress:
        output = run_experiment(experiment, out_dir, workers, progress, plots=plots)
    console.print(summary_table(output.results))
    _print_problems(console, output.results)
    console.print(
        f"done in {time.monotonic() - started:.1f} s; history.csv, clients.csv, summary.json"
        f"{' and plots' if plots else ''} in [bold]{out_dir}[/]",
        highlight=False,
    )


def report(
    directory: Annotated[
        Path,
        typer.Argument(
            help="A `fogfl sim` output folder or a `fogfl up` run directory.", show_default=False
        ),
    ],
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Where to write the PNGs [default: the folder itself].", show_default=False
        ),
    ] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Only print the table.")] = False,
) -> None:
    """Plot and tabulate the results in an output folder of `fogfl sim` or `fogfl up`."""
    from fogfl.sim.results import read_results

    results = read_results(directory)
    console = _console()
    console.print(summary_table(results))
    _print_problems(console, results)
    if not no_plots:
        from fogfl.sim.plots import render

        written = render(results, out or directory)
        console.print(
            "plots: " + ", ".join(str(p) for p in written),
            highlight=False,
        )


def summary_table(results: Results) -> Table:
    """One row per variant: final metric, totals, the target reached, savings."""
    from rich import box
    from rich.table import Table

    from fogfl.sim.results import METRIC_LABELS, savings, summarize
    from fogfl.views import human_bytes

    metric = results.metric
    label = METRIC_LABELS.get(metric, metric)
    summaries = {v.name: summarize(v, results.target, metric) for v in results.variants}
    index_of = {v.name: i for i, v in enumerate(results.variants)}
    compared = results.baselines
    title = results.title
    if results.target is not None:
        title += f" · target {label} {'≥' if 'accuracy' in metric else '≤'} {results.target:g}"
    if compared:
        title += f" · savings against {results.baseline} (to the target where both reach it)"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ["variant", "rounds", label]
    if results.centralized:
        columns.append(f"central {label}")
    columns += ["client updates", "edge bytes", "cloud bytes"]
    if results.target is not None:
        columns += ["target at", "updates to it", "cloud bytes to it"]
    if compared:
        columns += ["updates saved", "cloud bytes saved"]
    marked = any(v.problems for v in results.variants)
    if marked:
        columns.append("marked rounds")
    for index, name in enumerate(columns):
        if index == 0:
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, justify="right", no_wrap=True)
    for name, summary in summaries.items():
        cells = [name, str(summary.rounds), _number(summary.final.get(metric))]
        if results.centralized:
            cells.append(_number(results.centralized.get(name, {}).get(metric)))
        cells += [
            f"{summary.client_updates:,}",
            human_bytes(summary.bytes_edge),
            human_bytes(summary.bytes_cloud),
        ]
        if results.target is not None:
            reached = summary.reached
            if reached is None:
                cells += ["—", "", ""]
            else:
                cells += [
                    f"round {reached.round}",
                    f"{reached.client_updates:,}",
                    human_bytes(reached.bytes_cloud),
                ]
        baseline = summaries.get(compared.get(name, ""))
        if compared and baseline is None:
            cells += ["", ""]
        elif baseline is not None:
            saved = savings(summary, baseline)
            for cost in ("client_updates", "bytes_cloud"):
                share = saved.get(f"{cost}_to_target")
                if share is None:
                    share = saved.get(cost)
                cells.append("" if share is None else f"{round(share, 2) + 0.0:.0%}")
        if marked:
            cells.append(_marked(results.variants[index_of[name]].problems))
        table.add_row(*cells, style="red" if marked and cells[-1] else None)
    return table


def _marked(problems: list[RoundProblem]) -> str:
    """The rounds with problems, by kind: ``failed regions 3, 4; long 5``."""
    labels = {"failed": "failed regions", "long": "long"}
    parts = []
    for kind, label in labels.items():
        rounds = sorted({p.round for p in problems if p.kind == kind})
        if rounds:
            parts.append(f"{label} {', '.join(map(str, rounds))}")
    return "; ".join(parts)


def _print_problems(console: Console, results: Results) -> None:
    """Every failure in words, below the table, so that no failed region goes unseen."""
    problems = results.problems
    if not problems:
        return
    console.print(f"[bold red]{len(problems)} problems:[/]", highlight=False)
    for problem in problems:
        console.print(f"  [red]✗[/] {problem}", highlight=False)


def _console() -> Console:
    from rich.console import Console

    console = Console()
    # Piped into a file or a log, a table keeps its rows on one line each.
    return console if console.is_terminal else Console(width=200)


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.2e}"


def _settings(pairs: list[str]) -> dict[str, Any]:
    import yaml

    from fogfl.errors import ConfigError

    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: write KEY=VALUE, e.g. training.learning_rate=1e-3")
        try:
            found[key.strip()] = yaml.safe_load(text) if text else text
        except yaml.YAMLError:
            found[key.strip()] = text
    return found


@contextmanager
def _progress(variants: int) -> Iterator[Progress]:
    from fogfl.views import progress_bars

    with progress_bars(28) as bars:
        overall = bars.add_task("variants", total=variants)
        rounds = bars.add_task("rounds", total=1)

        class Bars:
            started = False

            def variant(self, name: str, total: int) -> None:
                if self.started:
                    bars.advance(overall)
                self.started = True
                bars.reset(rounds, total=total, description=name[:28])

            def round(self, server_round: int) -> None:
                bars.update(rounds, completed=server_round)

        yield Bars()
        bars.update(overall, completed=variants)
