"""ECG5000 heartbeat classification: a small 1-D CNN on the UCR ECG5000 series (140 samples
each, 5 classes, or normal vs abnormal), read from a local copy of the UCR file and split into
one disjoint share per client, IID or non-IID by Dirichlet(α) over labels. Nothing is
downloaded."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field, model_validator
from torch import nn

from fogfl.errors import TaskError
from fogfl.tasks.base import (
    Partition,
    SupervisedTask,
    TaskOptions,
    client_ordinal,
    parse_options,
)

SERIES_LENGTH = 140
UCR_CLASSES = 5
NORMAL_CLASS = 0  # UCR label 1, after shifting labels 1..5 to 0..4
DATA_DIR_ENV = "FOGFL_DATA_DIR"
DATA_FILES = {"train": "ECG5000_TRAIN", "test": "ECG5000_TEST"}
DATA_SUFFIXES = (".txt", ".tsv")
# The UCR archive unpacks into ECG5000/; a shared data root may hold one folder per task.
DATA_SUBDIRS = ("", "ECG5000", "ecg5000")
# UCR files come whitespace-separated (.txt), tab-separated (.tsv) or, in the 2015 archive,
# comma-separated.
FIELD_SEPARATOR = re.compile(r"[\s,]+")
FIX_FILE = (
    "replace it with an intact copy of ECG5000 from the UCR archive "
    "(timeseriesclassification.com) or point task.options.data_path at one"
)
# Stream 0 of the run seed draws the federation-wide split; clients' own streams (their
# train/test split) are keyed by their ordinals, which start at 1.
SPLIT_STREAM = 0
DIRICHLET_ATTEMPTS = 100

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class ECG5000Options(TaskOptions):
    data_path: Path | None = Field(None, description="a UCR ECG5000 file (.txt or .tsv)")
    data_dir: Path | None = Field(
        None, description="a folder holding ECG5000_TRAIN.txt or .tsv; default $FOGFL_DATA_DIR"
    )
    include_test_file: bool = Field(
        True, description="with a folder: also pool ECG5000_TEST.* when it is there"
    )
    mode: Literal["multiclass", "binary"] = Field(
        "multiclass", description="5 classes, or normal (class 1) vs abnormal (the rest)"
    )
    num_clients: int = Field(6, ge=1, le=100_000, description="shares the data is split into")
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(0.5, gt=0, le=1e6, description="Dirichlet concentration; small = skewed")
    min_series: int = Field(
        10, ge=2, le=1_000_000, description="fewest series a client may hold (train + test)"
    )
    test_fraction: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_source(self) -> ECG5000Options:
        if self.data_path is not None and self.data_dir is not None:
            raise ValueError("give data_path or data_dir, not both")
        return self


def read_ucr_file(path: Path) -> tuple[FloatArray, IntArray]:
    """The series (n × 140, float32) and labels (0..4) of a UCR ECG5000 file.

    Raises TaskError naming the file and line when it is missing or malformed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(
            f"ECG5000 file {path} does not exist; download ECG5000 from the UCR archive "
            "(timeseriesclassification.com) and set task.options.data_path to its "
            "ECG5000_TRAIN.txt, or task.options.data_dir to its folder"
        ) from None
    except UnicodeDecodeError:
        raise TaskError(f"ECG5000 file {path} is not a text file; {FIX_FILE}") from None
    except OSError as exc:
        raise TaskError(f"cannot read ECG5000 file {path}: {exc.strerror or exc}") from None
    rows: list[npt.NDArray[np.float64]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped:
            rows.append(_parse_line(stripped, path, line_number))
    if not rows:
        raise TaskError(f"ECG5000 file {path} holds no series; {FIX_FILE}")
    table = np.stack(rows)
    return table[:, 1:].astype(np.float32), table[:, 0].astype(np.int64) - 1


def _parse_line(line: str, path: Path, line_number: int) -> npt.NDArray[np.float64]:
    where = f"ECG5000 file {path}, line {line_number}"
    fields = FIELD_SEPARATOR.split(line)
    if len(fields) != SERIES_LENGTH + 1:
        raise TaskError(
            f"{where} has {len(fields)} values, not {SERIES_LENGTH + 1} "
            f"(a label and {SERIES_LENGTH} samples); {FIX_FILE}"
        )
    try:
        values = np.array(fields, dtype=np.float64)
    except ValueError:
        column, field = next((i, f) for i, f in enumerate(fields, 1) if not _is_number(f))
        raise TaskError(f"{where}, value {column} is {field!r}, not a number; {FIX_FILE}") from None
    if not np.isfinite(values).all():
        column = int(np.flatnonzero(~np.isfinite(values))[0]) + 1
        raise TaskError(
            f"{where}, value {column} is {fields[column - 1]!r}, not a finite number; {FIX_FILE}"
        )
    label = values[0]
    if label != round(label) or not 1 <= label <= UCR_CLASSES:
        raise TaskError(
            f"{where} starts with label {fields[0]!r}; ECG5000 labels are 1 to {UCR_CLASSES}. "
            f"Is this another UCR data set? Otherwise {FIX_FILE}"
        )
    return values


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def find_data_files(directory: Path, include_test_file: bool) -> list[Path]:
    """ECG5000_TRAIN (and ECG5000_TEST) in `directory` or its ECG5000/ subfolder."""
    found: list[Path] = []
    for split in ("train", "test") if include_test_file else ("train",):
        candidates = [
            directory / subdir / f"{DATA_FILES[split]}{suffix}"
            for subdir in DATA_SUBDIRS
            for suffix in DATA_SUFFIXES
        ]
        match = next((c for c in candidates if c.is_file()), None)
        if match is not None:
            found.append(match)
        elif split == "train":
            raise TaskError(
                f"no ECG5000 data in {directory}: looked for "
                f"{', '.join(str(c) for c in candidates)}. Put ECG5000_TRAIN.txt there (UCR "
                f"archive, timeseriesclassification.com) or set task.options.data_path"
            )
    return found


def client_shares(
    labels: IntArray,
    num_clients: int,
    partition: Literal["iid", "dirichlet"],
    alpha: float,
    seed: int,
    min_series: int = 2,
) -> list[IntArray]:
    """Disjoint index sets, one per client, that together cover every series.

    ``iid`` deals a shuffle into equal shares (±1). ``dirichlet`` splits each label's series
    over the clients in proportions drawn from Dir(α), as flwr-datasets' DirichletPartitioner
    does (with its self-balancing), redrawing until every client holds `min_series`.
    """
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    if partition == "iid":
        return [
            share.astype(np.int64)
            for share in np.array_split(rng.permutation(len(labels)), num_clients)
        ]
    for _attempt in range(DIRICHLET_ATTEMPTS):
        shares = _dirichlet_split(labels, num_clients, alpha, rng)
        if min(len(share) for share in shares) >= min_series:
            return shares
    raise TaskError(
        f"Dirichlet(alpha={alpha}) left a client with fewer than {min_series} of the "
        f"{len(labels)} series in each of {DIRICHLET_ATTEMPTS} draws for {num_clients} "
        "clients; raise task.options.alpha, lower num_clients or lower min_series"
    )


def _dirichlet_split(
    labels: IntArray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[IntArray]:
    shares: list[list[int]] = [[] for _ in range(num_clients)]
    fair_share = len(labels) / num_clients
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        # Clients already above a fair share take no more: without this a few clients hoard
        # most labels and the rest end up nearly empty.
        eligible = np.array([len(share) <= fair_share for share in shares], dtype=np.float64)
        proportions *= eligible
        if proportions.sum() == 0:  # tiny α underflowed every eligible client's weight to 0
            proportions = eligible
        cuts = (np.cumsum(proportions / proportions.sum()) * len(members)).astype(int)[:-1]
        for share, part in zip(shares, np.split(members, cuts), strict=True):
            share.extend(part.tolist())
    return [rng.permutation(np.array(share, dtype=np.int64)) for share in shares]


class ECG5000Model(nn.Module):
    """Two 1-D convolutions (16 and 32 channels, max-pooled 140 → 35 → 7 steps) and a
    224-32-classes MLP head: about 10k weights."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, kernel_size=7, padding=3),
            nn.ReLU(),
            nn.MaxPool1d(4),
            nn.Conv1d(16, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(5),
        )
        # Flattened, not averaged over time: the classes differ in where in the beat the
        # signal deviates, and a global average would throw that position away.
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7, 32), nn.ReLU(), nn.Linear(32, classes)
        )

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        # Partitions hold one row per series; the convolutions want a channel axis.
        return self.head(self.features(series.unsqueeze(1)))


class ECG5000Task(SupervisedTask):
    name: ClassVar[str] = "ecg5000"
    problem: ClassVar[Literal["regression", "classification"]] = "classification"

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = parse_options(ECG5000Options, options, self.name)
        self.classes = UCR_CLASSES if self.options.mode == "multiclass" else 2
        self._dataset: tuple[FloatArray, IntArray] | None = None
        self._shares: dict[int, list[IntArray]] = {}

    def data_files(self) -> list[Path]:
        """The UCR files this task reads, from options, else from $FOGFL_DATA_DIR."""
        if self.options.data_path is not None:
            return [self.options.data_path]
        directory = self.options.data_dir
        if directory is None:
            env = os.environ.get(DATA_DIR_ENV)
            if not env:
                raise TaskError(
                    "no ECG5000 data configured: set task.options.data_path (a UCR ECG5000 "
                    f"file), task.options.data_dir or {DATA_DIR_ENV} (a folder holding "
                    "ECG5000_TRAIN.txt or .tsv, from the UCR archive at "
                    "timeseriesclassification.com)"
                )
            directory = Path(env)
        return find_data_files(directory, self.options.include_test_file)

    def dataset(self) -> tuple[FloatArray, IntArray]:
        """Every series and its label in the task's mode (read once per task)."""
        if self._dataset is None:
            parts = [read_ucr_file(path) for path in self.data_files()]
            series = np.concatenate([x for x, _ in parts])
            labels = np.concatenate([y for _, y in parts])
            if self.options.mode == "binary":
                labels = (labels != NORMAL_CLASS).astype(np.int64)
            self._dataset = (series, labels)
        return self._dataset

    def shares(self, seed: int) -> list[IntArray]:
        """Each client's indices into `dataset()`, in ordinal order."""
        if seed not in self._shares:
            _, labels = self.dataset()
            clients = self.options.num_clients
            least = self.options.min_series
            if len(labels) < least * clients:
                raise TaskError(
                    f"ECG5000 has {len(labels)} series, too few to give each of "
                    f"num_clients={clients} clients min_series={least}; lower "
                    "task.options.num_clients or min_series"
                )
            self._shares[seed] = client_shares(
                labels, clients, self.options.partition, self.options.alpha, seed, least
            )
        return self._shares[seed]

    def build_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return ECG5000Model(self.classes)

    def partition_key(self, client_id: str) -> str:
        # The data set is cut into num_clients shares handed out by client number, so
        # north-01 and south-01 hold the same share.
        return f"ECG5000 share {client_ordinal(client_id)}"

    def load_partition(self, client_id: str, seed: int) -> Partition:
        ordinal = client_ordinal(client_id)
        clients = self.options.num_clients
        if not 1 <= ordinal <= clients:
            raise TaskError(
                f"client {client_id!r} is number {ordinal}, but ECG5000 is split into "
                f"task.options.num_clients={clients} shares numbered 1 to {clients}; set "
                "num_clients to the federation's size and end client ids with their number"
            )
        series, labels = self.dataset()
        share = self.shares(seed)[ordinal - 1]
        order = np.random.default_rng([seed, ordinal]).permutation(share)
        n_test = min(len(order) - 1, max(1, round(len(order) * self.options.test_fraction)))
        test, train = order[:n_test], order[n_test:]
        counts = np.bincount(labels[share], minlength=self.classes)
        description = (
            f"ECG5000 {self.options.partition} share {ordinal}/{clients}, labels {counts.tolist()}"
        )
        return Partition(series[train], labels[train], series[test], labels[test], description)
