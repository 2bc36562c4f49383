"""The results of runs, read back from any output folder, and the figures that sum them up.

A `fogfl sim` folder holds ``history.csv`` (one row per variant and round), ``clients.csv``
and ``summary.json``; a `fogfl up` run directory holds ``metrics.csv`` (one row per round),
``config.yaml`` and ``summary.json``. Both read into the same `Results`, so `fogfl report`
draws and tabulates either the same way.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fogfl.errors import FogflError
from fogfl.run_dir import COLUMNS, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_metrics

HISTORY_FILE = "history.csv"
CLIENTS_FILE = "clients.csv"
# sim_seconds: the round's simulated wall-clock time over the clients' links (fogfl.sim.clock).
HISTORY_COLUMNS = ("variant", *COLUMNS, "client_updates", "update_drift", "sim_seconds")
CLIENT_COLUMNS = ("variant", "client", "region", "scenario", "train_examples", "test_examples")
# Per-client metrics: clients.csv has `<name>_central` and `<name>_federated` for each.
CLIENT_METRICS = {"eval_loss": "loss", "eval_mae": "mae", "eval_rmse": "rmse"}
CLIENT_METRICS_CLASSIFICATION = {"eval_loss": "loss", "eval_accuracy": "accuracy"}
METRIC_LABELS = {
    "eval_loss": "loss",
    "eval_mae": "MAE",
    "eval_rmse": "RMSE",
    "eval_accuracy": "accuracy",
}

Row = dict[str, float | None]
# A round of a `fogfl up` run is long when it took this many times the run's median and at
# least LONG_ROUND_EXCESS_S more, or this share of the server's round timeout.
LONG_ROUND_FACTOR = 3.0
LONG_ROUND_EXCESS_S = 5.0
NEAR_TIMEOUT_SHARE = 0.8


def higher_is_better(metric: str) -> bool:
    return "accuracy" in metric


@dataclass
class VariantHistory:
    """One run's rounds: round 0 is the untrained model; eval_* describe the model after the
    round; traffic and client updates are the round's own."""

    name: str
    rows: list[Row]

    problems: list[RoundProblem] = field(default_factory=list)

    def values(self, column: str) -> list[float | None]:
        return [row.get(column) for row in self.rows]

    def problem_rounds(self, kind: str) -> set[int]:
        return {p.round for p in self.problems if p.kind == kind}


@dataclass(frozen=True)
class RoundProblem:
    """Something a reader of the results must not miss: a round in which regions failed
    (`failed`) or one that took far longer than the others (`long`)."""

    round: int
    kind: Literal["failed", "long"]
    what: str

    def __str__(self) -> str:
        return f"round {self.round}: {self.what}"


@dataclass
class TargetReached:
    """What it took to reach the target: up to and including `round`."""

    round: int
    client_updates: int
    bytes_edge: int
    bytes_cloud: int
    sim_seconds: float | None = None


@dataclass
class VariantSummary:
    name: str
    rounds: int
    final: dict[str, float]
    client_updates: int
    bytes_edge: int
    bytes_cloud: int
    reached: TargetReached | None = None
    sim_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "final": self.final,
            "client_updates": self.client_updates,
            "bytes_edge": self.bytes_edge,
            "bytes_cloud": self.bytes_cloud,
            "sim_seconds": self.sim_seconds,
            "reached_target": None if self.reached is None else vars(self.reached),
        }


@dataclass
class Results:
    """Everything `fogfl report` needs from an output folder."""

    directory: Path
    kind: Literal["sim", "up"]
    title: str
    metric: str
    target: float | None
    baseline: str
    variants: list[VariantHistory]
    baselines: dict[str, str] = field(default_factory=dict)
    clients: list[dict[str, str]] = field(default_factory=list)
    centralized: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    round_timeout_s: float | None = None

    @property
    def problems(self) -> list[str]:
        """Every failure and marked round, in words, variant by variant."""
        found = list(self.failures)
        for variant in self.variants:
            where = f"{variant.name}: " if len(self.variants) > 1 else ""
            found += [f"{where}{problem}" for problem in variant.problems]
        return found


