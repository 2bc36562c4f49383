"""Participation schedules: how many clients per round, and which, deterministically."""

from __future__ import annotations

import itertools

import pytest

from fogfl.schedules import SCHEDULES, participant_count, progress_curve, select_participants

POPULATION = {
    "north": [f"north-{i:02d}" for i in range(1, 31)],
    "south": [f"south-{i:02d}" for i in range(31, 41)],
}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_runs_from_start_to_end_without_going_back(schedule: str) -> None:
    counts = [participant_count(schedule, r, 20, 40, 1.0, 0.25) for r in range(1, 21)]  # type: ignore[arg-type]
    assert counts[0] == 40
    assert counts[-1] == (40 if schedule == "constant" else 10)
    assert all(a >= b for a, b in itertools.pairwise(counts))


def test_schedules_differ_in_between() -> None:
    middle = {s: progress_curve(s, 0.25, 1.0, 0.1) for s in SCHEDULES}  # type: ignore[arg-type]
    assert middle["constant"] == 1.0
    assert middle["linear"] == pytest.approx(0.775)
    assert middle["exponential"] == pytest.approx(0.1**0.25)
    assert middle["reciprocal"] < middle["exponential"] < middle["linear"] < middle["sigmoid"]


def test_expected_counts_for_a_linear_schedule() -> None:
    counts = [participant_count("linear", r, 5, 10, 1.0, 0.2) for r in range(1, 6)]
    assert counts == [10, 8, 6, 4, 2]


def test_selection_is_deterministic_proportional_and_covers_every_region() -> None:
    first = select_participants(POPULATION, 8, seed=7, server_round=3)
    assert first == select_participants(POPULATION, 8, seed=7, server_round=3)
    assert first != select_participants(POPULATION, 8, seed=7, server_round=4)
    assert {r: len(ids) for r, ids in first.items()} == {"north": 6, "south": 2}
    assert all(set(ids) <= set(POPULATION[r]) for r, ids in first.items())
    tiny = select_participants(POPULATION, 1, seed=7, server_round=1)
    assert {r: len(ids) for r, ids in tiny.items()} == {"north": 1, "south": 1}
    everyone = select_participants(POPULATION, 40, seed=7, server_round=1)
    assert everyone == {r: sorted(ids) for r, ids in POPULATION.items()}


def test_counts_never_exceed_the_population_or_fall_below_the_minimum() -> None:
    assert participant_count("linear", 5, 5, 10, 1.0, 0.01, minimum=2) == 2
    assert sum(len(v) for v in select_participants(POPULATION, 500, 1, 1).values()) == 40
