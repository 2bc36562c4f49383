"""Participation schedules: how many clients take part in each round, and which ones.

A schedule moves the participating fraction from `start` to `end` over the run — the
communication-reduction study of the digital-twin seed. The server picks the participants
deterministically from the run seed and announces them with the round, so the runtime and
the simulation pick the same clients. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np

from fogfl.config import FederationSettings

Schedule = Literal["constant", "exponential", "linear", "sigmoid", "reciprocal"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
_SIGMOID_STEEPNESS = 10.0
_RECIPROCAL_CURVATURE = 9.0


def progress_curve(schedule: Schedule, progress: float, start: float, end: float) -> float:
    """The participating fraction at `progress` ∈ [0, 1] of the run.

    Every schedule starts at `start` and ends at `end`; they differ in between:
    linear moves evenly, exponential geometrically, sigmoid slowly-fast-slowly, reciprocal
    fast at first and then slowly (1/(1 + c·t) shaped), constant stays at `start`.
    """
    t = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return start
    if schedule == "linear":
        return start + (end - start) * t
    if schedule == "exponential":
        return start * (end / start) ** t
    if schedule == "sigmoid":
        k = _SIGMOID_STEEPNESS
        low, high = _logistic(-k / 2), _logistic(k / 2)
        return start + (end - start) * (_logistic(k * (t - 0.5)) - low) / (high - low)
    if schedule == "reciprocal":
        c = _RECIPROCAL_CURVATURE
        return start + (end - start) * (1 + c) * t / (1 + c * t)
    raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")


def participant_count(
    schedule: Schedule,
    server_round: int,
    rounds: int,
    total: int,
    start: float,
    end: float,
    minimum: int = 1,
) -> int:
    """How many of `total` clients take part in `server_round` (1-based) of `rounds`."""
    progress = 0.0 if rounds <= 1 else (server_round - 1) / (rounds - 1)
    fraction = progress_curve(schedule, progress, start, end)
    return min(total, max(minimum, math.ceil(fraction * total - 1e-9)))


def select_participants(
    clients_by_region: Mapping[str, Sequence[str]], count: int, seed: int, server_round: int
) -> dict[str, list[str]]:
    """`count` clients, spread over the regions in proportion to their size (at least one
    each, so that every region reports), chosen at random but deterministically from the seed
    and the round."""
    regions = [r for r in clients_by_region if clients_by_region[r]]
    total = sum(len(clients_by_region[r]) for r in regions)
    count = min(max(count, len(regions)), total)
    rng = np.random.default_rng([seed, server_round, 0x5EED])
    shares = {r: count * len(clients_by_region[r]) / total for r in regions}
    quota = {r: max(1, math.floor(shares[r])) for r in regions}
    by_remainder = sorted(
        regions, key=lambda r: (shares[r] - math.floor(shares[r]), -regions.index(r)), reverse=True
    )
    for region in by_remainder:
        if sum(quota.values()) >= count:
            break
        if quota[region] < len(clients_by_region[region]):
            quota[region] += 1
    while sum(quota.values()) > count:
        largest = max((r for r in regions if quota[r] > 1), key=lambda r: quota[r])
        quota[largest] -= 1
    chosen: dict[str, list[str]] = {}
    for region in regions:
        members = list(clients_by_region[region])
        picked = rng.choice(len(members), size=quota[region], replace=False)
        chosen[region] = sorted(members[i] for i in picked)
    return chosen


def round_participants(
    federation: FederationSettings, server_round: int
) -> dict[str, list[str]] | None:
    """The clients the server picks for `server_round`, or None when all take part."""
    plan = federation.participation
    if plan.full:
        return None
    population = federation.client_ids()
    total = sum(len(ids) for ids in population.values())
    count = participant_count(
        plan.schedule,
        server_round,
        federation.rounds,
        total,
        plan.start_fraction,
        plan.end_fraction,
        minimum=len(population),
    )
    return select_participants(population, count, federation.seed, server_round)


def final_population(federation: FederationSettings) -> dict[str, list[str]] | None:
    """Who evaluates the final model: every client. Named when the population is known (a
    schedule or an explicit client list), so each fog broker expects its region's count."""
    known = federation.clients is not None or not federation.participation.full
    return federation.client_ids() if known else None


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
