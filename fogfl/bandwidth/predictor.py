"""The seed's LSTM bandwidth forecaster: its network, its training with early stopping, and
the saved form (predictor.safetensors + predictor.json)."""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fogfl.bandwidth.files import load_weights, read_model, write_model
from fogfl.bandwidth.metrics import forecast_metrics
from fogfl.bandwidth.series import BANDWIDTH, FEATURES, TRACE_CONSTANTS
from fogfl.bandwidth.targets import (
    DEFAULT_TARGET,
    SEED_TARGET,
    TARGETS,
    forecasts,
    network_inputs,
    network_targets,
)
from fogfl.bandwidth.windows import SEQUENCE_LENGTH, SPLIT_NAMES, Normalisation, WindowedData
from fogfl.errors import BandwidthError

FloatArray = npt.NDArray[np.float64]
FORMAT = "fogfl-bandwidth-predictor/1"
STEM = "predictor"
# Called after each epoch with (epoch, train loss, validation loss).
EpochCallback = Callable[[int, float, float], None]


@dataclass(frozen=True)
class Architecture:
    """LSTM layers, each followed by dropout and batch norm; then the dense head; `target`
    is what the network outputs (fogfl.bandwidth.targets). The layers are the seed's;
    SEED_ARCHITECTURE is the seed's exact model, which outputs the level."""

    features: int = len(FEATURES)
    sequence_length: int = SEQUENCE_LENGTH
    lstm_units: tuple[int, ...] = (128, 64, 32)
    lstm_dropout: float = 0.2
    dense_units: tuple[int, ...] = (16, 8)
    dense_dropout: float = 0.3
    target: str = DEFAULT_TARGET

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: Any, where: str) -> Architecture:
        try:
            built = cls(
                features=int(document["features"]),
                sequence_length=int(document["sequence_length"]),
                lstm_units=tuple(int(u) for u in document["lstm_units"]),
                lstm_dropout=float(document["lstm_dropout"]),
                dense_units=tuple(int(u) for u in document["dense_units"]),
                dense_dropout=float(document["dense_dropout"]),
                # Models saved before the target was a choice all learnt the level.
                target=str(document.get("target", "level")),
            )
        except (KeyError, TypeError, ValueError):
            raise BandwidthError(f"{where}: the architecture is incomplete or malformed") from None
        if built.features != len(FEATURES) or built.sequence_length < 1:
            raise BandwidthError(f"{where}: {built.features} features, fogfl has {len(FEATURES)}")
        if not built.lstm_units or len(built.dense_units) != 2:
            raise BandwidthError(f"{where}: needs LSTM layers and two dense layers")
        if min(built.lstm_units + built.dense_units) < 1:
            raise BandwidthError(f"{where}: every layer needs at least one unit")
        if built.target not in TARGETS:
            raise BandwidthError(
                f"{where}: unknown target {built.target!r}; fogfl knows {', '.join(TARGETS)}"
            )
        return built


SEED_ARCHITECTURE = Architecture(target=SEED_TARGET)


class BandwidthLSTM(nn.Module):
    """(batch, steps, features) normalised → (batch,) next normalised bandwidth."""

    def __init__(self, architecture: Architecture = Architecture()) -> None:
        super().__init__()
        sizes = (architecture.features, *architecture.lstm_units)
        self.lstms = nn.ModuleList(
            nn.LSTM(a, b, batch_first=True) for a, b in itertools.pairwise(sizes)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(units) for units in architecture.lstm_units)
        self.dropout = nn.Dropout(architecture.lstm_dropout)
        first, second = architecture.dense_units
        self.head = nn.Sequential(
            nn.Linear(architecture.lstm_units[-1], first),
            nn.ReLU(),
            nn.Dropout(architecture.dense_dropout),
            nn.Linear(first, second),
            nn.ReLU(),
            nn.Linear(second, 1),
        )

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        hidden = sequences
        for index, (lstm, norm) in enumerate(zip(self.lstms, self.norms, strict=True)):
            hidden, _ = lstm(hidden)
            if index == len(self.lstms) - 1:
                hidden = hidden[:, -1]  # the last layer hands on its final step only
                return self.head(norm(self.dropout(hidden))).squeeze(-1)
            # Batch norm over the units, at every step.
            hidden = norm(self.dropout(hidden).transpose(1, 2)).transpose(1, 2)
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 100
    patience: int = 10
    batch_size: int = 32
    learning_rate: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise BandwidthError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.learning_rate > 0:
            raise BandwidthError("the learning rate must be positive")


@dataclass
class TrainingReport:
    """What training did: the epochs run, the best one (whose weights are kept), losses per
    epoch (MSE on normalised bandwidth), seconds, and the test split's metrics."""

    epochs_run: int = 0
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)


class EarlyStopping:
    """Tracks the validation loss: `improved` when it falls below the best so far, `stop`
    once it has not for `patience` epochs in a row."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = float("inf")
        self.waited = 0

    def update(self, loss: float) -> bool:
        """Record an epoch's loss; True when it is the best so far."""
        if loss < self.best:
            self.best, self.waited = loss, 0
            return True
        self.waited += 1
        return False

    @property
    def stop(self) -> bool:
        return self.waited >= self.patience


