"""The layout of a run directory, shared by the server that writes it and the launcher and
reports that read it."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from fogfl.errors import FogflError
from fogfl.links.settings import CLOUD_LINK_PREFIX
from fogfl.transfers import RoundTransfers

METRICS_FILE = "metrics.csv"
MODEL_FILE = "global_model.safetensors"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
LOG_DIR = "logs"
# With emulated links: the links runner's spec, its proxies' ports and their counters.
LINKS_DIR = "links"
LINKS_SPEC_FILE = "spec.json"
LINKS_PORTS_FILE = "ports.json"
LINKS_COUNTERS_FILE = "counters.json"
_CHECKPOINT_KEY = "fogfl_checkpoint"
_CHECKPOINT_VERSION = 1


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

    Transfers on the edge tier (`fogfl.transfers`): the slowest and the median client's
    upload and download seconds; `stragglers`, updates missing when a fog broker closed an
    (edge) round; `late_updates`, updates that came after their round closed. With emulated
    links, `wire_bytes_up`/`wire_bytes_down` are the bytes the links carried during the
    round (MQTT framing, acknowledgements and keep-alives included); with emulated cloud
    links (`links.cloud`), `cloud_wire_bytes_up`/`cloud_wire_bytes_down` are what the fog
    sites' links to the Flower server carried (gRPC framing included). `cloud_upload_s` is
    the slowest partial's seconds from its fog broker to its bridge.

    Under `wire.update_codec: adaptive` (docs/bandwidth.md): `codecs`, how many clients
    sent each codec (`int8:3 topk_0.05:1`, the last edge round's choice);
    `predicted_upload_s_median`, the median of the upload seconds the controllers
    predicted; `upload_prediction_error`, the median of |predicted − measured| / measured.
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
    upload_s_max: float | None = None
    upload_s_median: float | None = None
    download_s_max: float | None = None
    download_s_median: float | None = None
    cloud_upload_s: float | None = None
    stragglers: int | None = None
    late_updates: int | None = None
    wire_bytes_up: int | None = None
    wire_bytes_down: int | None = None
    cloud_wire_bytes_up: int | None = None
    cloud_wire_bytes_down: int | None = None
    codecs: str | None = None
    predicted_upload_s_median: float | None = None
    upload_prediction_error: float | None = None

    def set_evaluation(self, metrics: Mapping[str, float]) -> None:
        """Fill the eval_* cells from clients' example-weighted evaluation metrics."""
        self.eval_loss = metrics.get("eval_loss")
        self.eval_mae = metrics.get("eval_mae")
        self.eval_accuracy = metrics.get("eval_accuracy")
        mse = metrics.get("eval_mse")
        self.eval_rmse = math.sqrt(mse) if mse is not None else None

    def set_transfers(self, transfers: RoundTransfers) -> None:
        """Fill the edge tier's transfer cells."""
        self.upload_s_max = transfers.upload_s_max
        self.upload_s_median = transfers.upload_s_median
        self.download_s_max = transfers.download_s_max
        self.download_s_median = transfers.download_s_median
        self.stragglers = transfers.stragglers
        self.codecs = transfers.codecs
        self.predicted_upload_s_median = transfers.predicted_upload_s_median
        self.upload_prediction_error = transfers.upload_prediction_error


COLUMNS = tuple(f.name for f in fields(RoundRecord))


