"""The task interface (build model, load a client's partition, train, evaluate) and the
supervised-learning loop most tasks share."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from fogfl.config import TrainingSettings
from fogfl.errors import ConfigError
from fogfl.identity import client_ordinal, client_seed  # noqa: F401  (re-exported for tasks)
from fogfl.wire import Tensors

OptionsT = TypeVar("OptionsT", bound=BaseModel)


class TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Partition:
    """One client's local data: a train split it learns from and a test split it evaluates on."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[Any]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[Any]
    description: str = ""

    @property
    def num_train(self) -> int:
        return len(self.x_train)

    @property
    def num_test(self) -> int:
        return len(self.x_test)


class Task(ABC):
    """A workload fogfl can federate (docs/tasks.md describes each promise).

    A task is built with its `task.options` mapping; this default takes none. Every
    process of a run builds its own instance from the same options and seed, so whatever a
    task derives (model, data, training) must follow from them alone.
    """

    name: ClassVar[str]
    problem: ClassVar[Literal["regression", "classification"]]

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        if options:
            raise ConfigError(
                f"task {self.name!r} takes no options, got task.options {sorted(options)}"
            )

    def partition_key(self, client_id: str) -> str:
        """What decides which data `client_id` gets: clients with equal keys train on the
        same data, and fogfl warns about them. The default, the whole id, fits a task whose
        data follow from `client_seed`."""
        return client_id

    @abstractmethod
    def build_model(self, seed: int) -> nn.Module:
        """A freshly initialised model, identical for the same seed."""

    @abstractmethod
    def load_partition(self, client_id: str, seed: int) -> Partition:
        """The local data of `client_id`, deterministic from the seed."""

    @abstractmethod
    def train(
        self, model: nn.Module, data: Partition, settings: TrainingSettings, seed: int
    ) -> dict[str, float]:
        """Train `model` in place on the train split; returns ``train_*`` metrics."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data: Partition) -> dict[str, float]:
        """Metrics on the test split: ``eval_loss``, ``eval_examples`` and task metrics."""

    def warm_up(self, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Pay one-off library start-up costs now, before the first round is timed."""


def parse_options(model: type[OptionsT], options: Mapping[str, Any], task: str) -> OptionsT:
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(["task.options", *map(str, e["loc"])]) + f": {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid options for task {task!r}: {problems}") from None


def shared_partitions(task: Task, client_ids: Iterable[str]) -> dict[str, list[str]]:
    """The clients that would train on the same data, by their partition key (only keys
    held by two clients or more)."""
    holders: dict[str, list[str]] = {}
    for client_id in client_ids:
        holders.setdefault(task.partition_key(client_id), []).append(client_id)
    return {key: ids for key, ids in holders.items() if len(ids) > 1}


def training_seed(seed: int, server_round: int, client_id: str, edge_round: int = 1) -> int:
    """The seed of one client's local training in one (edge) round: the runtime and the
    simulation derive it the same way, so they train identically."""
    return (
        seed * 1_000_003 + server_round * 7919 + edge_round * 104_729 + client_seed(client_id)
    ) % 2**63


def model_tensors(model: nn.Module) -> Tensors:
    """The model's state dict as numpy arrays, in state-dict order."""
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def load_tensors(model: nn.Module, tensors: Mapping[str, npt.NDArray[Any]]) -> None:
    state = {name: torch.from_numpy(np.array(array)) for name, array in tensors.items()}
    model.load_state_dict(state, strict=True)


class SupervisedTask(Task):
    """Mini-batch training with Adam on a loss, evaluation on the test split.

    With ``proximal_mu`` > 0 the local objective gains FedProx's proximal term
    μ/2·‖w − w_global‖², which keeps the local model near the global one it started from.
    """

    def warm_up(self, model: nn.Module) -> None:
        # torch builds its first optimizer in about a second (lazy imports); do it at start.
        torch.optim.Adam(model.parameters())

    def loss_fn(self) -> nn.Module:
        return nn.MSELoss() if self.problem == "regression" else nn.CrossEntropyLoss()

    def _targets(self, y: npt.NDArray[Any]) -> torch.Tensor:
        if self.problem == "regression":
            return torch.from_numpy(np.asarray(y, dtype=np.float32)).reshape(-1, 1)
        return torch.from_numpy(np.asarray(y, dtype=np.int64))

    def train(
        self, model: nn.Module, data: Partition, settings: TrainingSettings, seed: int
    ) -> dict[str, float]:
        generator = torch.Generator().manual_seed(seed)
        features = torch.from_numpy(data.x_train)
        targets = self._targets(data.y_train)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
        criterion = self.loss_fn()
        mu = settings.proximal_mu
        anchors = [p.detach().clone() for p in model.parameters()] if mu > 0 else []
        model.train()
        epoch_loss = math.nan
        for _epoch in range(settings.local_epochs):
            order = torch.randperm(len(features), generator=generator)
            total = 0.0
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                optimizer.zero_grad()
                loss = criterion(model(features[batch]), targets[batch])
                total += float(loss.item()) * len(batch)
                if anchors:
                    drift = sum(
                        (p - a).square().sum()
                        for p, a in zip(model.parameters(), anchors, strict=True)
                    )
                    loss = loss + mu / 2 * drift
                loss.backward()
                optimizer.step()
            epoch_loss = total / max(len(order), 1)
        return {"train_loss": epoch_loss}

    def evaluate(self, model: nn.Module, data: Partition) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            outputs = model(torch.from_numpy(data.x_test))
            targets = self._targets(data.y_test)
            metrics = {
                "eval_loss": float(self.loss_fn()(outputs, targets).item()),
                "eval_examples": float(data.num_test),
            }
            if self.problem == "regression":
                errors = outputs - targets
                metrics["eval_mae"] = float(errors.abs().mean().item())
                metrics["eval_mse"] = float((errors**2).mean().item())
            else:
                metrics["eval_accuracy"] = float(
                    (outputs.argmax(1) == targets).float().mean().item()
                )
        return metrics
