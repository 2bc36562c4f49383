"""One poisoned client among five in a region: the fog tier's robust rules contain it, the
mean does not.

The attacker (`poisoned_task.PoisonedSynthetic`, a user's task by import path) sends its
trained model × 100, or with its sign flipped. "Close" means the global model is nearer
the honest clients' mean than a typical honest client is to that mean; "far" means more
than ten times further. The synthetic task's training step does not depend on the model,
so the honest clients' mean is exactly the run of the four honest clients alone, and each
honest client's own path is the run of that client alone. In `fogfl sim` for every rule;
once with real processes, `fogfl up` over Mosquitto, with `clipped_mean` under two edge
rounds: its fog broker clips against the round's global model, which it must read, and then
against the region model it sent down.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fogfl.broker import mosquitto_binary
from fogfl.config import FogflConfig, load_config
from fogfl.run_dir import MODEL_FILE
from fogfl.sim.hierarchy import simulate
from fogfl.sim.workers import ClientPool
from fogfl.tasks import load_task
from fogfl.tasks.base import model_tensors
from fogfl.wire import Tensors, decode
from tests.reaper import run_reaped
from tests.sim.helpers import assert_same_model

HERE = Path(__file__).parent
CLIENTS = ["north-01", "north-02", "north-03", "north-04", "north-05"]
ATTACKER = "north-05"
HONEST = [client for client in CLIENTS if client != ATTACKER]


def settings(rule: str, attack: str, clients: list[str], edge_rounds: int = 1) -> dict[str, Any]:
    """The federation as a config file holds it: two rounds in one region of `clients`."""
    return {
        "federation": {
            "rounds": 2,
            "edge_rounds": edge_rounds,
            "regions": ["north"],
            "clients": {"north": clients},
            # What a fog broker waits for: fog.expected_updates does not follow `clients`.
            "clients_per_region": len(clients),
        },
        "training": {"learning_rate": 0.01},
        "fog": {"aggregation": rule},
        "task": {
            "name": "poisoned_task:PoisonedSynthetic",
            "options": {
                "megabytes": 0.002,
                "tensors": 2,
                "examples": 50,
                "poisoned_client": ATTACKER if ATTACKER in clients else "",
                "attack": attack,
            },
        },
        "python_path": [str(HERE)],
    }


def as_config(data: dict[str, Any]) -> FogflConfig:
    flat = {
        f"{section}.{key}": value
        for section, values in data.items()
        if isinstance(values, dict)
        for key, value in values.items()
    }
    return load_config(None, {**flat, "python_path": data["python_path"]}, environ={})


def flat(tensors: Tensors) -> np.ndarray:
    return np.concatenate([t.astype(np.float64).ravel() for t in tensors.values()])


@pytest.fixture(scope="module")
def pool() -> Iterator[ClientPool]:
    with ClientPool(0) as in_process:
        yield in_process


def honest_yardstick(pool: ClientPool, edge_rounds: int = 1) -> tuple[np.ndarray, float]:
    """The honest clients' mean after the run, and how far a typical honest client's own
    model is from it (root mean square)."""

    def final(clients: list[str]) -> np.ndarray:
        config = as_config(settings("mean", "scale", clients, edge_rounds))
        return flat(simulate(config, pool).final_tensors())

    mean = final(HONEST)
    alone = [final([client]) for client in HONEST]
    spread = math.sqrt(np.mean([np.sum(np.square(model - mean)) for model in alone]))
    return mean, spread


@pytest.fixture(scope="module")
def honest(pool: ClientPool) -> tuple[np.ndarray, float]:
    return honest_yardstick(pool)


def distance(model: Tensors, honest_mean: np.ndarray) -> float:
    return float(np.linalg.norm(flat(model) - honest_mean))


def test_the_yardstick_means_something(honest: tuple[np.ndarray, float]) -> None:
    mean, spread = honest
    config = as_config(settings("mean", "scale", HONEST))
    task = load_task(config.task.name, config.task.options, config.python_path)
    start = flat(model_tensors(task.build_model(config.federation.seed)))
    # The honest clients moved the model, and disagree about where to.
    assert np.linalg.norm(mean - start) > 0.1
    assert spread > 0.1


@pytest.mark.parametrize("attack", ["scale", "flip"])
@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "clipped_mean"])
def test_a_robust_rule_keeps_the_global_model_near_the_honest_mean(
    pool: ClientPool, honest: tuple[np.ndarray, float], rule: str, attack: str
) -> None:
    mean, spread = honest
    poisoned = simulate(as_config(settings(rule, attack, CLIENTS)), pool)
    assert distance(poisoned.final_tensors(), mean) < spread


@pytest.mark.parametrize("attack", ["scale", "flip"])
def test_the_mean_lets_one_poisoned_client_move_the_global_model_far(
    pool: ClientPool, honest: tuple[np.ndarray, float], attack: str
) -> None:
    mean, spread = honest
    poisoned = simulate(as_config(settings("mean", attack, CLIENTS)), pool)
    assert distance(poisoned.final_tensors(), mean) > 10 * spread


def test_clipping_under_edge_rounds_clips_against_each_region_model(pool: ClientPool) -> None:
    mean, spread = honest_yardstick(pool, edge_rounds=2)
    poisoned = simulate(as_config(settings("clipped_mean", "scale", CLIENTS, 2)), pool)
    assert distance(poisoned.final_tensors(), mean) < spread


def test_the_attack_is_what_poisons_not_the_fifth_client(
    pool: ClientPool, honest: tuple[np.ndarray, float]
) -> None:
    mean, spread = honest
    data = settings("mean", "scale", CLIENTS)
    data["task"]["options"]["poisoned_client"] = ""
    five_honest = simulate(as_config(data), pool)
    assert distance(five_honest.final_tensors(), mean) < spread


@pytest.mark.integration
def test_fogfl_up_with_clipped_mean_contains_the_poisoned_client(
    tmp_path: Path, pool: ClientPool
) -> None:
    # Two edge rounds: the fog broker clips against the global model, then its own region model.
    mean, spread = honest_yardstick(pool, edge_rounds=2)
    data = settings("clipped_mean", "scale", CLIENTS, edge_rounds=2)
    config_file = tmp_path / "poisoned.yaml"
    config_file.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    broker = "mosquitto" if mosquitto_binary() else "embedded"
    arguments = ["--config", str(config_file), "--broker", broker, "--run-dir", str(run_dir)]
    up = run_reaped([sys.executable, "-m", "fogfl", "up", *arguments], timeout=120)
    assert up.returncode == 0, up.output
    assert up.leftovers == []
    runtime = decode((run_dir / MODEL_FILE).read_bytes(), kinds={"global"}, max_bytes=10**8)
    # The same rule in the runtime as in the simulation, against the same start models.
    simulated = simulate(as_config(data), pool)
    assert_same_model(simulated.final_tensors(), runtime.tensors, tolerance=1e-6)
    assert distance(runtime.tensors, mean) < spread
    fog_log = (run_dir / "logs" / "fog-broker-north.log").read_text()
    assert "waiting for the model the clients started from" not in fog_log
