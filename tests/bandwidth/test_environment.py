"""Upload times over a replayed trace and the reward arithmetic stated in docs/bandwidth.md."""

from __future__ import annotations

import numpy as np
import pytest

from fogfl.bandwidth.environment import (
    EnvironmentSettings,
    LinkTrace,
    UploadEnvironment,
    reward,
)
from fogfl.bandwidth.ladder import step_named
from fogfl.errors import BandwidthError

# 8 Mbit/s for 2 s, then 0 for 1 s, then 4 Mbit/s for 1 s (the median interval): 4 s a loop.
TRACE = LinkTrace("t", np.array([0.0, 1.0, 2.0, 3.0]), np.array([8.0, 8.0, 0.0, 4.0]))


def test_upload_seconds_by_hand() -> None:
    assert TRACE.duration_s == 4.0 and TRACE.per_loop_mbit == 20.0
    assert TRACE.upload_seconds(0.0, 1_000_000) == pytest.approx(1.0)  # 8 Mbit at 8 Mbit/s
    # 2 MB = 16 Mbit: 2 s at 8, nothing for 1 s, then 0 Mbit more needed: done at 2 s.
    assert TRACE.upload_seconds(0.0, 2_000_000) == pytest.approx(2.0)
    # 2.5 MB = 20 Mbit: 16 by 2 s, the outage, 4 Mbit at 4 Mbit/s: 4 s.
    assert TRACE.upload_seconds(0.0, 2_500_000) == pytest.approx(4.0)
    # From 1.5 s: 4 Mbit by 2 s, outage to 3 s, 4 Mbit by 4 s, then the loop: 8 more at 8.
    assert TRACE.upload_seconds(1.5, 2_000_000) == pytest.approx(3.5)
    # Starting inside the outage and a whole loop later gives the same time.
    assert TRACE.upload_seconds(2.5, 500_000) == TRACE.upload_seconds(6.5, 500_000)
    assert TRACE.upload_seconds(2.5, 500_000) == pytest.approx(1.5)
    assert TRACE.mean_mbit_s(0.0, 4.0) == pytest.approx(5.0)


def test_a_trace_that_carries_nothing_is_refused() -> None:
    with pytest.raises(BandwidthError, match="carries nothing"):
        LinkTrace("dead", np.array([0.0, 1.0]), np.array([0.0, 0.0]))


def test_reward_is_fidelity_on_time_and_minus_the_penalty_late() -> None:
    assert reward(0.9, 10.0, 10.0, 1.0) == 0.9
    assert reward(0.9, 10.01, 10.0, 1.0) == -1.0
    assert reward(1.0, 20.0, 10.0, 0.0) == 0.0


def test_rounds_replay_the_trace_and_record_what_the_client_measures() -> None:
    settings = EnvironmentSettings(
        model_bytes=4_000_000, deadline_s=1.9, round_interval_s=2.0, rounds=2, miss_penalty=2.0
    )
    env = UploadEnvironment(TRACE, settings)
    first = env.step(step_named("float16"))  # 2 MB from 0 s: 2 s > 1.9 s deadline
    assert first.missed and first.reward == -2.0
    assert first.upload.bytes == 2_000_000 and first.upload.seconds == pytest.approx(2.0)
    # 0.4 MB (and 24 bytes: k is rounded up) from 2 s: outage, then 3.2/4 s.
    second = env.step(step_named("topk_0.05"))
    assert second.start_s == 2.0 and second.upload.seconds == pytest.approx(1.8, rel=1e-4)
    assert not second.missed
    assert second.reward == pytest.approx(step_named("topk_0.05").fidelity)
    assert env.done and [u.bytes for u in env.history] == [2_000_000, 400_024]


def test_settings_are_validated() -> None:
    with pytest.raises(BandwidthError):
        EnvironmentSettings(deadline_s=0)
    with pytest.raises(BandwidthError, match="incomplete"):
        EnvironmentSettings.from_json({"model_bytes": 1}, "agent.json")