class Predictor:
    """A trained forecaster: the network with the normalisation it was trained with."""

    def __init__(
        self,
        model: BandwidthLSTM,
        architecture: Architecture,
        normalisation: Normalisation,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.architecture = architecture
        self.normalisation = normalisation
        self.metadata = metadata or {}

    def predict(self, inputs: FloatArray) -> FloatArray:
        """Raw windows (n, steps, 4) → forecasts of the next bandwidth in Mbit/s (n,)."""
        inputs = np.asarray(inputs, dtype=np.float64)
        expected = (self.architecture.sequence_length, self.architecture.features)
        if inputs.ndim != 3 or inputs.shape[1:] != expected:
            raise BandwidthError(
                f"the predictor takes windows of {expected[0]} steps × {expected[1]} features, "
                f"got shape {inputs.shape}"
            )
        if not np.all(np.isfinite(inputs)):
            raise BandwidthError("the predictor's input holds NaN or infinite values")
        target, norm = self.architecture.target, self.normalisation
        scaled = network_inputs(target, inputs, norm).astype(np.float32)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(scaled), 4096):
                outputs.append(self.model(torch.from_numpy(scaled[start : start + 4096])).numpy())
        joined = np.concatenate(outputs) if outputs else np.empty(0)
        return forecasts(target, inputs, joined.astype(np.float64), norm)

    def forecast_from_throughputs(self, mbit_s: Sequence[float]) -> float | None:
        """The next value of a throughput-only history (e.g. a client's measured uploads),
        its other features set as for a two-column trace; None while it is too short."""
        steps = self.architecture.sequence_length
        if len(mbit_s) < steps:
            return None
        window = np.empty((1, steps, len(FEATURES)))
        for index, feature in enumerate(FEATURES):
            window[0, :, index] = TRACE_CONSTANTS.get(feature, 0.0)
        window[0, :, BANDWIDTH] = np.asarray(mbit_s[-steps:], dtype=np.float64)
        return max(0.0, float(self.predict(window)[0]))

    def save(self, directory: Path) -> list[Path]:
        document = {
            "format": FORMAT,
            "architecture": self.architecture.to_json(),
            "features": list(FEATURES),
            "target": "bandwidth_mbit_s of the next sample",
            "normalisation": self.normalisation.to_json(),
            **self.metadata,
        }
        return write_model(directory, STEM, self.model.state_dict(), document)

    @classmethod
    def load(cls, directory: Path) -> Predictor:
        tensors, document = read_model(directory, STEM, FORMAT, "bandwidth predictor")
        where = str(directory / f"{STEM}.json")
        architecture = Architecture.from_json(document.get("architecture"), where)
        normalisation = Normalisation.from_json(document.get("normalisation"), where)
        model = BandwidthLSTM(architecture)
        load_weights(model, tensors, str(directory / f"{STEM}.safetensors"))
        metadata = {k: v for k, v in document.items() if k not in ("architecture", "normalisation")}
        return cls(model, architecture, normalisation, metadata)

    @property
    def report(self) -> dict[str, Any]:
        report = self.metadata.get("report", {})
        return report if isinstance(report, dict) else {}


def train_predictor(
    data: WindowedData,
    settings: TrainSettings = TrainSettings(),
    architecture: Architecture = Architecture(),
    on_epoch: EpochCallback | None = None,
) -> tuple[Predictor, TrainingReport]:
    """Adam on the MSE of the network's target (`architecture.target`), batches of
    `batch_size`, until `epochs` or until the validation loss has not improved for
    `patience` epochs; the best epoch's weights are kept and scored on the test split."""
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    norm = data.normalisation

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        windows = data.split(split)
        target = architecture.target
        x = network_inputs(target, windows.inputs, norm)
        y = network_targets(target, windows.inputs, windows.targets, norm)
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))

    train_x, train_y = tensors("train")
    validation_x, validation_y = tensors("validation")
    model = BandwidthLSTM(architecture)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    loss_of = nn.MSELoss()
    report = TrainingReport(windows={n: len(data.split(n)) for n in SPLIT_NAMES})
    best_state = copy.deepcopy(model.state_dict())
    stopping = EarlyStopping(settings.patience)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            if len(batch) < 2 and len(order) > 1:
                continue  # batch norm cannot learn from a batch of one
            optimiser.zero_grad()
            loss = loss_of(model(train_x[batch]), train_y[batch])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        model.eval()
        with torch.no_grad():
            validation_loss = float(loss_of(model(validation_x), validation_y))
        report.train_loss.append(total / len(order))
        report.validation_loss.append(validation_loss)
        report.epochs_run = epoch
        if on_epoch is not None:
            on_epoch(epoch, report.train_loss[-1], validation_loss)
        if stopping.update(validation_loss):
            report.best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
        elif stopping.stop:
            report.stopped_early = epoch < settings.epochs
            break
    model.load_state_dict(best_state)
    predictor = Predictor(model, architecture, norm)
    predicted = predictor.predict(data.test.inputs)
    scale = float(norm.scale[BANDWIDTH])
    report.test = forecast_metrics(predicted, data.test.targets, scale)
    report.seconds = time.monotonic() - started
    return predictor, report
