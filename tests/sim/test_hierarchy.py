"""The simulated hierarchy computes what the runtime's roles compute: flat FedAvg under full
participation, HierFAVG under edge rounds, FedProx's pull towards the global model, the
configured cloud strategy, the participants a schedule picks."""

from __future__ import annotations

import numpy as np
import pytest

from fogfl.config import FogflConfig
from fogfl.schedules import SCHEDULES, participant_count
from fogfl.sim.hierarchy import simulate
from fogfl.sim.workers import ClientPool
from fogfl.wire import Tensors
from tests.sim.helpers import (
    assert_same_model,
    initial_model,
    small_config,
    synthetic_config,
    train_client,
    weighted_mean,
)


def flat_fedavg_round(config: FogflConfig, start: Tensors) -> Tensors:
    """One round of FedAvg over every client, no hierarchy: Σ nᵢ·wᵢ / Σ nᵢ."""
    clients = [c for ids in config.federation.client_ids().values() for c in ids]
    return weighted_mean([train_client(config, c, start, server_round=1) for c in clients])


def hierfavg_round(config: FogflConfig, start: Tensors, uniform: bool = False) -> Tensors:
    """One cloud round of HierFAVG by hand: κ example-weighted means per region, each edge
    round training from the last one's region mean, then the regions weighted by examples
    (or each client counted once, under uniform weighting)."""
    partials = []
    for ids in config.federation.client_ids().values():
        region_model = start
        for edge_round in range(1, config.federation.edge_rounds + 1):
            updates = [train_client(config, c, region_model, 1, edge_round) for c in ids]
            if uniform:
                updates = [(tensors, 1) for tensors, _ in updates]
            region_model = weighted_mean(updates)
        partials.append((region_model, sum(weight for _, weight in updates)))
    return weighted_mean(partials)


def test_one_round_with_mu_zero_is_flat_fedavg_over_all_clients(pool: ClientPool) -> None:
    config = small_config()
    run = simulate(config, pool)
    assert_same_model(run.final_tensors(), flat_fedavg_round(config, initial_model(config)))


@pytest.mark.parametrize("edge_rounds", [1, 2])
def test_edge_rounds_compute_hierfavg(pool: ClientPool, edge_rounds: int) -> None:
    config = small_config(**{"federation.edge_rounds": edge_rounds})
    run = simulate(config, pool)
    assert_same_model(run.final_tensors(), hierfavg_round(config, initial_model(config)))


def test_one_edge_round_is_the_plain_hierarchy(pool: ClientPool) -> None:
    plain = simulate(small_config(**{"federation.rounds": 2}), pool)
    kappa_1 = simulate(small_config(**{"federation.rounds": 2, "federation.edge_rounds": 1}), pool)
    assert_same_model(plain.final_tensors(), kappa_1.final_tensors(), tolerance=0)
    assert [vars(r) | {"round_seconds": 0} for r in plain.records] == [
        vars(r) | {"round_seconds": 0} for r in kappa_1.records
    ]


@pytest.mark.parametrize("edge_rounds", [1, 3])
def test_the_cloud_gets_one_partial_per_region_per_round_whatever_kappa(
    pool: ClientPool, edge_rounds: int
) -> None:
    config = synthetic_config(**{"federation.rounds": 3, "federation.edge_rounds": edge_rounds})
    run = simulate(config, pool)
    assert run.partials == [2, 2, 2]
    assert run.client_updates == [4 * edge_rounds] * 3
    assert all(record.regions == 2 and record.clients == 4 for record in run.records[1:])


def test_edge_rounds_cost_edge_bytes_not_cloud_bytes(pool: ClientPool) -> None:
    one, three = (
        simulate(synthetic_config(**{"federation.edge_rounds": k}), pool).records[1] for k in (1, 3)
    )
    assert one.bytes_cloud and three.bytes_cloud and one.bytes_edge and three.bytes_edge
    assert abs(three.bytes_cloud - one.bytes_cloud) < 0.01 * one.bytes_cloud
    # κ = 3: three updates per client and two region models down to each, not one update.
    assert three.bytes_edge > 2.5 * one.bytes_edge


def test_fedprox_keeps_local_models_closer_to_the_global_one(pool: ClientPool) -> None:
    settings = {"training.local_epochs": 2, "training.learning_rate": 0.005}
    fedavg = simulate(small_config(**settings), pool)
    fedprox = simulate(
        small_config(**settings, **{"training.proximal_mu": 1.0, "server.strategy": "fedprox"}),
        pool,
    )
    assert fedprox.update_drift[0] < 0.8 * fedavg.update_drift[0]
    assert not np.allclose(
        fedprox.final_tensors()["net.0.weight"], fedavg.final_tensors()["net.0.weight"]
    )


def test_uniform_weighting_counts_each_client_once(pool: ClientPool) -> None:
    config = synthetic_config(**{"federation.weighting": "uniform"})
    by_examples = simulate(synthetic_config(), pool).final_tensors()
    uniform = simulate(config, pool).final_tensors()
    assert_same_model(uniform, hierfavg_round(config, initial_model(config), uniform=True))
    assert not np.allclose(uniform["layers.0"], by_examples["layers.0"])


def test_the_cloud_runs_the_configured_flower_strategy(pool: ClientPool) -> None:
    # Three regions of three clients, each client with its own number of examples: each
    # region's partial is its example-weighted mean, and the cloud's FedMedian takes the
    # coordinate-wise median of the three partials, which no weighted mean gives.
    config = synthetic_config(
        **{
            "federation.regions": ["north", "south", "east"],
            "federation.clients_per_region": 3,
            "server.strategy": "fedmedian",
        }
    )
    start = initial_model(config)
    regions = config.federation.client_ids().values()
    updates = [[train_client(config, c, start, server_round=1) for c in ids] for ids in regions]
    assert all(len({n for _, n in region}) > 1 for region in updates), "sizes should differ"
    partials = [(weighted_mean(region), sum(n for _, n in region)) for region in updates]
    median = {name: np.median([p[name] for p, _ in partials], axis=0) for name in start}
    fedavg = weighted_mean(partials)
    global_model = simulate(config, pool).final_tensors()
    assert_same_model(global_model, median)
    for name in start:
        assert np.abs(global_model[name] - fedavg[name]).max() > 1e-4, f"{name} is FedAvg's"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_participants_follow_the_schedule_and_the_seed(pool: ClientPool, schedule: str) -> None:
    config = synthetic_config(
        **{
            "federation.rounds": 5,
            "federation.clients_per_region": 5,
            "federation.participation": {
                "schedule": schedule,
                "start_fraction": 1.0,
                "end_fraction": 0.2,
            },
        }
    )
    first, again = simulate(config, pool), simulate(config, pool)
    expected = [
        participant_count(schedule, r, 5, 10, 1.0, 0.2, minimum=2)  # type: ignore[arg-type]
        for r in range(1, 6)
    ]
    assert [record.clients for record in first.records[1:]] == expected
    assert first.client_updates == expected
    assert_same_model(first.final_tensors(), again.final_tensors(), tolerance=0)
    # Every client evaluates the final model, picked in the last round or not.
    assert len(first.clients) == 10


def test_evaluating_everyone_changes_nothing_under_full_participation(pool: ClientPool) -> None:
    config = small_config(**{"federation.rounds": 2})
    usual = simulate(config, pool)
    everyone = simulate(config, pool, evaluate_all=True)
    for a, b in zip(usual.records, everyone.records, strict=True):
        assert a.eval_loss == pytest.approx(b.eval_loss, rel=1e-9)
        assert a.eval_mae == pytest.approx(b.eval_mae, rel=1e-9)
