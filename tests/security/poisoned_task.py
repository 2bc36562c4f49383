"""A test task: fogfl's synthetic task, with one client that poisons every update it sends.

Named by import path (``poisoned_task:PoisonedSynthetic`` with this directory in
`python_path`), as a user's own task would be. Options beside the synthetic task's:
``poisoned_client`` (the id of the client that attacks; none by default) and ``attack``:
``scale`` multiplies the model it sends by ``factor`` (100 by default), ``flip`` sends the
model with its sign flipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fogfl.config import TrainingSettings
from fogfl.errors import TaskError
from fogfl.tasks.base import Partition
from fogfl.tasks.synthetic import SyntheticTask

ATTACKS = ("scale", "flip")


@dataclass
class ClientPartition(Partition):
    """A partition that knows whose it is, so `train` can tell the attacker."""

    client_id: str = ""


class PoisonedSynthetic(SyntheticTask):
    name: ClassVar[str] = "poisoned-synthetic"

    def __init__(self, options: dict[str, object]) -> None:
        own = dict(options)
        self.poisoned_client = str(own.pop("poisoned_client", ""))
        self.attack = str(own.pop("attack", "scale"))
        self.factor = float(str(own.pop("factor", 100.0)))
        if self.attack not in ATTACKS:
            raise TaskError(f"attack {self.attack!r} is not one of {', '.join(ATTACKS)}")
        super().__init__(own)

    def load_partition(self, client_id: str, seed: int) -> Partition:
        data = super().load_partition(client_id, seed)
        return ClientPartition(
            data.x_train, data.y_train, data.x_test, data.y_test, data.description, client_id
        )

    def train(
        self, model: nn.Module, data: Partition, settings: TrainingSettings, seed: int
    ) -> dict[str, float]:
        metrics = super().train(model, data, settings, seed)
        if isinstance(data, ClientPartition) and data.client_id == self.poisoned_client:
            with torch.no_grad():
                for tensor in model.parameters():
                    tensor.mul_(self.factor if self.attack == "scale" else -1.0)
        return metrics
