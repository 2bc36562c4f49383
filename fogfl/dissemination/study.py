"""A run of the study: the chosen experiments, then a CSV and a PNG per experiment and one
summary.json, all in one output folder."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fogfl import __version__
from fogfl.dissemination.experiments import EXPERIMENTS, Advance, ExperimentResult, Row, StudyParams
from fogfl.dissemination.live import LiveOptions, live_steps, run_live
from fogfl.errors import ConfigError
from fogfl.run_dir import SUMMARY_FILE, write_atomic

log = logging.getLogger("fogfl.dissemination")

MODEL_EXPERIMENTS = tuple(EXPERIMENTS)
ALL_EXPERIMENTS = (*MODEL_EXPERIMENTS, "live")

# Called once per experiment with its name and number of steps; returns the step counter.
ProgressFactory = Callable[[str, int], Advance]


@dataclass
class StudyReport:
    out_dir: Path
    results: list[ExperimentResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0

    @property
    def summary_path(self) -> Path:
        return self.out_dir / SUMMARY_FILE


def choose_experiments(names: Sequence[str]) -> list[str]:
    """The experiments to run, in the study's order; the five models when none are named."""
    unknown = sorted(set(names) - set(ALL_EXPERIMENTS))
    if unknown:
        raise ConfigError(
            f"unknown experiment {', '.join(unknown)}; choose from {', '.join(ALL_EXPERIMENTS)}"
        )
    return [name for name in ALL_EXPERIMENTS if name in names] if names else list(MODEL_EXPERIMENTS)


def default_out_dir(root: Path = Path("runs")) -> Path:
    """A new folder under `root`, named after the time."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = root / f"dissemination-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"dissemination-{stamp}-{suffix}"
    return candidate


def run_study(
    names: Sequence[str],
    params: StudyParams,
    out_dir: Path,
    progress: ProgressFactory | None = None,
    live: LiveOptions | None = None,
    plots: bool = True,
) -> StudyReport:
    """Run the named experiments and write their CSVs, PNGs and summary.json to `out_dir`."""
    from fogfl.dissemination.plots import plot

    out_dir.mkdir(parents=True, exist_ok=True)
    report = StudyReport(out_dir)
    started = time.perf_counter()
    for name in names:
        clock = time.perf_counter()
        if name == "live":
            options = live or LiveOptions(nodes=params.nodes, message_bytes=params.message_bytes)
            advance = progress(name, live_steps(options)) if progress else _ignore
            result = run_live(options, advance)
        else:
            experiment = EXPERIMENTS[name]
            advance = progress(name, experiment.steps(params)) if progress else _ignore
            result = experiment.run(params, advance)
        write_atomic(out_dir / f"{name}.csv", _csv(result.rows))
        if plots:
            plot(result, params, out_dir / f"{name}.png")
        report.results.append(result)
        report.seconds[name] = time.perf_counter() - clock
        log.info("%s done in %.2f s", name, report.seconds[name])
    report.total_seconds = time.perf_counter() - started
    summary = {
        "fogfl_version": __version__,
        "created": datetime.now().isoformat(timespec="seconds"),
        "experiments": list(names),
        "params": params.as_dict(),
        "live": _live_settings(live) if "live" in names else None,
        "seconds": {**report.seconds, "total": report.total_seconds},
        "results": {
            result.name: {
                "csv": f"{result.name}.csv",
                "png": f"{result.name}.png" if plots else None,
                "summary": result.summary,
            }
            for result in report.results
        },
    }
    write_atomic(report.summary_path, (json.dumps(_jsonable(summary), indent=2) + "\n").encode())
    return report


def _csv(rows: Sequence[Row]) -> bytes:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
    return buffer.getvalue().encode()


def _cell(value: float | int | str) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    """Plain JSON: NaN becomes null, numpy scalars and tuples become Python ones."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _live_settings(live: LiveOptions | None) -> dict[str, Any] | None:
    if live is None:
        return None
    settings = asdict(live)
    settings.pop("workdir", None)
    return settings


def _ignore(steps: int) -> None:
    pass
