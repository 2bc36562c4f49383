"""The centralized baseline: one model trained on the union of the clients' training data with
the task's own training loop, then evaluated on each client's test split, as the federated
model is."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fogfl.config import FogflConfig, TrainingSettings
from fogfl.sim.experiment import CentralizedSettings
from fogfl.sim.workers import TaskKey, load_partitions, task_of

CENTRAL_ID = "centralized"


def centralized_baseline(
    config: FogflConfig, settings: CentralizedSettings, client_ids: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Each client's test metrics of a model trained centrally on all their training data."""
    from fogfl.tasks.base import Partition, training_seed

    key = TaskKey.of(config)
    task = task_of(key)
    partitions = load_partitions(key, client_ids)
    parts = [partitions[c] for c in client_ids]
    union = Partition(
        np.concatenate([p.x_train for p in parts]),
        np.concatenate([p.y_train for p in parts]),
        np.concatenate([p.x_test for p in parts]),
        np.concatenate([p.y_test for p in parts]),
        f"union of {len(parts)} clients",
    )
    seed = config.federation.seed
    model = task.build_model(seed)
    training = TrainingSettings(
        local_epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
    )
    task.train(model, union, training, training_seed(seed, 0, CENTRAL_ID))
    return {client_id: task.evaluate(model, partitions[client_id]) for client_id in client_ids}
