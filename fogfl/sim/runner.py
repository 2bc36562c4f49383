"""An experiment end to end: every variant simulated, the centralized baseline beside it, and
the output folder.

```
OUT/
  history.csv       one row per variant and round (metrics.csv's columns, client updates)
  clients.csv       per variant and client: scenario, central and federated test metrics
  summary.json      per variant: final metrics, totals, the target reached, savings
  *.png             metric per round, central vs federated per client, communication,
                    rounds (earlier runs' PNGs are removed first)
  experiment.yaml   the experiment file as given
  variants/NAME/    each variant as a run directory (config.yaml, metrics.csv, final model)
```
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from fogfl import __version__
from fogfl.aggregation import mean_metrics
from fogfl.config import dump_config
from fogfl.run_dir import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    write_atomic,
    write_metrics,
)
from fogfl.sim.centralized import centralized_baseline
from fogfl.sim.experiment import Experiment, Variant, baselines, describe_baseline
from fogfl.sim.hierarchy import ClientOutcome, SimulatedRun, simulate
from fogfl.sim.results import (
    CLIENT_COLUMNS,
    CLIENT_METRICS,
    CLIENT_METRICS_CLASSIFICATION,
    CLIENTS_FILE,
    HISTORY_COLUMNS,
    HISTORY_FILE,
    Results,
    VariantHistory,
    VariantSummary,
    csv_text,
    default_metric,
    higher_is_better,
    parse_row,
    read_results,
    savings,
    summarize,
)
from fogfl.sim.workers import ClientPool, TaskKey, task_of

log = logging.getLogger("fogfl.sim")
EXPERIMENT_FILE = "experiment.yaml"
VARIANTS_DIR = "variants"


class Progress(Protocol):
    """Told when a variant starts and after each of its rounds."""

    def variant(self, name: str, rounds: int) -> None: ...

    def round(self, server_round: int) -> None: ...


class _Silent:
    def variant(self, name: str, rounds: int) -> None:
        pass

    def round(self, server_round: int) -> None:
        pass


@dataclass
class ExperimentOutput:
    out_dir: Path
    results: Results
    summary: dict[str, Any]
    runs: dict[str, SimulatedRun]
    seconds: float


def run_experiment(
    experiment: Experiment,
    out_dir: Path,
    workers: int = 2,
    progress: Progress | None = None,
    plots: bool = True,
) -> ExperimentOutput:
    """Simulate every variant of `experiment` and write the output folder `out_dir`."""
    from fogfl.sim.plots import remove_plots, render

    started = time.monotonic()
    progress = progress or _Silent()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(
        out_dir / EXPERIMENT_FILE, yaml.safe_dump(experiment.source, sort_keys=False).encode()
    )
    metric = _metric(experiment)
    if metric != (experiment.metric or metric):
        experiment = replace(experiment, target=None)
    history: list[dict[str, Any]] = []
    client_rows: list[dict[str, Any]] = []
    runs: dict[str, SimulatedRun] = {}
    central: dict[str, dict[str, dict[str, float]]] = {}
    baselines: dict[str, dict[str, dict[str, float]]] = {}
    with ClientPool(workers) as pool:
        for variant in experiment.variants:
            config = variant.config
            progress.variant(variant.name, config.federation.rounds)
            log.info("variant %s: %d rounds", variant.name, config.federation.rounds)
            run = simulate(
                config,
                pool,
                on_round=progress.round,
                evaluate_all=experiment.evaluation == "all",
            )
            runs[variant.name] = run
            if experiment.centralized is not None:
                clients = [c for ids in config.federation.client_ids().values() for c in ids]
                cache_key = json.dumps(
                    [vars(TaskKey.of(config)), clients, experiment.centralized.model_dump()]
                )
                if cache_key not in baselines:
                    baselines[cache_key] = centralized_baseline(
                        config, experiment.centralized, clients
                    )
                central[variant.name] = baselines[cache_key]
            _write_variant(out_dir / VARIANTS_DIR / variant.name, run)
            history.extend(_history_rows(variant.name, run))
            client_rows.extend(_client_rows(variant.name, run, central.get(variant.name)))
            write_atomic(out_dir / HISTORY_FILE, csv_text(HISTORY_COLUMNS, history))
            write_atomic(
                out_dir / CLIENTS_FILE, csv_text(_client_columns(client_rows), client_rows)
            )
    summary = _summary(experiment, metric, runs, central, workers, time.monotonic() - started)
    write_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2).encode())
    results = read_results(out_dir)
    if plots:
        render(results, out_dir)
    else:
        remove_plots(out_dir)  # an earlier run's plots would pass for this one's
    return ExperimentOutput(out_dir, results, summary, runs, time.monotonic() - started)


def default_out_dir(name: str, root: Path = Path("runs")) -> Path:
    """A new folder under `root`, named after the experiment and the time."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = root / f"sim-{name}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"sim-{name}-{stamp}-{suffix}"
    return candidate


def _metric(experiment: Experiment) -> str:
    """The experiment's metric, or the task's usual one when the task does not report it
    (a classification experiment run with ``--task qoe``)."""
    problem = task_of(TaskKey.of(experiment.variants[0].config)).problem
    usual = default_metric([], problem)
    wanted = experiment.metric
    if wanted is None or wanted == "eval_loss":
        return wanted or usual
    if (wanted == "eval_accuracy") != (problem == "classification"):
        log.warning("a %s task has no %s; reporting %s, no target", problem, wanted, usual)
        return usual
    return wanted


