"""Worker processes change how fast a simulation runs, never what it computes."""

from __future__ import annotations

from fogfl.sim.hierarchy import simulate
from fogfl.sim.workers import ClientPool
from tests.sim.helpers import assert_same_model, small_config


def test_two_workers_give_the_same_run_as_none() -> None:
    config = small_config(
        **{
            "federation.rounds": 2,
            "federation.clients_per_region": 3,
            "federation.participation": {"schedule": "linear", "end_fraction": 0.5},
        }
    )
    with ClientPool(0) as inline:
        alone = simulate(config, inline)
    with ClientPool(2) as workers:
        shared = simulate(config, workers)
    assert_same_model(shared.final_tensors(), alone.final_tensors(), tolerance=0)
    ignore = {"round_seconds": None}
    assert [vars(r) | ignore for r in shared.records] == [vars(r) | ignore for r in alone.records]
    assert shared.clients == alone.clients
    assert shared.update_drift == alone.update_drift


def test_results_come_back_in_job_order_whichever_worker_runs_them() -> None:
    with ClientPool(2) as workers:
        assert list(workers.run(abs, [-5, 4, -3, 2, -1] * 5, owners=[0, 0, 1, 0, 1] * 5)) == (
            [5, 4, 3, 2, 1] * 5
        )
