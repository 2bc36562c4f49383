"""A synthetic workload of any model size, for measuring the system rather than learning:
random data, a model of `megabytes` of float32 split over `tensors` tensors, and a training
step that costs one pass over the weights."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fogfl.config import TrainingSettings
from fogfl.tasks.base import Partition, Task, TaskOptions, client_seed, parse_options


class SyntheticOptions(TaskOptions):
    megabytes: float = Field(1.0, gt=0, le=2048, description="model size in MB of float32")
    tensors: int = Field(18, ge=1, le=10_000)
    examples: int = Field(1000, ge=1, le=10_000_000, description="train examples per client")


class SyntheticModel(nn.Module):
    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.layers = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in sizes)


class SyntheticTask(Task):
    name: ClassVar[str] = "synthetic"
    problem: ClassVar[Literal["regression", "classification"]] = "regression"

    def __init__(self, options: dict[str, object]) -> None:
        self.options = parse_options(SyntheticOptions, options, self.name)
        values = int(self.options.megabytes * 1e6 / 4)
        per_tensor = max(1, math.ceil(values / self.options.tensors))
        self.sizes = [per_tensor] * self.options.tensors

    def build_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = SyntheticModel(self.sizes)
        with torch.no_grad():
            for layer in model.layers:
                layer.normal_()
        return model

    def load_partition(self, client_id: str, seed: int) -> Partition:
        rng = np.random.default_rng([seed, client_seed(client_id)])
        examples = self.options.examples + int(rng.integers(0, max(1, self.options.examples // 10)))
        x = rng.normal(size=(examples, 1)).astype(np.float32)
        return Partition(x, x[:, 0], x[:10], x[:10, 0], f"{examples} random examples")

    def train(
        self, model: nn.Module, data: Partition, settings: TrainingSettings, seed: int
    ) -> dict[str, float]:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in model.parameters():
                layer.add_(
                    torch.randn(layer.shape, generator=generator), alpha=settings.learning_rate
                )
        return {"train_loss": float(settings.learning_rate)}

    def evaluate(self, model: nn.Module, data: Partition) -> dict[str, float]:
        with torch.no_grad():
            first = next(iter(model.parameters()))
            loss = float(first.square().mean().item())
        return {"eval_loss": loss, "eval_examples": float(data.num_test)}
