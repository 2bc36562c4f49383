"""A fogfl task: a small MLP that classifies 8×8 images of handwritten digits.

Each client learns from its own random sample of the data set, drawn from its id and the
run's seed, and evaluates on a held-out part of that sample. The data are scikit-learn's
bundled digits (1,797 images, no download) or, with the option `csv`, a file of your own:
one example per row, numeric features first, an integer class label (0, 1, …) last, and a
header row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fogfl.config import TrainingSettings
from fogfl.tasks.base import Partition, Task, TaskOptions, client_seed, parse_options


class DigitsOptions(TaskOptions):
    """What `task.options` may set in fogfl.yaml."""

    csv: Path | None = Field(None, description="your own data instead of scikit-learn's digits")
    examples: int = Field(300, ge=10, description="examples each client draws")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    hidden: int = Field(64, ge=1, description="width of the hidden layer")


class DigitsTask(Task):
    name: ClassVar[str] = "digits"
    problem: ClassVar[Literal["regression", "classification"]] = "classification"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = parse_options(DigitsOptions, options, self.name)
        self.features, self.labels = self._read_data()
        self.classes = int(self.labels.max()) + 1

    def _read_data(self) -> tuple[np.ndarray, np.ndarray]:
        if self.options.csv is not None:
            table = np.loadtxt(self.options.csv, delimiter=",", skiprows=1, ndmin=2)
            features, labels = table[:, :-1], table[:, -1]
        else:
            from sklearn.datasets import load_digits

            features, labels = load_digits(return_X_y=True)
        # Fixed scaling from the data set as a whole: every client reads the same file.
        scale = max(float(np.abs(features).max()), 1e-12)
        return (features / scale).astype(np.float32), labels.astype(np.int64)

    def build_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(self.features.shape[1], self.options.hidden),
            nn.ReLU(),
            nn.Linear(self.options.hidden, self.classes),
        )

    def load_partition(self, client_id: str, seed: int) -> Partition:
        rng = np.random.default_rng([seed, client_seed(client_id)])
        count = min(self.options.examples, len(self.labels))
        chosen = rng.choice(len(self.labels), size=count, replace=False)
        n_test = max(1, round(count * self.options.test_fraction))
        test, train = chosen[:n_test], chosen[n_test:]
        return Partition(
            self.features[train],
            self.labels[train],
            self.features[test],
            self.labels[test],
            f"{len(train)} train / {len(test)} test digits",
        )

    def train(
        self, model: nn.Module, data: Partition, settings: TrainingSettings, seed: int
    ) -> dict[str, float]:
        generator = torch.Generator().manual_seed(seed)
        features = torch.from_numpy(data.x_train)
        labels = torch.from_numpy(data.y_train)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
        anchors = [p.detach().clone() for p in model.parameters()]
        model.train()
        loss_sum, seen = 0.0, 0
        for _epoch in range(settings.local_epochs):
            loss_sum, seen = 0.0, 0
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(features[batch]), labels[batch])
                loss_sum += float(loss.item()) * len(batch)
                seen += len(batch)
                if settings.proximal_mu > 0:  # FedProx: stay near the global model
                    drift = sum(
                        (p - a).square().sum()
                        for p, a in zip(model.parameters(), anchors, strict=True)
                    )
                    loss = loss + settings.proximal_mu / 2 * drift
                loss.backward()
                optimizer.step()
        return {"train_loss": loss_sum / seen if seen else math.nan}

    def evaluate(self, model: nn.Module, data: Partition) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            outputs = model(torch.from_numpy(data.x_test))
            labels = torch.from_numpy(data.y_test)
            loss = nn.functional.cross_entropy(outputs, labels)
            accuracy = (outputs.argmax(dim=1) == labels).float().mean()
        return {
            "eval_loss": float(loss.item()),
            "eval_accuracy": float(accuracy.item()),
            "eval_examples": float(data.num_test),
        }
