"""Monitor: watches every fogfl message (``fl/#``) and keeps per-region round progress.

Reads message headers only (never the tensors), so it is cheap even for large models.
Anything undecodable is shown as such. numpy-free and torch-free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from fogfl.config import FogflConfig
from fogfl.errors import WireError
from fogfl.logs import role_logger
from fogfl.mqtt import MqttSession, Received, Topics
from fogfl.wire import read_metadata

ROLE = "monitor"


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
    """Per-region progress: the last round seen and how many updates of how many expected."""

    def __init__(self, expected_per_region: int) -> None:
        self.expected = expected_per_region
        self.regions: dict[str, RegionProgress] = {}
        self.run_id = ""
        self.round = 0
        self.messages = 0
        self.undecodable = 0

    def add(self, seen: Observation, topics: Topics) -> None:
        self.messages += 1
        if seen.error:
            self.undecodable += 1
            return
        if seen.kind == "round" and seen.round is not None:
            self.run_id, self.round = seen.run_id, seen.round
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
    """What a message says about itself, from its header alone."""
    seen = Observation(time=time.time(), topic=received.topic, bytes=len(received.payload))
    try:
        meta = read_metadata(received.payload)
        seen.kind = meta.get("kind", "?")
        seen.run_id = meta.get("run_id", "")
        seen.round = int(meta["round"]) if meta.get("round", "").isdigit() else None
        seen.sender = meta.get("sender", "")
        seen.region = meta.get("region", "")
        examples = meta.get("num_examples", "")
        seen.num_examples = int(examples) if examples.isdigit() else None
        seen.final = meta.get("final") == "true"
        if "fogfl" not in meta:
            seen.error = "not a fogfl message (no protocol metadata)"
    except WireError as error:
        seen.error = str(error)
    return seen


def watch(
    config: FogflConfig, topic_filter: str | None = None, duration_s: float | None = None
) -> Iterator[Observation]:
    """Observations of every message under the filter (default ``<prefix>/#``) until
    `duration_s` passes, or forever when it is None."""
    log = role_logger(ROLE)
    session = MqttSession(config.mqtt, f"fogfl-monitor-{os.getpid()}", log)
    session.connect([topic_filter or session.topics.everything])
    ends = None if duration_s is None else time.monotonic() + duration_s
    try:
        while ends is None or time.monotonic() < ends:
            wait = 0.25 if ends is None else max(0.0, min(0.25, ends - time.monotonic()))
            received = session.receive(timeout=wait)
            if received is not None:
                yield observe(received)
    finally:
        session.close()
