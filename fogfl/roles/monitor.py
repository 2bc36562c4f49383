"""Monitor: watches every fogfl message (``fl/#``) and keeps per-region round progress.

Reads message headers only (never the tensors), so it is cheap even for large models.
Anything undecodable is shown as such, and one message never ends the watch. Shows the
current run only. torch-free.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from fogfl.bandwidth.ladder import codec_for_share
from fogfl.config import FogflConfig
from fogfl.errors import WireError
from fogfl.logs import Rejections, role_logger
from fogfl.mqtt import MqttSession, Received, Topics
from fogfl.security.identities import monitor_identity
from fogfl.security.role import role_security
from fogfl.transfers import DOWNLOAD_METRIC, PREDICTED_METRIC, SHARE_METRIC
from fogfl.wire import Verifier, metadata_count, read_metadata

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
    # What the federation says a region expects: a partial's `expected` (its fog broker's
    # count) and a round announcement's participants per region (under a schedule).
    expected: int | None = None
    participants: dict[str, int] | None = None
    # The sender's clock at publishing, and what a client said its download took.
    sent_at: float | None = None
    download_seconds: float | None = None
    # The codec an update travels in (an adaptive one's choice, `topk_0.05` …) and the
    # upload seconds its controller predicted.
    codec: str = ""
    predicted_upload_seconds: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class RegionProgress:
    round: int = 0
    updates: int = 0
    expected: int | None = None  # None: nothing has said yet
    partials: int = 0
    last_partial_examples: int = 0
    senders: set[str] = field(default_factory=set)


@dataclass
class ClientLink:
    """What the monitor knows of one client's link: its last update's transfer times and,
    with emulated links, the link's state and rate from the links runner's counters."""

    region: str
    round: int = 0
    upload_seconds: float | None = None
    download_seconds: float | None = None
    codec: str = ""
    predicted_upload_seconds: float | None = None
    state: str = ""
    rate_mbit: float | None = None
    uplink_bytes: int | None = None


class MonitorState:
    """Per-region progress of the current run: the last round seen and how many updates
    of how many expected.

    The current run is the one of the newest round announcement (or, before any, of the
    first tagged message). An announcement of another run starts the table afresh;
    messages of other runs — retained partials of an earlier run, a straggler — are
    counted in `other_runs` and change nothing else.

    The expected count is the federation's own word, never a default of the monitor's: the
    participants a round announcement names for the region (participation schedules), else
    what the region's fog broker put in its last partial; None until either says.
    """

    def __init__(self) -> None:
        self.regions: dict[str, RegionProgress] = {}
        self.clients: dict[str, ClientLink] = {}
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
            if seen.round >= self.round and seen.participants is not None:
                for name, count in seen.participants.items():
                    self.regions.setdefault(name, RegionProgress()).expected = count
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
        region = self.regions.setdefault(region_name, RegionProgress())
        if seen.round > region.round:
            region.round, region.updates, region.senders = seen.round, 0, set()
        if (
            seen.round == region.round
            and seen.kind in ("update", "evaluation")
            and seen.sender not in region.senders
        ):
            region.senders.add(seen.sender)
            region.updates = len(region.senders)
        if seen.kind == "update" and seen.sender:
            self._saw_update(seen, region_name)
        if seen.kind == "partial":
            region.partials += 1
            region.last_partial_examples = seen.num_examples or 0
            if seen.expected is not None and seen.round >= self.round:
                region.expected = seen.expected

    def _saw_update(self, seen: Observation, region: str) -> None:
        link = self.clients.setdefault(seen.sender[:MAX_SHOWN], ClientLink(region))
        link.round = seen.round or link.round
        if seen.sent_at:
            # The monitor hears an update when its fog broker does: the upload's time, on
            # one clock (the senders' and the monitor's clocks must agree).
            link.upload_seconds = max(0.0, seen.time - seen.sent_at)
        link.download_seconds = seen.download_seconds
        link.codec = seen.codec
        link.predicted_upload_seconds = seen.predicted_upload_seconds

    def read_links(self, counters: Path) -> None:
        """Fold in the links runner's counters file (`fogfl up --links`): each client's
        link state and current uplink rate. A missing or half-read file changes nothing."""
        try:
            links = json.loads(counters.read_text()).get("links", {})
        except (OSError, ValueError, AttributeError):
            return
        if not isinstance(links, dict):
            return
        for name, counted in links.items():
            if not isinstance(counted, dict) or name not in self.clients:
                continue
            link = self.clients[name]
            link.state = str(counted.get("state", ""))[:MAX_SHOWN]
            rates = counted.get("rate_mbit")
            uplink = rates.get("uplink") if isinstance(rates, dict) else None
            link.rate_mbit = float(uplink) if isinstance(uplink, int | float) else None
            sent = counted.get("uplink_bytes")
            link.uplink_bytes = sent if _is_count(sent) else None


def observe(received: Received, verify: Verifier | None = None) -> Observation:
    """What a message says about itself, from its header alone (and, with `verify`, whether
    its signature holds). Total: a message that is not a readable fogfl header becomes an
    observation with `error` set, whatever it holds."""
    seen = Observation(time=time.time(), topic=received.topic, bytes=len(received.payload))
    try:
        meta = read_metadata(received.payload)
        if verify is not None:
            verify(received.payload, meta)
    except WireError as error:
        seen.error = str(error)
        if error.reason != "bad-signature":
            return seen
        meta = read_metadata(received.payload)  # a forgery still shows what it claims
    if "fogfl" not in meta:
        seen.error = "not a fogfl message (no protocol metadata)"
    seen.kind = meta.get("kind", "?")[:MAX_SHOWN]
    seen.run_id = meta.get("run_id", "")[:MAX_SHOWN]
    seen.round = _count_or_none(meta, "round")
    seen.sender = meta.get("sender", "")[:MAX_SHOWN]
    seen.region = meta.get("region", "")[:MAX_SHOWN]
    seen.num_examples = _count_or_none(meta, "num_examples")
    seen.final = meta.get("final") == "true"
    seen.sent_at = _float_or_none(meta.get("sent_at"))
    metrics = _json_object(meta, "metrics")
    seen.download_seconds = _seconds_or_none(metrics.get(DOWNLOAD_METRIC))
    seen.codec = meta.get("codec", "")[:MAX_SHOWN]
    share = metrics.get(SHARE_METRIC)
    if isinstance(share, float) and 0 < share <= 1:
        seen.codec = codec_for_share(share).label  # what an adaptive update chose
        seen.predicted_upload_seconds = _seconds_or_none(metrics.get(PREDICTED_METRIC))
    if seen.kind == "partial":
        expected = _json_object(meta, "stats").get("expected")
        seen.expected = expected if _is_count(expected) else None
    elif seen.kind == "round":
        chosen = _json_object(meta, "config").get("participants")
        if isinstance(chosen, dict):
            seen.participants = {
                str(region)[:MAX_SHOWN]: len(ids)
                for region, ids in chosen.items()
                if isinstance(ids, list)
            }
    return seen


def watch(
    config: FogflConfig, topic_filter: str | None = None, duration_s: float | None = None
) -> Iterator[Observation]:
    """Observations of every message under the filter (default ``<prefix>/#``) until
    `duration_s` passes, or forever when it is None. One message never ends the watch:
    anything unexpected while reading it is logged and shown as undecodable."""
    log = role_logger(ROLE)
    rejections = Rejections(log)
    ends = None if duration_s is None else time.monotonic() + duration_s
    security = role_security(config, monitor_identity(), log)
    settings = security.mqtt
    if duration_s is not None:
        # The wait for the broker is part of the watch, not in front of it.
        connect_s = max(min(settings.connect_timeout_s, duration_s), 0.1)
        settings = settings.model_copy(update={"connect_timeout_s": connect_s})
    session = MqttSession(
        settings,
        f"fogfl-monitor-{os.getpid()}",
        log,
        persistent=False,
        wire=config.wire,
        rejections=rejections,
    )
    session.connect([topic_filter or session.topics.everything])
    try:
        while ends is None or time.monotonic() < ends:
            wait = 0.25 if ends is None else max(0.0, min(0.25, ends - time.monotonic()))
            received = session.receive(timeout=wait)
            if received is None:
                continue
            seen: Observation | None = None
            with rejections.guard(received.topic):
                seen = observe(received, security.verify)
            yield seen or Observation(
                time=time.time(),
                topic=received.topic,
                bytes=len(received.payload),
                error="internal error while reading it; see the monitor's log",
            )
    finally:
        session.close()


def _json_object(meta: dict[str, str], key: str) -> dict[str, Any]:
    """The JSON object in a metadata field, or {} when it is absent or anything else."""
    try:
        value = json.loads(meta.get(key, "{}"))
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _seconds_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count_or_none(meta: dict[str, str], key: str) -> int | None:
    try:
        return metadata_count(meta, key)
    except WireError:
        return None
