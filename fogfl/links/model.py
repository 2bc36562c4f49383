"""The link model: per direction a rate that changes over time and a one-way latency with
jitter, plus outages (a stall stops the link moving bytes; a reset also closes its
connections). The emulator paces real bytes with it; `transfer_time` answers the same
question analytically for the simulation.

Time is the link's own clock in seconds, 0 when the link starts (the emulator's start, or
the start of a simulated run). Rates are in bytes per second of application payload, what
a TCP connection delivers to the program reading it."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fogfl.errors import LinkError
from fogfl.links.scenarios import NetworkScenario
from fogfl.links.traces import ThroughputTrace

BYTES_PER_MBIT = 1_000_000 / 8
DirectionName = Literal["uplink", "downlink"]
OutageKind = Literal["stall", "reset"]
SCENARIO_TRACE_S = 600  # as long as the QoE task's traces, so the two describe the same link
MIN_SCENARIO_KBPS = 200.0  # the QoE task's floor for a scenario's throughput
MIN_RTO_S = 0.2  # Linux's minimum TCP retransmission timeout


@dataclass(frozen=True)
class RateSchedule:
    """A piecewise-constant rate in bytes per second: `rates[i]` holds from `starts[i]` until
    the next start. After the last start the schedule loops every `period_s`, or, with
    `period_s` None, the last rate holds forever. The link's time 0 falls at `offset_s` into
    the schedule (a trace replayed from the middle)."""

    starts: tuple[float, ...]
    rates: tuple[float, ...]
    period_s: float | None = None
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.starts or len(self.starts) != len(self.rates) or self.starts[0] != 0.0:
            raise LinkError("a rate schedule needs one rate per start, the first start at 0")
        if any(b < a for a, b in itertools.pairwise(self.starts)):
            raise LinkError("a rate schedule's starts must not decrease")
        if any(not math.isfinite(r) or r < 0 for r in self.rates):
            raise LinkError("a rate schedule's rates must be finite and not negative")
        if self.period_s is None:
            if self.rates[-1] <= 0:
                raise LinkError("a rate schedule that does not loop must end with a rate above 0")
        elif self.period_s <= self.starts[-1] or not any(r > 0 for r in self.rates):
            raise LinkError("a looping rate schedule must end after its last start and move bytes")

    @classmethod
    def constant(cls, bytes_per_s: float) -> RateSchedule:
        return cls((0.0,), (bytes_per_s,))

    def segment(self, t: float) -> tuple[float, float]:
        """The rate at link time `t` and the link time at which it next changes."""
        u = t + self.offset_s
        base = 0.0
        if self.period_s is not None:
            laps = math.floor(u / self.period_s)
            base = laps * self.period_s
            u -= base
            if u >= self.period_s:  # floating point at a lap's very end
                base += self.period_s
                u -= self.period_s
        index = bisect.bisect_right(self.starts, u) - 1
        if index + 1 < len(self.starts):
            end = self.starts[index + 1]
        elif self.period_s is not None:
            end = self.period_s
        else:
            return self.rates[index], math.inf
        return self.rates[index], base + end - self.offset_s

    def rate_at(self, t: float) -> float:
        return self.segment(t)[0]

    @property
    def mean_bytes_per_s(self) -> float:
        if self.period_s is None:
            return self.rates[-1]
        bounds = (*self.starts[1:], self.period_s)
        volume = sum(r * (e - s) for r, s, e in zip(self.rates, self.starts, bounds, strict=True))
        return volume / self.period_s


@dataclass(frozen=True)
class Direction:
    """One direction of a link: its rate over time and the one-way latency of its bytes
    (jitter is the standard deviation of that latency; bytes are never reordered)."""

    rate: RateSchedule
    latency_s: float = 0.0
    jitter_s: float = 0.0


@dataclass(frozen=True)
class Outage:
    """The link stops moving bytes from `start_s` for `duration_s` (again every `every_s`,
    when set). A reset also closes the link's connections and refuses new ones meanwhile."""

    start_s: float
    duration_s: float
    kind: OutageKind = "stall"
    every_s: float | None = None

    def __post_init__(self) -> None:
        if self.start_s < 0 or self.duration_s <= 0:
            raise LinkError("an outage starts at 0 s or later and lasts more than 0 s")
        if self.every_s is not None and self.every_s <= self.duration_s:
            raise LinkError(
                f"an outage of {self.duration_s:g} s every {self.every_s:g} s never ends"
            )

    def covering(self, t: float) -> tuple[float, float] | None:
        """(start, end) of this outage's occurrence that covers time `t`, if any."""
        if t < self.start_s:
            return None
        start = self.start_s
        if self.every_s is not None:
            start += math.floor((t - self.start_s) / self.every_s) * self.every_s
        end = start + self.duration_s
        return (start, end) if start <= t < end else None

    def next_start(self, t: float) -> float:
        """The first start of this outage after time `t` (inf when there is none)."""
        if t < self.start_s:
            return self.start_s
        if self.every_s is None:
            return math.inf
        return self.start_s + (math.floor((t - self.start_s) / self.every_s) + 1) * self.every_s


