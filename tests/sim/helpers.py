"""Small configurations for the simulation tests, and the reference computations the
simulation is checked against (the task's own train, the shared weighted mean)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fogfl.aggregation import WeightedModelMean
from fogfl.config import FogflConfig, load_config
from fogfl.tasks import load_task
from fogfl.tasks.base import load_tensors, model_tensors, training_seed
from fogfl.wire import ModelSchema, Tensors


def small_config(**overrides: Any) -> FogflConfig:
    """2 regions × 2 clients of QoE with short traces, one round, unless overridden."""
    settings: dict[str, Any] = {
        "federation.rounds": 1,
        "federation.clients_per_region": 2,
        "federation.seed": 7,
        "task.options": {"duration_s": 60},
        "training.local_epochs": 1,
    }
    settings.update(overrides)
    return load_config(None, settings, environ={})


def synthetic_config(**overrides: Any) -> FogflConfig:
    """The synthetic task: cheap training, clients of different sizes."""
    return small_config(
        **{"task.name": "synthetic", "task.options": {"megabytes": 0.004, "examples": 200}},
        **overrides,
    )


def train_client(
    config: FogflConfig, client_id: str, start: Tensors, server_round: int, edge_round: int = 1
) -> tuple[Tensors, int]:
    """One client's update, computed directly with the task (the reference the simulation
    is checked against)."""
    import torch

    task = load_task(config.task.name, config.task.options)
    model = task.build_model(config.federation.seed)
    load_tensors(model, start)
    data = task.load_partition(client_id, config.federation.seed)
    seed = training_seed(config.federation.seed, server_round, client_id, edge_round)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task.train(model, data, config.training, seed)
    finally:
        torch.set_num_threads(threads)
    return model_tensors(model), data.num_train


def initial_model(config: FogflConfig) -> Tensors:
    task = load_task(config.task.name, config.task.options)
    return model_tensors(task.build_model(config.federation.seed))


def weighted_mean(models: list[tuple[Tensors, int]]) -> Tensors:
    mean = WeightedModelMean(ModelSchema.of(models[0][0]))
    for tensors, weight in models:
        mean.add(tensors, weight)
    return mean.result()


def assert_same_model(actual: Tensors, expected: Tensors, tolerance: float = 1e-6) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=tolerance, atol=tolerance)
