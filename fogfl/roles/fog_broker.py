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

from fogfl.aggregation import Phase, RegionRound, WeightedModelMean
from fogfl.config import FogflConfig, read_round_plan
from fogfl.errors import WireError
from fogfl.logs import Rejections, RoleLogger, role_logger
from fogfl.mqtt import MqttSession, Received
from fogfl.wire import decode, encode

ROLE = "fog-broker"


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
                current.expected,
                announcement.round,
            )
        plan = read_round_plan(announcement.config)
        participants = None
        expected = self.expected_updates
        if plan.participants is not None:
            participants = set(plan.participants.get(self.region, []))
            expected = len(participants)
        self.current = RegionRound(
            run_id=announcement.run_id,
            round=announcement.round,
            phase=phase,
            schema=announcement.schema,
            deadline=time.monotonic() + self.deadline_s,
            expected=expected,
            participants=participants,
            uniform=plan.weighting == "uniform",
            edge_rounds=plan.edge_rounds,
            config=announcement.config,
            model=None if phase == "evaluate" else WeightedModelMean(announcement.schema),
        )
        what = "final evaluation" if phase == "evaluate" else "round"
        self.log.info(
            "%s %d of run %s opened; expecting %d updates",
            what,
            announcement.round,
            announcement.run_id,
            expected,
        )
        if expected == 0 and phase == "fit":
            self.log.warning("round %d: no client of this region takes part", announcement.round)

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
        if kind == "update" and update.edge_round != current.edge_round:
            when = "late" if update.edge_round < current.edge_round else "future-round"
            raise WireError(
                when, f"{who} is for edge round {update.edge_round}; {current.edge_round} is open"
            )
        if current.participants is not None and update.sender not in current.participants:
            raise WireError("not-participant", f"{who}: the server did not pick it this round")
        if update.sender in current.contributors:
            raise WireError("duplicate", f"{who} for round {update.round} arrived twice")
        if update.num_examples <= 0:
            raise WireError("no-examples", f"{who} reports num_examples={update.num_examples}")
        current.add(update)
        self.log.debug("round %d: %s (%d examples)", current.round, who, update.num_examples)
        if len(current.contributors) >= current.expected:
            self._close("all expected updates are in")

    def _seconds_to_deadline(self) -> float:
        if self.current is None:
            return 1.0
        return max(0.0, min(1.0, self.current.deadline - time.monotonic()))

    def _check_deadline(self) -> None:
        current = self.current
        if current is None or time.monotonic() < current.deadline:
            return
        if len(current.contributors) >= min(self.min_updates, current.expected):
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
        if current.model is not None and not current.contributors:
            self.log.warning(
                "round %d closed with no updates (%s); nothing to publish", current.round, why
            )
            self.last_closed = (current.run_id, current.round, current.phase)
            self.current = None
            return
        if current.model is not None and not current.last_edge_round:
            self._publish_region_model(current, why)
            return
        partial = current.partial(self.region, self.rejections.counts)
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

    def _publish_region_model(self, current: RegionRound, why: str) -> None:
        """End an edge round: the region's mean goes back down to its clients."""
        assert current.model is not None
        region_model = current.region_model(self.region)
        payload = encode(region_model, self.config.wire.codec)
        self.session.publish(self.topics.region_model(self.region), payload, retain=True)
        current.region_bytes += len(payload) * len(current.contributors)
        self.log.info(
            "round %d: edge round %d of %d closed (%s) with %d updates",
            current.round,
            current.edge_round,
            current.edge_rounds,
            why,
            len(current.contributors),
        )
        current.next_edge_round(time.monotonic() + self.deadline_s)


def run(
    config: FogflConfig,
    region: str,
    expected: int | None,
    deadline_s: float | None,
    min_updates: int | None,
) -> int:
    return FogBroker(config, region, expected, deadline_s, min_updates).run()
