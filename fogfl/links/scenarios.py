"""The seed's network scenarios (home, rural, vehicular): a link's statistics, varied per
client. The QoE task plays video over them; the link emulator and `fogfl sim` turn them into
link traces (`fogfl.links.model.scenario_link`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class NetworkScenario:
    """A link's statistics and the video played over it (rates in kbit/s)."""

    name: str
    throughput_kbps: float
    throughput_std: float
    bitrate_kbps: float
    latency_ms: float
    latency_std: float
    loss_rate: float
    loss_std: float
    initial_buffer_s: float
    rebuffer_threshold_s: float = 0.5


BASE_SCENARIOS: tuple[NetworkScenario, ...] = (
    NetworkScenario("home_stable", 6500.0, 450.0, 4200.0, 32.0, 6.0, 0.008, 0.003, 24.0),
    NetworkScenario("rural_unstable", 2800.0, 900.0, 3600.0, 85.0, 20.0, 0.035, 0.012, 18.0),
    NetworkScenario("vehicular_variable", 4200.0, 1400.0, 3800.0, 115.0, 28.0, 0.022, 0.009, 14.0),
)
SCENARIO_NAMES = tuple(s.name for s in BASE_SCENARIOS)


def client_scenario(
    ordinal: int,
    rng: np.random.Generator,
    bases: Sequence[NetworkScenario] = BASE_SCENARIOS,
    pinned: str | None = None,
    variation: float = 1.0,
) -> NetworkScenario:
    """The base scenario for a client (round robin by its number), varied at random."""
    names = [s.name for s in bases]
    base = bases[names.index(pinned)] if pinned else bases[(ordinal - 1) % len(bases)]
    jitter = variation * rng.normal(0.0, 1.0, size=9)
    return replace(
        base,
        name=f"{base.name}_v{ordinal}",
        throughput_kbps=base.throughput_kbps * (1 + 0.08 * jitter[0]),
        throughput_std=base.throughput_std * (1 + 0.15 * jitter[1]),
        bitrate_kbps=base.bitrate_kbps * (1 + 0.05 * jitter[2]),
        latency_ms=base.latency_ms * (1 + 0.12 * jitter[3]),
        latency_std=max(5.0, base.latency_std * (1 + 0.2 * jitter[4])),
        loss_rate=float(np.clip(base.loss_rate * (1 + 0.25 * jitter[5]), 0.002, 0.2)),
        loss_std=float(np.clip(base.loss_std * (1 + 0.25 * jitter[6]), 0.0005, 0.2)),
        initial_buffer_s=max(4.0, base.initial_buffer_s * (1 + 0.1 * jitter[7])),
    )