def _write_variant(directory: Path, run: SimulatedRun) -> None:
    """The variant as a run directory, like `fogfl up` writes one."""
    resolved = run.config.model_copy(deep=True)
    resolved.federation.run_id = run.run_id
    write_atomic(directory / CONFIG_FILE, dump_config(resolved).encode())
    write_metrics(directory / METRICS_FILE, run.records)
    write_atomic(directory / MODEL_FILE, run.final_model)
    summary = {
        "run_id": run.run_id,
        "task": run.config.task.name,
        "rounds": run.config.federation.rounds,
        "regions": run.config.federation.regions,
        "simulated": True,
        "final": {k: v for k, v in vars(run.records[-1]).items() if v is not None},
    }
    write_atomic(directory / SUMMARY_FILE, json.dumps(summary, indent=2).encode())


def _history_rows(name: str, run: SimulatedRun) -> list[dict[str, Any]]:
    rows = []
    for record in run.records:
        row: dict[str, Any] = {"variant": name, **vars(record)}
        if record.round >= 1:
            row["client_updates"] = run.client_updates[record.round - 1]
            row["update_drift"] = run.update_drift[record.round - 1]
            row["sim_seconds"] = run.sim_seconds[record.round - 1]
        rows.append(row)
    return rows


def _client_rows(
    name: str, run: SimulatedRun, central: Mapping[str, Mapping[str, float]] | None
) -> list[dict[str, Any]]:
    rows = []
    for client in run.clients:
        row: dict[str, Any] = {
            "variant": name,
            "client": client.client_id,
            "region": client.region,
            "scenario": client.description,
            "train_examples": client.num_train,
            "test_examples": client.num_test,
        }
        for metric, label in _client_metrics(client).items():
            row[f"{label}_federated"] = _with_rmse(client.metrics).get(metric)
            if central is not None and client.client_id in central:
                row[f"{label}_central"] = _with_rmse(central[client.client_id]).get(metric)
        rows.append(row)
    return rows


def _client_metrics(client: ClientOutcome) -> dict[str, str]:
    return CLIENT_METRICS_CLASSIFICATION if "eval_accuracy" in client.metrics else CLIENT_METRICS


def _client_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(CLIENT_COLUMNS)
    for label in ("loss", "mae", "rmse", "accuracy"):
        for side in ("central", "federated"):
            name = f"{label}_{side}"
            if any(name in row for row in rows):
                columns.append(name)
    return columns


def _with_rmse(metrics: Mapping[str, float]) -> dict[str, float]:
    found = dict(metrics)
    if "eval_mse" in found:
        found["eval_rmse"] = math.sqrt(found["eval_mse"])
    return found


def _summary(
    experiment: Experiment,
    metric: str,
    runs: Mapping[str, SimulatedRun],
    central: Mapping[str, Mapping[str, Mapping[str, float]]],
    workers: int,
    seconds: float,
) -> dict[str, Any]:
    summaries: dict[str, VariantSummary] = {
        name: summarize(
            VariantHistory(name, [parse_row(row) for row in _history_rows(name, run)]),
            experiment.target,
            metric,
        )
        for name, run in runs.items()
    }
    compared = baselines(experiment)
    variants = []
    for variant in experiment.variants:
        if variant.name not in runs:
            continue
        summary = summaries[variant.name]
        entry: dict[str, Any] = {
            "name": variant.name,
            "description": variant.description,
            "settings": _settings(variant),
            **summary.as_dict(),
            "centralized": _central_summary(central.get(variant.name)),
            "seconds": round(runs[variant.name].seconds, 3),
        }
        baseline = compared.get(variant.name)
        if baseline is not None and baseline in summaries:
            entry["baseline_variant"] = baseline
            entry["saved_vs_baseline"] = savings(summary, summaries[baseline])
        variants.append(entry)
    return {
        "experiment": experiment.name,
        "description": experiment.description,
        "metric": metric,
        "higher_is_better": higher_is_better(metric),
        "target": experiment.target,
        "baseline": describe_baseline(experiment.baseline),
        "evaluation": experiment.evaluation,
        "centralized": experiment.centralized.model_dump() if experiment.centralized else None,
        "workers": workers,
        "seconds": round(seconds, 3),
        "fogfl": __version__,
        "variants": variants,
    }


def _settings(variant: Variant) -> dict[str, Any]:
    config = variant.config
    federation = config.federation
    clients = sum(len(ids) for ids in federation.client_ids().values())
    return {
        "task": config.task.name,
        "clients": clients,
        "regions": len(federation.regions),
        "rounds": federation.rounds,
        "local_epochs": config.training.local_epochs,
        "learning_rate": config.training.learning_rate,
        "batch_size": config.training.batch_size,
        "proximal_mu": config.training.proximal_mu,
        "strategy": config.server.strategy,
        "fog_aggregation": config.fog.aggregation,
        "participation": federation.participation.model_dump(),
        "weighting": federation.weighting,
        "edge_rounds": federation.edge_rounds,
        "seed": federation.seed,
    }


def _central_summary(per_client: Mapping[str, Mapping[str, float]] | None) -> dict[str, float]:
    if not per_client:
        return {}
    pooled = mean_metrics([(0, dict(m)) for m in per_client.values()])
    return {
        k: v for k, v in _with_rmse(pooled).items() if k.startswith("eval_") and k != "eval_mse"
    }
