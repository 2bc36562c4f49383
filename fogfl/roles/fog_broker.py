"""Fog broker: aggregates one region's client updates into a partial aggregate.

Reads ``fl/round`` (the server's round announcements, signed) and ``fl/updates/<region>/+``
(each client on its own topic, which must match the update's sender); writes
``fl/partial/<region>``, signed with this region's key. numpy only: no torch, so it starts
fast on small fog hardware.

A round opens when the server announces it and closes when the expected number of updates
is in, or at the deadline with at least `min_updates`. Updates are folded into a running
example-weighted mean as they arrive. After the last round the broker aggregates the
clients' evaluations of the final model the same way, publishes them, and exits (or, with
`serve`, waits for the next run).

Every accepted update is kept in the round journal before it is acknowledged to MQTT, so a
broker killed mid-round and restarted closes the round with every update it had.
"""

from __future__ import annotations

import time

from fogfl.aggregation import Phase, RegionRound, model_aggregate
from fogfl.codecs import Reference
from fogfl.config import FogflConfig, RoundPlan, read_round_plan
from fogfl.errors import WireError
from fogfl.fog_state import RoundJournal, RoundKey
from fogfl.logs import Rejections, RoleLogger, role_logger
from fogfl.mqtt import MqttSession, Received, role_client_id
from fogfl.security.identities import fog_identity
from fogfl.security.role import role_security
from fogfl.transfers import DOWNLOAD_METRIC, transfer_seconds
from fogfl.wire import Envelope, decode, encode, read_metadata

ROLE = "fog-broker"
_PHASE_ORDER = {"fit": 0, "evaluate": 1}