def round_problems(
    rows: Sequence[Row], round_timeout_s: float | None = None, timed: bool = True
) -> list[RoundProblem]:
    """The rounds with failed regions and, when `timed` (the durations are a network's,
    not a simulation's compute), the rounds far longer than the run's median or near the
    server's round timeout."""
    problems = []
    durations = [
        seconds
        for row in rows
        if (row.get("round") or 0) >= 1 and (seconds := row.get("round_seconds")) is not None
    ]
    median = statistics.median(durations) if durations else None
    for row in rows:
        number = int(row.get("round") or 0)
        if number < 1:
            continue
        failed = int(row.get("failed_regions") or 0)
        if failed:
            answered = int(row.get("regions") or 0)
            what = f"{failed} of {failed + answered} regions failed"
            problems.append(RoundProblem(number, "failed", what))
        seconds = row.get("round_seconds")
        if not timed or seconds is None or median is None:
            continue
        if round_timeout_s is not None and seconds >= NEAR_TIMEOUT_SHARE * round_timeout_s:
            problems.append(
                RoundProblem(
                    number, "long", f"took {seconds:.0f} s of the {round_timeout_s:g} s timeout"
                )
            )
        elif seconds >= LONG_ROUND_FACTOR * median and seconds - median >= LONG_ROUND_EXCESS_S:
            what = f"took {seconds:.0f} s, the median round {median:.1f} s"
            problems.append(RoundProblem(number, "long", what))
    return problems


def summarize(history: VariantHistory, target: float | None, metric: str) -> VariantSummary:
    """Totals of a run, its final metrics, and when (if ever) it reached `target`."""
    fitted = [row for row in history.rows if (row.get("round") or 0) >= 1]
    last = history.rows[-1] if history.rows else {}
    final = {
        name: float(value)
        for name, value in last.items()
        if name.startswith("eval_") and value is not None
    }
    summary = VariantSummary(
        name=history.name,
        rounds=len(fitted),
        final=final,
        client_updates=int(sum(row.get("client_updates") or 0 for row in fitted)),
        bytes_edge=int(sum(row.get("bytes_edge") or 0 for row in fitted)),
        bytes_cloud=int(sum(row.get("bytes_cloud") or 0 for row in fitted)),
        sim_seconds=_total(row.get("sim_seconds") for row in fitted),
    )
    if target is None:
        return summary
    updates = edge = cloud = 0
    timed: list[float | None] = []
    for row in history.rows:
        updates += int(row.get("client_updates") or 0)
        edge += int(row.get("bytes_edge") or 0)
        cloud += int(row.get("bytes_cloud") or 0)
        if (row.get("round") or 0) >= 1:
            timed.append(row.get("sim_seconds"))
        value = row.get(metric)
        if value is not None and _meets(value, target, metric):
            summary.reached = TargetReached(
                int(row.get("round") or 0), updates, edge, cloud, _total(timed)
            )
            break
    return summary


def savings(summary: VariantSummary, baseline: VariantSummary) -> dict[str, float | None]:
    """Fractions saved against the baseline (0.4 = 40 % less): over the whole run, and up to
    the target where both reached it."""
    found: dict[str, float | None] = {
        "client_updates": _saved(summary.client_updates, baseline.client_updates),
        "bytes_edge": _saved(summary.bytes_edge, baseline.bytes_edge),
        "bytes_cloud": _saved(summary.bytes_cloud, baseline.bytes_cloud),
    }
    mine, theirs = summary.reached, baseline.reached
    for name in ("client_updates", "bytes_edge", "bytes_cloud"):
        found[f"{name}_to_target"] = (
            _saved(getattr(mine, name), getattr(theirs, name)) if mine and theirs else None
        )
    return found


def read_results(directory: Path) -> Results:
    """The results in a `fogfl sim` output folder or a `fogfl up` run directory."""
    if (directory / HISTORY_FILE).exists():
        return _read_simulation(directory)
    if (directory / METRICS_FILE).exists():
        return _read_run(directory)
    raise FogflError(
        f"{directory} holds neither {HISTORY_FILE} (from `fogfl sim`) nor {METRICS_FILE} "
        "(from `fogfl up`); give the output folder of one of them"
    )


def default_metric(columns: Iterable[str], problem: str | None = None) -> str:
    """The metric to report: accuracy for classification, MAE for regression."""
    present = set(columns)
    if problem == "classification" or "eval_accuracy" in present:
        return "eval_accuracy"
    if problem == "regression":
        return "eval_mae"
    for name in ("eval_mae", "eval_rmse", "eval_loss"):
        if name in present:
            return name
    return "eval_loss"


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buffer.getvalue().encode()


