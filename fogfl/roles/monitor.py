"""Monitor: watches every fogfl message (``fl/#``) and keeps per-region round progress.

Reads message headers only (never the tensors), so it is cheap even for large models.
Anything undecodable is shown as such, and one message never ends the watch. Shows the
current run only. torch-free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from fogfl.config import FogflConfig
from fogfl.errors import WireError
from fogfl.logs import Rejections, role_logger
from fogfl.mqtt import MqttSession, Received, Topics
from fogfl.wire import metadata_count, read_metadata

ROLE = "monitor"
MAX_SHOWN = 128  # characters of a tag shown; hostile tags can be megabytes


@dataclass
class Observation:
    """One message as the monitor saw it."""

    time: float
    topic: str
    bytes: int
    kind: str = "?"
    run_id: str = ""
    round: int | None = None
    sender: str = ""
    region: str = ""
    num_examples: int | None = None
    final: bool = False
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class RegionProgress:
    round: int = 0
    updates: int = 0
    expected: int = 0
    partials: int = 0
    last_partial_examples: int = 0
    senders: set[str] = field(default_factory=set)


class MonitorState:
    """Per-region progress of the current run: the last round seen and how many updates
    of how many expected.

    The current run is the one of the newest round announcement (or, before any, of the
    first tagged message). An announcement of another run starts the table afresh;
    messages of other runs — retained partials of an earlier run, a straggler — are
    counted in `other_runs` and change nothing else.
    """

    def __init__(self, expected_per_region: int) -> None:
        self.expected = expected_per_region
        self.regions: dict[str, RegionProgress] = {}
        self.run_id = ""
        self.round = 0
        self.messages = 0
        self.undecodable = 0
        self.other_runs = 0

    def add(self, seen: Observation, topics: Topics) -> None:
        self.messages += 1
        if seen.error:
            self.undecodable += 1
            return
        if seen.kind == "round" and seen.run_id and seen.round is not None:
            if seen.run_id != self.run_id:
                self.run_id, self.round, self.regions = seen.run_id, seen.round, {}
            self.round = max(self.round, seen.round)
            return
        if seen.run_id and not self.run_id:
            self.run_id = seen.run_id
        if seen.run_id != self.run_id:
            self.other_runs += 1
            return
        region_name = seen.region or topics.region_of(seen.topic)
        if not region_name or seen.round is None:
            return
        region = self.regions.setdefault(region_name, RegionProgress(expected=self.expected))
        if seen.round > region.round:
            region.round, region.updates, region.senders = seen.round, 0, set()
        if (
            seen.round == region.round
            and seen.kind in ("update", "evaluation")
            and seen.sender not in region.senders
        ):
            region.senders.add(seen.sender)
            region.updates = len(region.senders)
        if seen.kind == "partial":
            region.partials += 1
            region.last_partial_examples = seen.num_examples or 0


def observe(received: Received) -> Observation:
    """What a message says about itself, from its header alone. Total: a message that is
    not a readable fogfl header becomes an observation with `error` set, whatever it holds."""
    seen = Observation(time=time.time(), topic=received.topic, bytes=len(received.payload))
    try:
        meta = read_metadata(received.payload)
    except WireError as error:
        seen.error = str(error)
        return seen
    if "fogfl" not in meta:
        seen.error = "not a fogfl message (no protocol metadata)"
    seen.kind = meta.get("kind", "?")[:MAX_SHOWN]
    seen.run_id = meta.get("run_id", "")[:MAX_SHOWN]
    seen.round = _count_or_none(meta, "round")
    seen.sender = meta.get("sender", "")[:MAX_SHOWN]
    seen.region = meta.get("region", "")[:MAX_SHOWN]
    seen.num_examples = _count_or_none(meta, "num_examples")
    seen.final = meta.get("final") == "true"
    return seen


def watch(
    config: FogflConfig, topic_filter: str | None = None, duration_s: float | None = None
) -> Iterator[Observation]:
    """Observations of every message under the filter (default ``<prefix>/#``) until
    `duration_s` passes, or forever when it is None. One message never ends the watch:
    anything unexpected while reading it is logged and shown as undecodable."""
    log = role_logger(ROLE)
    rejections = Rejections(log)
    session = MqttSession(config.mqtt, f"fogfl-monitor-{os.getpid()}", log, persistent=False)
    session.connect([topic_filter or session.topics.everything])
    ends = None if duration_s is None else time.monotonic() + duration_s
    try:
        while ends is None or time.monotonic() < ends:
            wait = 0.25 if ends is None else max(0.0, min(0.25, ends - time.monotonic()))
            received = session.receive(timeout=wait)
            if received is None:
                continue
            seen: Observation | None = None
            with rejections.guard(received.topic):
                seen = observe(received)
            yield seen or Observation(
                time=time.time(),
                topic=received.topic,
                bytes=len(received.payload),
                error="internal error while reading it; see the monitor's log",
            )
    finally:
        session.close()


def _count_or_none(meta: dict[str, str], key: str) -> int | None:
    try:
        return metadata_count(meta, key)
    except WireError:
        return None
