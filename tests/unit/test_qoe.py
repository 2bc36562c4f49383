"""The qoe task: deterministic per-client data from the three base scenarios, and a model
that learns."""

from __future__ import annotations

import numpy as np
import pytest

from fogfl.config import TrainingSettings
from fogfl.errors import ConfigError
from fogfl.tasks import load_task
from fogfl.tasks.base import load_tensors, model_tensors
from fogfl.tasks.qoe import BASE_SCENARIOS, qoe_score


def test_partitions_are_deterministic_and_differ_between_clients() -> None:
    task = load_task("qoe")
    a1, a2, b = (
        task.load_partition("north-01", 42),
        task.load_partition("north-01", 42),
        task.load_partition("north-02", 42),
    )
    np.testing.assert_array_equal(a1.x_train, a2.x_train)
    assert not np.array_equal(a1.x_train, b.x_train)
    assert a1.num_train == 1440 and a1.num_test == 360  # 600 s × (1 + 2 replays), 80/20


def test_clients_cycle_through_the_three_base_scenarios() -> None:
    task = load_task("qoe")
    names = [task.load_partition(f"c{i:02d}", 42).description for i in range(1, 7)]
    bases = [s.name for s in BASE_SCENARIOS]
    assert [n.rsplit("_v", 1)[0] for n in names] == bases + bases


def test_scenarios_shape_the_data_as_expected() -> None:
    task = load_task("qoe")
    home, rural = task.load_partition("c01", 42), task.load_partition("c02", 42)
    assert home.x_train[:, 0].mean() > rural.x_train[:, 0].mean()  # throughput
    assert home.y_train.mean() > rural.y_train.mean()  # QoE
    assert home.y_train.min() >= 0 and home.y_train.max() <= 1


def test_qoe_score_penalises_each_impairment() -> None:
    good = qoe_score(4000, np.array([8000.0]), np.array([10.0]), np.array([0.0]), np.array([0.0]))
    assert (
        qoe_score(4000, np.array([2000.0]), np.array([10.0]), np.array([0.0]), np.array([0.0]))
        < good
    )
    assert (
        qoe_score(4000, np.array([8000.0]), np.array([200.0]), np.array([0.0]), np.array([0.0]))
        < good
    )
    assert (
        qoe_score(4000, np.array([8000.0]), np.array([10.0]), np.array([0.0]), np.array([1.0]))
        < good
    )


def test_model_is_the_64_32_1_mlp_and_identical_for_a_seed() -> None:
    task = load_task("qoe")
    shapes = {k: v.shape for k, v in model_tensors(task.build_model(1)).items()}
    assert shapes == {
        "net.0.weight": (64, 6),
        "net.0.bias": (64,),
        "net.2.weight": (32, 64),
        "net.2.bias": (32,),
        "net.4.weight": (1, 32),
        "net.4.bias": (1,),
    }
    first, again = model_tensors(task.build_model(1)), model_tensors(task.build_model(1))
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_training_lowers_the_evaluation_loss() -> None:
    task = load_task("qoe")
    data = task.load_partition("c03", 42)
    model = task.build_model(0)
    before = task.evaluate(model, data)
    metrics = task.train(model, data, TrainingSettings(local_epochs=3), seed=1)
    after = task.evaluate(model, data)
    assert metrics["train_loss"] < before["eval_loss"]
    assert after["eval_loss"] < 0.5 * before["eval_loss"]
    assert after["eval_examples"] == data.num_test
    assert after["eval_mse"] == pytest.approx(after["eval_loss"])


def test_loading_tensors_round_trips() -> None:
    task = load_task("qoe")
    source, target = task.build_model(1), task.build_model(2)
    load_tensors(target, model_tensors(source))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(model_tensors(source).values(), model_tensors(target).values(), strict=True)
    )


def test_unknown_task_and_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(ConfigError, match=r"task\.options\.duration_s"):
        load_task("qoe", {"duration_s": -5})
    with pytest.raises(ConfigError, match=r"task\.options\.colour"):
        load_task("qoe", {"colour": "red"})


def test_scenarios_are_configurable() -> None:
    satellite = {
        "name": "satellite",
        "throughput_kbps": 20000.0,
        "throughput_std": 100.0,
        "bitrate_kbps": 3000.0,
        "latency_ms": 600.0,
        "latency_std": 5.0,
        "loss_rate": 0.01,
        "loss_std": 0.001,
        "initial_buffer_s": 20.0,
    }
    task = load_task("qoe", {"scenarios": [satellite], "variation": 0.0, "duration_s": 60})
    data = task.load_partition("c07", 42)
    assert data.description == "satellite_v7"
    assert data.x_train[:, 2].mean() == pytest.approx(6.0, rel=0.05)  # latency / 100
    with pytest.raises(ConfigError, match="'moon' is not one of"):
        load_task("qoe", {"scenario": "moon"})
    with pytest.raises(ConfigError, match=r"task\.options\.scenarios\.0\.throughput_kbps"):
        load_task("qoe", {"scenarios": [{**satellite, "throughput_kbps": -1}]})