class FogBroker:
    def __init__(
        self,
        config: FogflConfig,
        region: str,
        expected_updates: int | None = None,
        deadline_s: float | None = None,
        min_updates: int | None = None,
        serve: bool = False,
    ) -> None:
        self.config = config
        self.region = region
        self.expected_updates = expected_updates or config.expected_updates_in(region)
        self.deadline_s = deadline_s or config.fog.deadline_s
        self.min_updates = min(min_updates or config.fog.min_updates, self.expected_updates)
        self.log: RoleLogger = role_logger(ROLE, region)
        self.rejections = Rejections(self.log)
        self.serve = serve
        self.security = role_security(config, fog_identity(region), self.log)
        # One stable id per region: the broker keeps its session (and the QoS 1 updates
        # queued in it) across a restart of this process.
        client_id = role_client_id(config.mqtt, "fog", region)
        self.session = MqttSession(
            self.security.mqtt,
            client_id,
            self.log,
            manual_ack=True,
            wire=config.wire,
            rejections=self.rejections,
        )
        self.topics = self.session.topics
        self.journal = RoundJournal(config.fog.state_dir / f"fog-{region}")
        self.current: RegionRound | None = None
        self.last_closed: RoundKey | None = self.journal.last_closed()
        self.left_runs: set[str] = set()
        self.finished = False
        self.connected = True  # False only while a restart restores its round
        self.unread_reference: Received | None = None
        self.restored_region_model: bytes | None = None
        self.plan = RoundPlan()  # the open round's, as announced
        # The model the open edge round's clients trained from, which coded updates are
        # deltas from; updates that come before it wait, unacknowledged.
        self.start: Reference | None = None
        self.waiting: list[Received] = []
        # Updates that came after their round closed, by round, for the next partial.
        self.late: dict[int, int] = {}

    def run(self) -> int:
        """Serve rounds until the server's final evaluation is aggregated (with `serve`,
        run after run); returns 0."""
        reopened = self.journal.open_announcement()
        if reopened is not None:
            # Before the session delivers what was queued for this broker while it was away;
            # the round may be complete already, but closing it must wait for the broker.
            self.connected = False
            self.handle(Received(self.topics.round_announcement, reopened, True))
        self.session.connect(
            [
                self.topics.round_announcement,
                self.topics.region_updates(self.region),
                *self._reference_topics(),
            ]
        )
        self.log.info(
            "ready: closing rounds at %d updates, or after %.0f s with at least %d",
            self.expected_updates,
            self.deadline_s,
            self.min_updates,
        )
        try:
            self.connected = True
            if self.restored_region_model is not None:
                # Retained, so a client that had it already sees nothing new.
                topic = self.topics.region_model(self.region)
                self.session.publish(topic, self.restored_region_model, retain=True)
                self.restored_region_model = None
            self._close_if_complete()
            while not self.finished or self.serve:
                if self.finished:
                    self.finished = False
                    self.log.info("waiting for the next run")
                message = self.session.receive(timeout=self._seconds_to_wait())
                if message is not None and self.handle(message):
                    # Only now, with the update in the journal, may the broker forget it.
                    self.session.ack(message)
                self._check_deadline()
        finally:
            self.session.close()
            if self.rejections.total:
                self.log.info(
                    "rejected %d messages: %s", self.rejections.total, dict(self.rejections.counts)
                )
        return 0

    def handle(self, message: Received) -> bool:
        """Act on one message; a bad one is rejected with its reason, never fatal. False
        when it waits, unacknowledged, for the model its delta is from."""
        with self.rejections.guard(message.topic):
            if message.topic == self.topics.round_announcement:
                self._on_announcement(message)
            elif message.topic in self._reference_topics():
                self._on_reference(message)
            elif self._waits_for_reference(message):
                return False
            else:
                self._on_update(message)
        return True

    def _on_announcement(self, message: Received) -> None:
        announcement = decode(
            message.payload,
            kinds={"round"},
            max_bytes=self.config.wire.max_payload_bytes,
            verify=self.security.verify,
        )
        if announcement.schema is None:
            raise WireError("bad-field", "round announcement carries no model schema")
        plan = read_round_plan(announcement.config)
        self.plan = plan
        run_id = announcement.run_id
        if run_id in self.left_runs:
            return  # only forward: a run this broker has left never comes back
        current = self.current
        if plan.ended:
            self._on_run_ended(run_id)
            return
        phase: Phase = "evaluate" if announcement.final else "fit"
        key: RoundKey = (run_id, announcement.round, phase)
        if not self._is_ahead(key):
            return  # this round, or one before it: nothing new
        if current is not None:
            self.log.warning(
                "round %d abandoned with %d of %d updates: the server moved on to round %d",
                current.round,
                len(current.contributors),
                current.expected,
                announcement.round,
            )
            self.journal.abandon()
            if current.run_id != run_id:
                self.left_runs.add(current.run_id)
        if self.last_closed is not None and self.last_closed[0] != run_id:
            self.left_runs.add(self.last_closed[0])
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
            model=None
            if phase == "evaluate"
            else model_aggregate(announcement.schema, self.config.fog),
            fog=self.config.fog,
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
        self.start = None
        self._restore(key, message.payload)
        if self.unread_reference is not None:
            with self.rejections.guard(self.unread_reference.topic):
                self._on_reference(self.unread_reference)
        self._handle_waiting()

    def _restore(self, key: RoundKey, announcement: bytes | bytearray) -> None:
        """Fold in what this broker had accepted of the round before it was restarted."""
        current = self.current
        assert current is not None
        restored = self.journal.open(key, announcement)
        if restored.edge_round > 1:
            current.edge_round = restored.edge_round
            current.region_bytes = restored.region_bytes
        if restored.reference is not None:
            with self.rejections.guard(self.topics.global_model):
                start = self._decode_start(restored.reference)
                self._hold_reference(start, journal=False)
                if start.kind == "region" and not self.connected:
                    self.restored_region_model = restored.reference
        journal_topic = self.topics.region_updates(self.region)
        for payload in restored.payloads:
            with self.rejections.guard(journal_topic):
                self._on_update(Received(journal_topic, payload, False), True)
        if restored.payloads or restored.edge_round > 1:
            self.log.info(
                "round %d: restored edge round %d with %d updates from before a restart",
                current.round,
                current.edge_round,
                len(current.contributors),
            )

    def _on_run_ended(self, run_id: str) -> None:
        self.left_runs.add(run_id)
        current = self.current
        if current is not None and current.run_id == run_id:
            self.log.warning(
                "run %s ended with %s %d open (%d of %d updates)",
                run_id,
                "the final evaluation" if current.final else "round",
                current.round,
                len(current.contributors),
                current.expected,
            )
            self.journal.abandon()
            self.current = None
            self.finished = True
        elif self.last_closed is not None and self.last_closed[0] == run_id:
            self.finished = True
        else:
            self.log.info("run %s is over; waiting for the next run", run_id)

    def _is_ahead(self, key: RoundKey) -> bool:
        """Whether `key` is further on than the open and the last closed round of its run."""
        current = self.current
        open_key = None if current is None else (current.run_id, current.round, current.phase)
        for seen in (open_key, self.last_closed):
            if seen is not None and seen[0] == key[0] and _position(key) <= _position(seen):
                return False
        return True

    def _on_update(self, message: Received, restoring: bool = False) -> None:
        current = self.current
        if current is None:
            if self.last_closed is not None:
                self._count_late(self.last_closed[1], restoring)
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
            reference=self.start,
        )
        who = f"{update.kind} from {update.sender}"
        if update.region != self.region:
            raise WireError(
                "wrong-region", f"{who} claims region {update.region!r} on {self.region!r}'s topic"
            )
        # The broker lets only a client itself write its update topic (the ACL), so the
        # topic says who sent it; the journal replays only what passed this check.
        sent_by = self.topics.client_of(message.topic)
        if not restoring and update.sender != sent_by:
            raise WireError(
                "impersonation",
                f"{who} arrived on {message.topic}, the update topic of {sent_by!r}",
            )
        if update.round < current.round or (update.round == current.round and update.kind != kind):
            self._count_late(update.round, restoring or update.kind != "update")
            raise WireError("late", f"{who} is for round {update.round}, which is closed")
        if update.round > current.round:
            raise WireError(
                "future-round", f"{who} is for round {update.round}; round {current.round} is open"
            )
        if kind == "update" and update.edge_round != current.edge_round:
            when = "late" if update.edge_round < current.edge_round else "future-round"
            if when == "late":
                self._count_late(update.round, restoring)
            raise WireError(
                when, f"{who} is for edge round {update.edge_round}; {current.edge_round} is open"
            )
        if current.participants is not None and update.sender not in current.participants:
            raise WireError("not-participant", f"{who}: the server did not pick it this round")
        if update.sender in current.contributors:
            raise WireError("duplicate", f"{who} for round {update.round} arrived twice")
        if update.num_examples <= 0:
            raise WireError("no-examples", f"{who} reports num_examples={update.num_examples}")
        if not restoring:
            self.journal.accept(message.payload)
        current.add(update)
        if kind == "update":
            uploaded = transfer_seconds(update.sent_at, message.received_at)
            if uploaded is not None:
                current.transfers.add_upload(update.sender, uploaded)
            current.transfers.add_download(update.sender, update.metrics.get(DOWNLOAD_METRIC))
            current.transfers.add_choice(update.sender, update.metrics)
        self.log.debug("round %d: %s (%d examples)", current.round, who, update.num_examples)
        self._close_if_complete()

    def _count_late(self, round_number: int, skip: bool) -> None:
        if not skip:
            self.late[round_number] = self.late.get(round_number, 0) + 1

    def _reference_topics(self) -> list[str]:
        """The models clients train from: the round's global model, and under edge rounds
        this broker's own region model (read back after a restart). Coded updates are
        deltas from them, and clipped_mean clips against them."""
        return [self.topics.global_model, self.topics.region_model(self.region)]

    def _on_reference(self, message: Received) -> None:
        """Keep the model the open edge round's clients started from; one that arrives
        before its round opens waits for it."""
        current = self.current
        if not self._needs_reference() or self.start is not None:
            self.unread_reference = message
            return
        assert current is not None
        self.unread_reference = None
        start = self._decode_start(message.payload)
        position, wanted = (start.round, start.edge_round), (current.round, current.edge_round)
        if start.final or position != wanted:
            if position > wanted and not start.final:
                self.unread_reference = message  # its round has not opened here yet
            return
        self._hold_reference(start, message.payload)
        self._handle_waiting()
        self._close_if_complete()

    def _needs_reference(self) -> bool:
        """Whether the open edge round needs its clients' start model: to decode coded
        updates (deltas from it), or for clipped_mean to clip against."""
        current = self.current
        if current is None or current.model is None:
            return False
        return self.plan.update_codec != "float32" or current.waiting_for_reference

    def _decode_start(self, payload: bytes | bytearray) -> Envelope:
        """A global or region model of the open round, checked as its clients check it."""
        current = self.current
        assert current is not None
        start = decode(
            payload,
            kinds={"global", "region"},
            max_bytes=self.config.wire.max_payload_bytes,
            schema=current.schema,
            run_id=current.run_id,
            verify=self.security.verify,
        )
        if start.kind == "region" and start.region != self.region:
            raise WireError("wrong-region", f"region model of {start.region!r} on our topic")
        return start

    def _hold_reference(
        self, start: Envelope, payload: bytes | bytearray = b"", journal: bool = True
    ) -> None:
        """The open edge round's clients trained from `start` (kept in the journal, for a
        restart, unless it came from there)."""
        current = self.current
        assert current is not None
        position, wanted = (start.round, start.edge_round), (current.round, current.edge_round)
        if start.final or position != wanted:
            return  # the journal's, of an edge round that did not begin before a crash
        if journal and self._needs_reference():
            self.journal.keep_reference(payload)
        current.reference = start.tensors
        self.start = Reference(start.tensors, current.schema)
        self.log.debug(
            "round %d: holding the %s model its clients train from", current.round, start.kind
        )

    def _waits_for_reference(self, message: Received) -> bool:
        """Whether `message` is a delta the broker cannot decode yet: its open edge round's
        start model has not arrived. It waits, unacknowledged (redelivered after a crash),
        for as many as the round expects, and a few more."""
        current = self.current
        if current is None or not self._needs_reference() or self.start is not None:
            return False
        if "delta_from" not in read_metadata(message.payload):
            return False
        if len(self.waiting) > 2 * current.expected + 8:
            raise WireError(
                "wrong-reference",
                "too many deltas wait for the model they were trained from; is the global "
                f"model readable on {self.topics.global_model}?",
            )
        self.waiting.append(message)
        return True

    def _handle_waiting(self) -> None:
        """The updates that waited for their start model (or for a newer round)."""
        waiting, self.waiting = self.waiting, []
        for message in waiting:
            if self.handle(message):
                self.session.ack(message)

    def _close_if_complete(self) -> None:
        current = self.current
        if self.connected and current is not None and len(current.contributors) >= current.expected:
            if current.waiting_for_reference:
                self._log_waiting_for_reference(current)
                return
            self._close("all expected updates are in")

    def _log_waiting_for_reference(self, current: RegionRound) -> None:
        if not current.deadline_logged:
            current.deadline_logged = True
            self.log.warning(
                "round %d: waiting for the model the clients started from, to clip against; "
                "may this fog broker read %s?",
                current.round,
                self.topics.global_model,
            )

    def _seconds_to_wait(self) -> float:
        """How long to wait for the next message: until the deadline, at most a second;
        a second when the deadline has passed without enough updates (nothing to do then
        but wait for updates)."""
        if self.current is None:
            return 1.0
        remaining = self.current.deadline - time.monotonic()
        return min(1.0, remaining) if remaining > 0 else 1.0

    def _check_deadline(self) -> None:
        current = self.current
        if current is None or time.monotonic() < current.deadline:
            return
        if current.waiting_for_reference:
            self._log_waiting_for_reference(current)
        elif len(current.contributors) >= min(self.min_updates, current.expected):
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
        key: RoundKey = (current.run_id, current.round, current.phase)
        if current.model is not None and not current.contributors:
            self.log.warning(
                "round %d closed with no updates (%s); nothing to publish", current.round, why
            )
            self._closed(key)
            return
        if current.model is not None:
            current.transfers.stragglers += max(0, current.expected - len(current.contributors))
        if current.model is not None and not current.last_edge_round:
            self._publish_region_model(current, why)
            return
        current.transfers.late, self.late = self.late, {}
        partial = current.partial(self.region, self.rejections.counts)
        payload = self._encode(partial)
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
        self._closed(key)
        if current.final:
            self.finished = True
            self.left_runs.add(current.run_id)

    def _closed(self, key: RoundKey) -> None:
        self.journal.close(key)
        self.last_closed = key
        self.current = None

    def _publish_region_model(self, current: RegionRound, why: str) -> None:
        """End an edge round: the region's mean goes back down to its clients."""
        assert current.model is not None
        region_model = current.region_model(self.region)
        payload = self._encode(region_model)
        current.region_bytes += len(payload) * len(current.contributors)
        # Journal first: a broker killed in between publishes it again once it is back.
        self.journal.next_edge_round(current.edge_round + 1, current.region_bytes, payload)
        self.session.publish(self.topics.region_model(self.region), payload, retain=True)
        self.log.info(
            "round %d: edge round %d of %d closed (%s) with %d updates",
            current.round,
            current.edge_round,
            current.edge_rounds,
            why,
            len(current.contributors),
        )
        current.next_edge_round(time.monotonic() + self.deadline_s)
        # The clients train from this region model as they decode it.
        start = decode(payload, kinds={"region"}, max_bytes=len(payload), schema=current.schema)
        self.start = None
        self._hold_reference(start, journal=False)

    def _encode(self, message: Envelope) -> bytes:
        """A partial or region model in the round's partial codec (an absolute model)."""
        codec = self.plan.partial_codec if message.tensors else "float32"
        return encode(message, codec, self.security.signer, compression=self.plan.compression)


def _position(key: RoundKey) -> tuple[int, int]:
    return key[1], _PHASE_ORDER[key[2]]


def run(
    config: FogflConfig,
    region: str,
    expected: int | None,
    deadline_s: float | None,
    min_updates: int | None,
    serve: bool = False,
) -> int:
    return FogBroker(config, region, expected, deadline_s, min_updates, serve).run()
