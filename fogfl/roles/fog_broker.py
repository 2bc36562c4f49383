"""Fog broker: aggregates one region's client updates into a partial aggregate.

Reads ``fl/round`` (the server's round announcements) and ``fl/updates/<region>``; writes
``fl/partial/<region>``. numpy only: no torch, so it starts fast on small fog hardware.

A round opens when the server announces it and closes when the expected number of updates
is in, or at the deadline with at least `min_updates`. Updates are folded into a running
example-weighted mean as they arrive. After the last round the broker aggregates the
clients' evaluations of the final model the same way, publishes them, and exits.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Literal

from fogfl.aggregation import MetricsMean, WeightedModelMean
from fogfl.config import FogflConfig
from fogfl.errors import WireError
from fogfl.logs import Rejections, RoleLogger, role_logger
from fogfl.mqtt import MqttSession, Received
from fogfl.wire import Envelope, ModelSchema, decode, encode

Phase = Literal["fit", "evaluate"]
ROLE = "fog-broker"


@dataclass
class RegionRound:
    """The updates of one round (or the final evaluation) collected so far."""

    run_id: str
    round: int
    phase: Phase
    schema: ModelSchema
    deadline: float
    model: WeightedModelMean | None
    metrics: MetricsMean = field(default_factory=MetricsMean)
    contributors: list[str] = field(default_factory=list)
    num_examples: int = 0
    updates_bytes: int = 0
    deadline_logged: bool = False

    @property
    def final(self) -> bool:
        return self.phase == "evaluate"


class FogBroker:
    def __init__(
        self,
        config: FogflConfig,
        region: str,
        expected_updates: int | None = None,
        deadline_s: float | None = None,
        min_updates: int | None = None,
    ) -> None:
        self.config = config
        self.region = region
        self.expected_updates = expected_updates or config.expected_updates
        self.deadline_s = deadline_s or config.fog.deadline_s
        self.min_updates = min(min_updates or config.fog.min_updates, self.expected_updates)
        self.log: RoleLogger = role_logger(ROLE, region)
        self.rejections = Rejections(self.log)
        self.session = MqttSession(config.mqtt, f"fogfl-fog-{region}-{os.getpid()}", self.log)
        self.topics = self.session.topics
        self.current: RegionRound | None = None
        self.last_closed: tuple[str, int, Phase] | None = None
        self.finished = False

    def run(self) -> int:
        """Serve rounds until the server's final evaluation is aggregated; returns 0."""
        self.session.connect([self.topics.round_announcement, self.topics.updates(self.region)])
        self.log.info(
            "ready: closing rounds at %d updates, or after %.0f s with at least %d",
            self.expected_updates,
            self.deadline_s,
            self.min_updates,
        )
        try:
            while not self.finished:
                message = self.session.receive(timeout=self._seconds_to_deadline())
                if message is not None:
                    self.handle(message)
                self._check_deadline()
        finally:
            self.session.close()
            if self.rejections.total:
                self.log.info(
                    "rejected %d messages: %s", self.rejections.total, dict(self.rejections.counts)
                )
        return 0

    def handle(self, message: Received) -> None:
        try:
            if message.topic == self.topics.round_announcement:
                self._on_announcement(message)
            else:
                self._on_update(message)
        except WireError as error:
            self.rejections.record_error(error, message.topic)

    def _on_announcement(self, message: Received) -> None:
        announcement = decode(
            message.payload, kinds={"round"}, max_bytes=self.config.wire.max_payload_bytes
        )
        if announcement.schema is None:
            raise WireError("bad-field", "round announcement carries no model schema")
        phase: Phase = "evaluate" if announcement.final else "fit"
        key = (announcement.run_id, announcement.round, phase)
        current = self.current
        if current is not None and (current.run_id, current.round, current.phase) == key:
            return
        if key == self.last_closed:
            return
        if current is not None:
            self.log.warning(
                "round %d abandoned with %d of %d updates: the server moved on to round %d",
                current.round,
                len(current.contributors),
                self.expected_updates,
                announcement.round,
            )
        self.current = RegionRound(
            run_id=announcement.run_id,
            round=announcement.round,
            phase=phase,
            schema=announcement.schema,
            deadline=time.monotonic() + self.deadline_s,
            model=None if phase == "evaluate" else WeightedModelMean(announcement.schema),
        )
        what = "final evaluation" if phase == "evaluate" else "round"
        self.log.info("%s %d of run %s opened", what, announcement.round, announcement.run_id)

    def _on_update(self, message: Received) -> None:
        current = self.current
        if current is None:
            if self.last_closed is not None:
                raise WireError(
                    "late", f"round {self.last_closed[1]} is closed and no other is open"
                )
            raise WireError(
                "no-round", "no round is open yet; waiting for the server's announcement"
            )
        kind = "evaluation" if current.final else "update"
        update = decode(
            message.payload,
            kinds={"update", "evaluation"},
            max_bytes=self.config.wire.max_payload_bytes,
            schema=current.schema if kind == "update" else None,
            run_id=current.run_id,
        )
        who = f"{update.kind} from {update.sender}"
        if update.region != self.region:
            raise WireError(
                "wrong-region", f"{who} claims region {update.region!r} on {self.region!r}'s topic"
            )
        if update.round < current.round or (update.round == current.round and update.kind != kind):
            raise WireError("late", f"{who} is for round {update.round}, which is closed")
        if update.round > current.round:
            raise WireError(
                "future-round", f"{who} is for round {update.round}; round {current.round} is open"
            )
        if update.sender in current.contributors:
            raise WireError("duplicate", f"{who} for round {update.round} arrived twice")
        if update.num_examples <= 0:
            raise WireError("no-examples", f"{who} reports num_examples={update.num_examples}")
        if current.model is not None:
            current.model.add(update.tensors, update.num_examples)
        current.metrics.add(update.metrics, update.num_examples)
        current.contributors.append(update.sender)
        current.num_examples += update.num_examples
        current.updates_bytes += update.payload_bytes
        self.log.debug("round %d: %s (%d examples)", current.round, who, update.num_examples)
        if len(current.contributors) >= self.expected_updates:
            self._close("all expected updates are in")

    def _seconds_to_deadline(self) -> float:
        if self.current is None:
            return 1.0
        return max(0.0, min(1.0, self.current.deadline - time.monotonic()))

    def _check_deadline(self) -> None:
        current = self.current
        if current is None or time.monotonic() < current.deadline:
            return
        if len(current.contributors) >= self.min_updates:
            self._close(f"deadline of {self.deadline_s:.0f} s passed")
        elif not current.deadline_logged:
            current.deadline_logged = True
            self.log.warning(
                "round %d: deadline passed with %d updates, %d needed; still waiting",
                current.round,
                len(current.contributors),
                self.min_updates,
            )

    def _close(self, why: str) -> None:
        current = self.current
        assert current is not None
        partial = Envelope(
            kind="partial",
            run_id=current.run_id,
            round=current.round,
            sender=f"fog-{self.region}",
            region=self.region,
            num_examples=current.num_examples,
            tensors=current.model.result() if current.model is not None else {},
            metrics=current.metrics.result(),
            contributors=current.contributors,
            stats={
                "updates_bytes": current.updates_bytes,
                "rejected": dict(self.rejections.counts),
            },
            final=current.final,
        )
        payload = encode(partial, self.config.wire.codec)
        self.session.publish(self.topics.partial(self.region), payload, retain=True)
        self.log.info(
            "%s %d closed (%s): %d updates, %d examples, %d bytes published",
            "final evaluation" if current.final else "round",
            current.round,
            why,
            len(current.contributors),
            current.num_examples,
            len(payload),
        )
        self.last_closed = (current.run_id, current.round, current.phase)
        self.current = None
        if current.final:
            self.finished = True


def run(
    config: FogflConfig,
    region: str,
    expected: int | None,
    deadline_s: float | None,
    min_updates: int | None,
) -> int:
    return FogBroker(config, region, expected, deadline_s, min_updates).run()
