"""The link model's arithmetic: how long N bytes take, with rates that change, stalls,
resets and latency; scenario links varied per client like the QoE task's data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fogfl.errors import LinkError
from fogfl.links.model import (
    Direction,
    LinkModel,
    Outage,
    RateSchedule,
    fixed_link,
    scenario_link,
)
from fogfl.links.scenarios import BASE_SCENARIOS
from fogfl.links.settings import LinkSettings

MB = 1_000_000


def test_a_fixed_link_takes_bytes_times_8_over_the_rate_plus_the_latency() -> None:
    link = fixed_link("c", uplink_mbit=4, downlink_mbit=40, latency_ms=25)
    assert link.transfer_time(MB) == pytest.approx(MB * 8 / 4e6 + 0.025)
    assert link.transfer_time(MB, direction="downlink") == pytest.approx(MB * 8 / 40e6 + 0.025)
    # Later starts take as long on a constant link.
    assert link.transfer_time(MB, start_s=123.4) == pytest.approx(2.025)


def test_a_rate_that_changes_is_integrated_over_time() -> None:
    # 1 MB/s for 2 s, then 0.5 MB/s for 2 s, looping every 4 s.
    schedule = RateSchedule((0.0, 2.0), (1e6, 0.5e6), period_s=4.0)
    link = LinkModel("c", Direction(schedule), Direction(schedule))
    assert link.transfer_time(2 * MB) == pytest.approx(2.0)
    assert link.transfer_time(3 * MB) == pytest.approx(4.0)
    # From 1 s: 1 MB by 2 s, 1 MB more by 4 s, then 2 MB at 1 MB/s: done at 6 s.
    assert link.transfer_time(4 * MB, start_s=1.0) == pytest.approx(5.0)
    assert link.transfer_time(0.5 * MB, start_s=2.0) == pytest.approx(1.0)
    assert schedule.mean_bytes_per_s == pytest.approx(0.75e6)


def test_an_offset_starts_the_schedule_in_its_middle() -> None:
    schedule = RateSchedule((0.0, 2.0), (1e6, 0.5e6), period_s=4.0, offset_s=2.0)
    assert schedule.rate_at(0.0) == 0.5e6
    assert schedule.rate_at(2.5) == 1e6
    assert schedule.segment(0.5) == (0.5e6, 2.0)


def test_a_stall_adds_its_duration_and_a_transfer_inside_it_waits() -> None:
    stall = Outage(start_s=1.0, duration_s=3.0, kind="stall")
    link = fixed_link("c", 8, 8, outages=[stall])  # 1 MB/s
    assert link.transfer_time(2 * MB) == pytest.approx(5.0)
    assert link.transfer_time(MB, start_s=2.0) == pytest.approx(2.0 + 1.0)
    assert link.transfer_time(MB, start_s=5.0) == pytest.approx(1.0)
    assert link.outage_at(2.0) is not None and link.outage_at(4.0) is None


def test_a_reset_during_a_transfer_sends_it_again_whole_after_the_reset() -> None:
    reset = Outage(start_s=1.5, duration_s=0.5, kind="reset")
    link = fixed_link("c", 8, 8, latency_ms=10, outages=[reset])
    # 1.5 s of progress is lost; the whole 2 MB start again at 2.0 s.
    assert link.transfer_time(2 * MB) == pytest.approx(2.0 + 2.0 + 0.01)
    # Done before the reset: untouched.
    assert link.transfer_time(MB) == pytest.approx(1.01)


def test_periodic_outages_repeat_and_must_end() -> None:
    outage = Outage(start_s=1.0, duration_s=1.0, kind="stall", every_s=3.0)
    assert outage.covering(1.5) == (1.0, 2.0)
    assert outage.covering(7.2) == (7.0, 8.0)
    assert outage.covering(2.5) is None
    assert outage.next_start(1.5) == 4.0
    link = fixed_link("c", 8, 8, outages=[outage])
    # 1 MB/s for 2 s out of every 3 s after the first second.
    assert link.transfer_time(5 * MB) == pytest.approx(7.0)
    with pytest.raises(LinkError, match="never ends"):
        Outage(start_s=0.0, duration_s=3.0, every_s=3.0)


def test_resets_that_always_interrupt_a_transfer_are_an_error_not_a_hang() -> None:
    link = fixed_link("c", 8, 8, outages=[Outage(0.5, 0.1, "reset", every_s=1.0)])
    with pytest.raises(LinkError, match="never arrive"):
        link.transfer_time(2 * MB)


def test_schedules_that_never_move_bytes_are_refused() -> None:
    with pytest.raises(LinkError):
        RateSchedule((0.0, 1.0), (0.0, 0.0), period_s=2.0)
    with pytest.raises(LinkError):
        RateSchedule((0.0,), (0.0,))
    with pytest.raises(LinkError):
        RateSchedule((0.0, 2.0, 1.0), (1.0, 1.0, 1.0))


def _volume(schedule: RateSchedule, start: float, end: float) -> float:
    """Bytes a looping schedule moves between two times, summed segment by segment."""
    assert schedule.period_s is not None
    bounds = (*schedule.starts[1:], schedule.period_s)
    total, lap = 0.0, math.floor(start / schedule.period_s) * schedule.period_s
    while lap < end:
        for seg_start, seg_end, rate in zip(schedule.starts, bounds, schedule.rates, strict=True):
            overlap = min(end, lap + seg_end) - max(start, lap + seg_start)
            total += rate * max(0.0, overlap)
        lap += schedule.period_s
    return total


def test_serialization_and_volume_agree_at_every_rate_change() -> None:
    rng = np.random.default_rng(3)
    starts = (0.0, *(float(t) for t in np.cumsum(rng.uniform(0.1, 1.0, 49))))
    rates = tuple(float(r) for r in rng.uniform(0, 2e6, 50))
    schedule = RateSchedule(starts, rates, period_s=starts[-1] + 0.5)
    link = LinkModel("c", Direction(schedule), Direction(schedule))
    for start in (0.0, 3.3, 17.0):
        for nbytes in (1.0, 10_000.0, 3e6, 40e6):
            end = link.serialized_by("uplink", nbytes, start)
            assert _volume(schedule, start, end) == pytest.approx(nbytes, rel=1e-9)
            assert _volume(schedule, start, end * 0.999) < nbytes


def test_scenario_links_follow_the_scenario_and_stall_more_where_loss_is_higher() -> None:
    home, rural, _ = BASE_SCENARIOS
    stalled = {}
    for scenario in (home, rural):
        link = scenario_link("c", scenario, np.random.default_rng(1))
        rate = link.uplink.rate
        assert rate.period_s == 600.0
        assert link.uplink.latency_s == pytest.approx(scenario.latency_ms / 2000)
        zero = [
            end - start
            for start, end, r in zip(
                rate.starts, (*rate.starts[1:], 600.0), rate.rates, strict=True
            )
            if r == 0
        ]
        stalled[scenario.name] = sum(zero)
        moving = rate.mean_bytes_per_s * 600 / (600 - sum(zero))
        assert moving / 1000 * 8 == pytest.approx(scenario.throughput_kbps, rel=0.05)
    assert 0 < stalled["home_stable"] < stalled["rural_unstable"]


def test_a_scenario_link_is_the_link_the_qoe_task_drew_for_that_client() -> None:
    qoe = pytest.importorskip("fogfl.tasks.qoe")
    from fogfl.identity import client_ordinal, client_seed

    for client_id in ("north-01", "south-05"):
        rng = np.random.default_rng([42, client_seed(client_id)])
        scenario = qoe.client_scenario(client_ordinal(client_id), rng)
        trace = qoe.simulate_trace(scenario, 600, rng)
        link = LinkSettings(scenario=scenario.name.rsplit("_v", 1)[0]).build(client_id, 42)
        # Per second (outside stalls) the link's rate is the QoE trace's throughput.
        for second in (0, 17, 599):
            rate = link.uplink.rate.rate_at(second + 1e-9)
            if rate > 0:
                assert rate * 8 / 1000 == pytest.approx(trace["throughput_kbps"][second])


def test_scenario_links_differ_per_client_and_repeat_per_seed() -> None:
    settings = LinkSettings(scenario="vehicular_variable")
    a, b = settings.build("north-01", 42), settings.build("south-01", 42)
    assert a.uplink.rate.rates != b.uplink.rate.rates
    assert settings.build("north-01", 42) == a
    assert settings.build("north-01", 7) != a