@dataclass(frozen=True)
class OutageWindow:
    start_s: float
    end_s: float
    kind: OutageKind


@dataclass(frozen=True)
class LinkModel:
    """A link between a client (or a fog site) and its broker; uplink is towards the broker."""

    name: str
    uplink: Direction
    downlink: Direction
    outages: tuple[Outage, ...] = field(default_factory=tuple)

    def direction(self, name: DirectionName) -> Direction:
        return self.uplink if name == "uplink" else self.downlink

    def outage_at(self, t: float) -> OutageWindow | None:
        """The outage covering time `t` (a reset wins over a stall; the latest end wins)."""
        found: OutageWindow | None = None
        for outage in self.outages:
            window = outage.covering(t)
            if window is None:
                continue
            candidate = OutageWindow(window[0], window[1], outage.kind)
            if (
                found is None
                or (candidate.kind, found.kind) == ("reset", "stall")
                or (candidate.kind == found.kind and candidate.end_s > found.end_s)
            ):
                found = candidate
        return found

    def next_outage_start(self, t: float, kind: OutageKind | None = None) -> float:
        """The first time after `t` at which an outage (of `kind`, if given) begins."""
        starts = [o.next_start(t) for o in self.outages if kind is None or o.kind == kind]
        return min(starts, default=math.inf)

    def serialized_by(self, direction: DirectionName, nbytes: float, start_s: float) -> float:
        """The link time at which `nbytes` handed to the link at `start_s` have all left the
        sender's side: the rate over time integrated, with nothing moving in outages."""
        rate = self.direction(direction).rate
        t, left = start_s, float(nbytes)
        if left <= 0:
            return t
        for _ in range(10_000_000):
            window = self.outage_at(t)
            if window is not None:
                t = window.end_s
                continue
            bytes_per_s, change = rate.segment(t)
            end = min(change, self.next_outage_start(t))
            if bytes_per_s > 0:
                if t + left / bytes_per_s <= end:
                    return t + left / bytes_per_s
                left -= bytes_per_s * (end - t)
            t = max(end, math.nextafter(t, math.inf))
        raise LinkError(f"link {self.name}: {nbytes:g} bytes from {start_s:g} s never finish")

    def transfer_time(
        self, nbytes: float, start_s: float = 0.0, direction: DirectionName = "uplink"
    ) -> float:
        """Seconds from `start_s` until the last of `nbytes` sent in one go arrives: the time
        to serialize them at the link's rate over time, outages included, plus the mean
        one-way latency. A reset during the transfer loses it: it starts again, whole, when
        the reset ends (MQTT resends an unacknowledged message on the new connection)."""
        t = start_s
        for _ in range(10_000):
            done = self.serialized_by(direction, nbytes, t)
            reset = self.next_outage_start(math.nextafter(t, -math.inf), "reset")
            if reset >= done:
                return done + self.direction(direction).latency_s - start_s
            window = self.outage_at(reset)
            t = window.end_s if window is not None else math.nextafter(reset, math.inf)
        raise LinkError(
            f"link {self.name}: {nbytes:g} bytes from {start_s:g} s never arrive; resets keep "
            "interrupting them"
        )