def _read_simulation(directory: Path) -> Results:
    rows = read_metrics(directory / HISTORY_FILE)
    order: list[str] = []
    by_variant: dict[str, list[Row]] = {}
    for row in rows:
        name = row.get("variant", "")
        if name not in by_variant:
            order.append(name)
        by_variant.setdefault(name, []).append(parse_row(row))
    summary = _read_json(directory / SUMMARY_FILE)
    variants = [
        VariantHistory(name, by_variant[name], round_problems(by_variant[name], timed=False))
        for name in order
    ]
    metric = str(summary.get("metric") or default_metric(_filled(rows)))
    centralized = {
        str(v["name"]): dict(v["centralized"])
        for v in summary.get("variants", [])
        if isinstance(v, dict) and v.get("centralized")
    }
    return Results(
        directory=directory,
        kind="sim",
        title=str(summary.get("experiment") or directory.name),
        metric=metric,
        target=summary.get("target"),
        baseline=str(summary.get("baseline") or ""),
        variants=variants,
        baselines={
            str(v["name"]): str(v["baseline_variant"])
            for v in summary.get("variants", [])
            if isinstance(v, dict) and v.get("baseline_variant")
        },
        clients=read_metrics(directory / CLIENTS_FILE),
        centralized=centralized,
    )


def _read_run(directory: Path) -> Results:
    rows = read_metrics(directory / METRICS_FILE)
    summary = _read_json(directory / SUMMARY_FILE)
    config = _read_yaml(directory / CONFIG_FILE)
    federation = config.get("federation") if isinstance(config.get("federation"), dict) else {}
    edge_rounds = int((federation or {}).get("edge_rounds") or 1)
    parsed = []
    for row in rows:
        values = parse_row(row)
        clients = values.get("clients")
        values["client_updates"] = None if clients is None else clients * edge_rounds
        parsed.append(values)
    name = str(summary.get("run_id") or directory.name)
    server = config.get("server") if isinstance(config.get("server"), dict) else {}
    timeout = (server or {}).get("round_timeout_s")
    round_timeout = float(timeout) if isinstance(timeout, int | float) else None
    problems = round_problems(parsed, round_timeout)
    return Results(
        directory=directory,
        kind="up",
        title=f"run {name}",
        metric=default_metric(_filled(rows)),
        target=None,
        baseline="",
        variants=[VariantHistory(name, parsed, problems)],
        failures=_run_failures(summary),
        round_timeout_s=round_timeout,
    )


def _run_failures(summary: Mapping[str, Any]) -> list[str]:
    """What summary.json says went wrong: the server's failure, the rounds short of
    min_regions, and a run that stopped before its last round."""
    found = []
    failure = summary.get("failure")
    if failure:
        found.append(f"the server stopped: {failure}")
    # The server writes each as "round 3: 1 of 2 regions", 2 being min_regions.
    found += [
        f"{entry}, fewer than min_regions" for entry in summary.get("short_rounds") or [] if entry
    ]
    rounds, completed = summary.get("rounds"), summary.get("completed_rounds")
    if isinstance(rounds, int) and isinstance(completed, int) and completed < rounds:
        found.append(f"completed {completed} of {rounds} rounds")
    return found


def _total(values: Iterable[float | None]) -> float | None:
    """The sum (0 of none), None when any value is missing (a run without a simulated
    clock)."""
    listed = list(values)
    if any(value is None for value in listed):
        return None
    return float(sum(value for value in listed if value is not None))


# Metrics are float32 means (a client's 90 of 100 is 0.899999976), and history.csv keeps
# 8 significant digits ("0.9"): a value within float32's rounding of the target meets it,
# so a run reaches its target in the same round in summary.json and in a report read back.
TARGET_RTOL = 1e-6


def _meets(value: float, target: float, metric: str) -> bool:
    slack = TARGET_RTOL * max(1.0, abs(target))
    return value >= target - slack if higher_is_better(metric) else value <= target + slack


def _saved(value: float, baseline: float) -> float | None:
    return None if not baseline else 1.0 - value / baseline


def parse_row(row: Mapping[str, Any]) -> Row:
    """A history or metrics row as numbers; empty and non-numeric cells become None."""
    parsed: Row = {}
    for key, cell in row.items():
        if key == "variant":
            continue
        try:
            value = float(cell)
        except (TypeError, ValueError):
            parsed[key] = None
            continue
        parsed[key] = value if math.isfinite(value) else None
    return parsed


def _filled(rows: Sequence[Mapping[str, str]]) -> list[str]:
    return [key for key in (rows[0] if rows else {}) if any(row.get(key) for row in rows)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.8g}"
    return str(value)
