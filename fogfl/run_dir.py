"""The layout of a run directory, shared by the server that writes it and the launcher and
reports that read it."""

from __future__ import annotations

import csv
import io
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

METRICS_FILE = "metrics.csv"
MODEL_FILE = "global_model.safetensors"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
LOG_DIR = "logs"


def new_run_id() -> str:
    """A run id that sorts by start time and is unique enough for one machine."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass
class RoundRecord:
    """One row of metrics.csv. `eval_*` describe the global model *after* the round, as
    evaluated by the clients on their test splits; round 0 is the initial model.

    Traffic per round, in payload bytes: `bytes_up` (updates and partials) and `bytes_down`
    (global model to each client, region models under edge rounds); by tier, `bytes_edge`
    (inside the regions: client updates, region models, the global model's fan-out to
    clients) and `bytes_cloud` (across the cloud link: one partial and one global model per
    region, as with a bridged broker per fog site).
    """

    round: int
    clients: int | None = None
    regions: int | None = None
    failed_regions: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_mae: float | None = None
    eval_rmse: float | None = None
    eval_accuracy: float | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    bytes_edge: int | None = None
    bytes_cloud: int | None = None
    round_seconds: float | None = None

    def set_evaluation(self, metrics: Mapping[str, float]) -> None:
        """Fill the eval_* cells from clients' example-weighted evaluation metrics."""
        self.eval_loss = metrics.get("eval_loss")
        self.eval_mae = metrics.get("eval_mae")
        self.eval_accuracy = metrics.get("eval_accuracy")
        mse = metrics.get("eval_mse")
        self.eval_rmse = math.sqrt(mse) if mse is not None else None


COLUMNS = tuple(f.name for f in fields(RoundRecord))


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_bytes(data)
    os.replace(scratch, path)


def write_metrics(path: Path, records: Iterable[RoundRecord]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: _cell(v) for k, v in asdict(record).items()})
    write_atomic(path, buffer.getvalue().encode())


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv as strings (empty where unknown); [] if it does not exist."""
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