def fixed_link(
    name: str,
    uplink_mbit: float,
    downlink_mbit: float,
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    outages: Sequence[Outage] = (),
) -> LinkModel:
    """A link of constant rates (Mbit/s) and latency."""

    def direction(mbit: float) -> Direction:
        return Direction(
            RateSchedule.constant(mbit * BYTES_PER_MBIT), latency_ms / 1000, jitter_ms / 1000
        )

    return LinkModel(name, direction(uplink_mbit), direction(downlink_mbit), tuple(outages))


def trace_link(
    name: str,
    trace: ThroughputTrace,
    offset_s: float,
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    outages: Sequence[Outage] = (),
) -> LinkModel:
    """A link whose rate, both ways, replays `trace` from `offset_s` into it, looping."""
    schedule = RateSchedule(
        trace.starts_s,
        tuple(r * BYTES_PER_MBIT for r in trace.mbit_s),
        trace.period_s,
        offset_s % trace.period_s,
    )
    direction = Direction(schedule, latency_ms / 1000, jitter_ms / 1000)
    return LinkModel(name, direction, direction, tuple(outages))


def scenario_link(
    name: str,
    scenario: NetworkScenario,
    rng: np.random.Generator,
    duration_s: int = SCENARIO_TRACE_S,
    outages: Sequence[Outage] = (),
    latency_ms: float | None = None,
    jitter_ms: float | None = None,
) -> LinkModel:
    """A link following `scenario`, one second per sample, looping after `duration_s`.

    Throughput, latency and loss are drawn per second as the QoE task draws them (the same
    generator state gives the same throughput). The throughput is taken as what the
    application sees, so loss does not lower it again; loss shows as TCP shows it to the
    application: a second with loss p holds a retransmission-timeout stall with
    probability min(1, 2p), of max(200 ms, RTT + 4 RTT deviations), at a random point. The
    scenario's latency is a round trip; each direction gets half of it, and half its
    deviation as jitter. Both directions share the trace."""
    throughput = np.clip(
        rng.normal(scenario.throughput_kbps, scenario.throughput_std, duration_s),
        MIN_SCENARIO_KBPS,
        None,
    )
    rng.normal(scenario.latency_ms, scenario.latency_std, duration_s)  # the QoE task's draw
    loss = np.clip(rng.normal(scenario.loss_rate, scenario.loss_std, duration_s), 0.0, 1.0)
    rto_s = min(0.9, max(MIN_RTO_S, (scenario.latency_ms + 4 * scenario.latency_std) / 1000))
    stalled = rng.random(duration_s) < np.minimum(1.0, 2 * loss)
    stall_at = rng.uniform(0.0, 1.0 - rto_s, duration_s)
    starts: list[float] = []
    rates: list[float] = []
    for second in range(duration_s):
        bytes_per_s = float(throughput[second]) * 1000 / 8
        if stalled[second]:
            at = second + float(stall_at[second])
            starts += [float(second), at, at + rto_s]
            rates += [bytes_per_s, 0.0, bytes_per_s]
        else:
            starts.append(float(second))
            rates.append(bytes_per_s)
    schedule = RateSchedule(tuple(starts), tuple(rates), float(duration_s))
    one_way_ms = scenario.latency_ms / 2 if latency_ms is None else latency_ms
    jitter = scenario.latency_std / 2 if jitter_ms is None else jitter_ms
    direction = Direction(schedule, one_way_ms / 1000, jitter / 1000)
    return LinkModel(name, direction, direction, tuple(outages))