def write_atomic(path: Path, data: bytes, durable: bool = False) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half.
    `durable` also flushes it to the disk before the switch (it survives a power cut)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with scratch.open("wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(scratch, path)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@dataclass
class Checkpoint:
    """Where a run stands after its last completed round: enough to resume it exactly.

    `global_model` is the strategy's global model after round `round` (in the strategy's
    own dtypes: FedAdam's are float64); `strategy_tensors` and `strategy_values` are the
    strategy's state between rounds; `records` the metrics rows so far. `finished` is set
    once the final model was evaluated.
    """

    run_id: str
    round: int
    rounds: int
    strategy: str
    global_model: list[npt.NDArray[Any]]
    strategy_tensors: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    strategy_values: dict[str, Any] = field(default_factory=dict)
    records: list[RoundRecord] = field(default_factory=list)
    finished: bool = False


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """One safetensors file, written atomically and durably: the tensors under
    ``global/NNNNN`` and ``strategy/<name>``, everything else as JSON in its metadata."""
    tensors = {
        f"global/{index:05d}": np.ascontiguousarray(array)
        for index, array in enumerate(checkpoint.global_model)
    }
    for name, array in checkpoint.strategy_tensors.items():
        tensors[f"strategy/{name}"] = np.ascontiguousarray(array)
    state = {
        "version": _CHECKPOINT_VERSION,
        "run_id": checkpoint.run_id,
        "round": checkpoint.round,
        "rounds": checkpoint.rounds,
        "strategy": checkpoint.strategy,
        "finished": checkpoint.finished,
        "global_tensors": len(checkpoint.global_model),
        "strategy_values": checkpoint.strategy_values,
        "records": [asdict(record) for record in checkpoint.records],
    }
    data = safetensors_save(tensors, metadata={_CHECKPOINT_KEY: json.dumps(state)})
    write_atomic(path, data, durable=True)


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`, None if there is none; FogflError if it is unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FogflError(f"cannot read the checkpoint {path}: {exc.strerror}") from None
    try:
        tensors = safetensors_load(data)
        header_length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_length])
        state = json.loads(header["__metadata__"][_CHECKPOINT_KEY])
        if state["version"] != _CHECKPOINT_VERSION:
            raise ValueError(f"version {state['version']}, this fogfl reads {_CHECKPOINT_VERSION}")
        strategy_tensors = {
            name[len("strategy/") :]: array
            for name, array in tensors.items()
            if name.startswith("strategy/")
        }
        return Checkpoint(
            run_id=str(state["run_id"]),
            round=int(state["round"]),
            rounds=int(state["rounds"]),
            strategy=str(state["strategy"]),
            global_model=[tensors[f"global/{i:05d}"] for i in range(int(state["global_tensors"]))],
            strategy_tensors=strategy_tensors,
            strategy_values=dict(state["strategy_values"]),
            records=[RoundRecord(**row) for row in state["records"]],
            finished=bool(state["finished"]),
        )
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise FogflError(
            f"the checkpoint {path} is damaged ({type(exc).__name__}: {exc}); move it away to "
            "start the run over"
        ) from None


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


@dataclass(frozen=True)
class LinkBytes:
    """What the emulated links had carried by a moment, payload bytes each way: the
    clients' links, and the fog sites' cloud links (`cloud-<region>`)."""

    uplink: int
    downlink: int
    cloud_uplink: int = 0
    cloud_downlink: int = 0


def read_link_bytes(
    path: Path, written_after: float = 0.0, wait_s: float = 0.0
) -> LinkBytes | None:
    """The links' totals from the runner's counters file, once it was written at or after
    `written_after` (Unix time; waits up to `wait_s` for such a copy, then takes the newest
    there is); None when there is no readable file (no emulated links)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            report = json.loads(path.read_text())
            links = report["links"]
            edge = [v for k, v in links.items() if not k.startswith(CLOUD_LINK_PREFIX)]
            cloud = [v for k, v in links.items() if k.startswith(CLOUD_LINK_PREFIX)]
            totals = LinkBytes(
                sum(int(link["uplink_bytes"]) for link in edge),
                sum(int(link["downlink_bytes"]) for link in edge),
                sum(int(link["uplink_bytes"]) for link in cloud),
                sum(int(link["downlink_bytes"]) for link in cloud),
            )
            written = float(report["written_unix_s"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if written >= written_after or time.monotonic() >= deadline:
            return totals
        time.sleep(0.05)
