"""`wire.update_codec: adaptive` in `fogfl sim`: each client picks its codec after training
from the uploads its simulated link has carried and the time left before the fog deadline,
and the rows carry its choices as the runtime's metrics.csv does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fogfl.bandwidth.agent import DDQNSettings, train_agent
from fogfl.bandwidth.controllers import Upload
from fogfl.bandwidth.environment import EnvironmentSettings, LinkTrace
from fogfl.bandwidth.ladder import LADDER
from fogfl.config import RoundPlan, WireSettings
from fogfl.links.model import fixed_link
from fogfl.run_dir import COLUMNS
from fogfl.sim import workers
from fogfl.sim.hierarchy import SimulatedRun, simulate
from fogfl.sim.workers import ClientPool, UploadClock
from tests.sim.helpers import small_config

# A 50 kB model (float32: ~52 kB on the wire) over 1 Mbit/s each way: the global model's
# download takes 0.42 s, so a 0.7 s deadline leaves ~0.28 s for the upload: float16
# (~27 kB, 0.22 s) fits, float32 (0.41 s) does not.
LINK = {"default": {"rate_mbit": 1}}
DEADLINE_S = 0.7
LABELS = {step.label for step in LADDER}


def adaptive_run(pool: ClientPool, controller: str, **overrides: Any) -> SimulatedRun:
    settings: dict[str, Any] = {
        "task.name": "synthetic",
        "task.options": {"megabytes": 0.05, "examples": 200},
        "federation.rounds": 3,
        "federation.regions": ["north"],
        "links": LINK,
        "fog.deadline_s": DEADLINE_S,
        "wire.update_codec": "adaptive",
        "wire.controller": controller,
    }
    settings.update(overrides)
    return simulate(small_config(**settings), pool)


def codecs(run: SimulatedRun) -> list[str | None]:
    return [record.codecs for record in run.records[1:]]


def test_the_budget_and_the_oracles_future_come_from_the_simulated_clock() -> None:
    link = fixed_link("a", uplink_mbit=1, downlink_mbit=4)
    clock = UploadClock(WireSettings(), 3.0, (), opened_s=10.0, download_s=0.5, link=link)
    plan = RoundPlan(update_codec="adaptive")
    assert clock.budget_s(plan, train_s=0.2) == pytest.approx(2.3)
    planned = RoundPlan(update_codec="adaptive", upload_deadline_s=1.0)
    assert clock.budget_s(planned, train_s=0.2) == pytest.approx(0.3)
    future = clock.link_future(train_s=0.2)
    assert future is not None
    assert future()(125_000) == pytest.approx(link.transfer_time(125_000, 10.7, "uplink"))
    assert UploadClock(WireSettings(), 3.0, (), 0.0, 0.0).link_future(0.2) is None


def test_robust_rule_measures_with_the_smallest_codec_then_sends_what_fits(
    pool: ClientPool,
) -> None:
    run = adaptive_run(pool, "robust-rule")
    # Round 1 has no measurement yet: the smallest codec. Then the largest that fits.
    assert codecs(run) == ["topk_0.05:2", "float16:2", "float16:2"]
    assert all(record.stragglers == 0 for record in run.records[1:])
    assert run.records[1].predicted_upload_s_median is None  # nothing to predict from
    for record in run.records[2:]:
        assert record.predicted_upload_s_median == pytest.approx(0.2, rel=0.1)
        # The controllers count the codec's nominal bytes, not the envelope's.
        assert record.upload_prediction_error is not None
        assert record.upload_prediction_error < 0.1
        assert record.upload_s_max is not None and record.upload_s_max < 0.28
    # float32 on the same links misses every deadline: the fog broker closes with the first
    # update after it (fog.min_updates 1) and leaves the other out.
    fixed = adaptive_run(pool, "robust-rule", **{"wire.update_codec": "float32"})
    assert [record.stragglers for record in fixed.records[1:]] == [1, 1, 1]
    assert fixed.sim_seconds[0] > DEADLINE_S
    assert codecs(fixed) == [None, None, None]
    # The error feedback follows each client through its codec changes.
    assert all(f.norm > 0 for f in workers._FEEDBACK[run.run_id].values())


def test_the_oracle_never_misses_on_a_fixed_link(pool: ClientPool) -> None:
    run = adaptive_run(pool, "oracle", **{"federation.clients_per_region": 3})
    # It knows the link from round 1: no measuring round.
    assert codecs(run) == ["float16:3"] * 3
    assert all(record.stragglers == 0 for record in run.records[1:])
    # A tighter upload deadline than the fog's: the oracle sends less.
    tight = adaptive_run(pool, "oracle", **{"wire.upload_deadline_s": 0.55})
    assert codecs(tight) == ["int8:2"] * 3
    assert all(record.stragglers == 0 for record in tight.records[1:])


def test_the_rows_carry_the_codec_columns(pool: ClientPool) -> None:
    assert {"codecs", "predicted_upload_s_median", "upload_prediction_error"} <= set(COLUMNS)
    run = adaptive_run(pool, "rule", **{"federation.rounds": 2})
    row = run.records[2]
    assert row.codecs is not None
    for part in row.codecs.split():
        label, count = part.split(":")
        assert label in LABELS and int(count) > 0
    assert row.predicted_upload_s_median is not None and row.upload_prediction_error is not None


def test_a_tiny_ddqn_agent_picks_the_codecs_end_to_end(
    pool: ClientPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trace = LinkTrace("t", np.arange(60.0), 1.0 + np.abs(np.sin(np.arange(60.0) / 7)))
    agent, _ = train_agent(
        [trace],
        EnvironmentSettings(model_bytes=50_000, deadline_s=0.3, rounds=8),
        DDQNSettings(episodes=6, batch_size=16, seed=1),
    )
    agent.save(tmp_path, {})
    with caplog.at_level(logging.WARNING):
        run = adaptive_run(pool, "ddqn", **{"wire.agent": str(tmp_path)})
    assert not [r for r in caplog.records if "using robust-rule" in r.getMessage()]
    for record in run.records[1:]:
        assert record.codecs is not None
        chosen = sum(int(part.split(":")[1]) for part in record.codecs.split())
        assert chosen + record.stragglers == 2
    # Each client has its own controller (and agent), in the worker that owns it.
    assert sorted(workers._ADAPTIVE[run.run_id]) == ["north-01", "north-02"]


def test_a_client_that_cannot_run_the_controller_says_so_once(
    pool: ClientPool, caplog: pytest.LogCaptureFixture
) -> None:
    # north-02's link is not emulated: no future for the oracle to read.
    links = {"clients": {"north-01": {"rate_mbit": 1}}}
    with caplog.at_level(logging.WARNING):
        run = adaptive_run(pool, "oracle", links=links)
    warnings = [r.getMessage() for r in caplog.records if "using robust-rule" in r.getMessage()]
    assert len(warnings) == 1 and "north-02" in warnings[0]
    assert all(record.codecs is not None for record in run.records[1:])


def test_uploads_feed_the_next_choice(pool: ClientPool) -> None:
    run = adaptive_run(pool, "robust-rule", **{"federation.rounds": 2})
    kept = workers._ADAPTIVE[run.run_id]["north-01"].history
    # Round 2 decided from round 1's upload, as the coordinator's clock measured it.
    assert len(kept) == 1 and isinstance(kept[0], Upload)
    assert kept[0].seconds == pytest.approx(kept[0].bytes * 8 / 1e6, rel=0.01)
