"""Example-weighted averaging, and why the hierarchy equals flat FedAvg."""

from __future__ import annotations

import numpy as np
import pytest

from fogfl.aggregation import MetricsMean, WeightedModelMean, mean_metrics
from fogfl.wire import ModelSchema


def random_models(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "w": rng.normal(size=(20, 7)).astype(np.float32),
            "b": rng.normal(size=7).astype(np.float32),
        }
        for _ in range(count)
    ]


def flat_fedavg(models: list[dict[str, np.ndarray]], weights: list[int]) -> dict[str, np.ndarray]:
    return {
        k: np.average(np.stack([m[k] for m in models]).astype(np.float64), axis=0, weights=weights)
        for k in models[0]
    }


def test_streaming_mean_equals_weighted_average() -> None:
    models, weights = random_models(5), [10, 200, 35, 1, 999]
    mean = WeightedModelMean(ModelSchema.of(models[0]))
    for m, w in zip(models, weights, strict=True):
        mean.add(m, w)
    result = mean.result()
    assert mean.total_weight == sum(weights)
    for name, expected in flat_fedavg(models, weights).items():
        assert result[name].dtype == np.float32
        np.testing.assert_allclose(result[name], expected, rtol=1e-6, atol=1e-7)


def test_two_tier_weighting_equals_flat_fedavg_with_uneven_regions() -> None:
    models, weights = random_models(5, seed=3), [1440, 960, 2000, 480, 1200]
    regions = {"north": [0, 1, 2], "south": [3, 4]}
    partials = []
    for members in regions.values():
        fog = WeightedModelMean(ModelSchema.of(models[0]))
        for i in members:
            fog.add(models[i], weights[i])
        partials.append((fog.result(), fog.total_weight))
    cloud = WeightedModelMean(ModelSchema.of(models[0]))
    for partial, total in partials:
        cloud.add(partial, total)
    flat = flat_fedavg(models, weights)
    for name, value in cloud.result().items():
        relative = np.linalg.norm(value - flat[name]) / np.linalg.norm(flat[name])
        assert relative <= 1e-6


def test_a_uniform_fog_mean_would_not_equal_flat_fedavg() -> None:
    # The seed's defect, kept as a guard: averaging regions uniformly is measurably wrong.
    models, weights = random_models(5, seed=3), [1440, 960, 2000, 480, 1200]
    north = np.mean([models[i]["w"] for i in (0, 1, 2)], axis=0)
    south = np.mean([models[i]["w"] for i in (3, 4)], axis=0)
    uniform = (north + south) / 2
    assert np.linalg.norm(uniform - flat_fedavg(models, weights)["w"]) > 1e-2


def test_integer_tensors_are_rounded_back() -> None:
    schema = ModelSchema.of({"steps": np.zeros(2, np.int64)})
    mean = WeightedModelMean(schema)
    mean.add({"steps": np.array([1, 10])}, 1)
    mean.add({"steps": np.array([2, 20])}, 2)
    result = mean.result()["steps"]
    assert result.dtype == np.int64 and result.tolist() == [2, 17]


def test_zero_weight_is_refused() -> None:
    mean = WeightedModelMean(ModelSchema.of(random_models(1)[0]))
    with pytest.raises(ValueError):
        mean.add(random_models(1)[0], 0)
    with pytest.raises(ValueError):
        mean.result()


def test_metrics_weight_training_by_examples_and_evaluation_by_test_examples() -> None:
    mean = MetricsMean()
    mean.add({"train_loss": 1.0, "eval_loss": 10.0, "eval_examples": 100}, num_examples=300)
    mean.add({"train_loss": 3.0, "eval_loss": 20.0, "eval_examples": 300}, num_examples=100)
    result = mean.result()
    assert result["train_loss"] == pytest.approx((300 * 1 + 100 * 3) / 400)
    assert result["eval_loss"] == pytest.approx((100 * 10 + 300 * 20) / 400)
    assert result["eval_examples"] == 400


def test_mean_metrics_ignores_non_numbers() -> None:
    result = mean_metrics(
        [(2, {"train_loss": 1.0, "region": "north"}), (2, {"train_loss": 2.0, "flag": True})]
    )
    assert result == {"train_loss": 1.5}
