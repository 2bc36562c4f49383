"""The MQTT session every role shares: topics, QoS 1, a message inbox, and riding out broker
outages.

Messages arrive on paho's network thread and are queued; each role consumes them from its
own main loop with `receive()`, so role state is touched by one thread only and long work
(training) never stalls the keep-alive.

A broker restart is routine, not an error: paho's network thread reconnects with backoff,
every connect subscribes again, `publish()` waits until the broker has acknowledged the
message, and a persistent session lets the broker queue a role's QoS 1 messages while it
is away.

A payload larger than `wire.chunk_bytes` travels in chunks (fogfl/chunks.py): `publish()`
splits it, `receive()` hands the role the message whole, and `ack()` of that message
acknowledges every chunk of it. `clear_retained()` clears a topic's retained message and
every retained chunk of one, whichever process left them.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from fogfl import chunks
from fogfl.config import MqttSettings, WireSettings
from fogfl.errors import BrokerError, WireError
from fogfl.logs import Rejections, WaitProgress

QOS = 1
MAX_PAYLOAD_BYTES = 268_435_455  # the MQTT limit on one message
# CONNACK reasons that retrying cannot change: bad protocol, client id, login, ban, auth method.
_FINAL_REFUSALS = frozenset({132, 133, 134, 135, 138, 140})
_SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT: another connection took this client id
# Chunks of one message a publisher has sent and not yet seen acknowledged: enough to keep
# the link busy, few enough that the copies cost little memory.
CHUNKS_IN_FLIGHT = 4
# How long the broker may go quiet while it sends a new subscription the retained messages
# it holds before they are taken to be all in (it sends them at once, one after another).
RETAINED_QUIET_S = 0.5

Logger: TypeAlias = "logging.Logger | logging.LoggerAdapter[Any]"


@dataclass(frozen=True)
class Topics:
    """The topic names under a configurable prefix (``fl`` by default)."""

    prefix: str = "fl"

    def updates(self, region: str, client_id: str) -> str:
        """One client's own update topic: the broker's ACL lets only that client write it."""
        return f"{self.prefix}/updates/{region}/{client_id}"

    def region_updates(self, region: str) -> str:
        return f"{self.prefix}/updates/{region}/+"

    def partial(self, region: str) -> str:
        return f"{self.prefix}/partial/{region}"

    def region_model(self, region: str) -> str:
        return f"{self.prefix}/region_model/{region}"

    @property
    def all_updates(self) -> str:
        return f"{self.prefix}/updates/+/+"

    @property
    def all_partials(self) -> str:
        return f"{self.prefix}/partial/+"

    @property
    def global_model(self) -> str:
        return f"{self.prefix}/global_model"

    @property
    def round_announcement(self) -> str:
        return f"{self.prefix}/round"

    @property
    def everything(self) -> str:
        return f"{self.prefix}/#"

    def region_of(self, topic: str) -> str:
        """The region a per-region topic belongs to, or "" for the shared topics."""
        parts = self._parts(topic)
        if len(parts) == 3 and parts[0] == "updates":
            return parts[1]
        per_region = ("partial", "region_model")
        return parts[1] if len(parts) == 2 and parts[0] in per_region else ""

    def client_of(self, topic: str) -> str:
        """The client whose update topic this is, or "" for any other topic."""
        parts = self._parts(topic)
        return parts[2] if len(parts) == 3 and parts[0] == "updates" else ""

    def _parts(self, topic: str) -> list[str]:
        if not topic.startswith(f"{self.prefix}/"):
            return []
        return topic[len(self.prefix) + 1 :].split("/")


def role_client_id(settings: MqttSettings, role: str, name: str = "") -> str:
    """The stable client id of one role instance, e.g. ``fogfl-fl-fog-north``.

    The same on every start of that instance, so the broker hands back the session it left;
    distinct from every other live process (the topic prefix keeps federations apart).
    """
    parts = ["fogfl", settings.topic_prefix.replace("/", "-"), role]
    return "-".join([*parts, name] if name else parts)


@dataclass(frozen=True)
class Received:
    """One message as it arrived.

    `mid` and `qos` identify it for `MqttSession.ack`; `duplicate` is the broker's DUP flag
    (a redelivery, e.g. after a reconnect). `session` counts the broker sessions this
    process has had, so that an acknowledgement never reaches a session that did not
    deliver the message. `received_at` is the Unix time its last byte arrived. A message
    that came in chunks has them as `parts` (acknowledged with it).
    """

    topic: str
    payload: bytes | bytearray
    retained: bool
    mid: int = 0
    qos: int = 0
    duplicate: bool = False
    session: int = field(default=0, compare=False, repr=False)
    received_at: float = field(default=0.0, compare=False, repr=False)
    parts: tuple[Received, ...] = field(default=(), compare=False, repr=False)


class _RetainedProbe:
    """A moment's subscription to chunk subtopics, to learn which the broker keeps retained:
    the broker sends a new subscription every retained message it matches."""

    def __init__(self, filters: list[str]) -> None:
        self.filters = filters
        self.found: set[str] = set()
        self.refused: list[str] = []
        self._subscribed = False
        self._last_seen = 0.0
        self._changed = threading.Condition()

    def covers(self, topic: str) -> bool:
        return any(paho.topic_matches_sub(wanted, topic) for wanted in self.filters)

    def subscribed(self, refused: list[str]) -> None:
        with self._changed:
            self.refused = refused
            self._subscribed = True
            self._last_seen = time.monotonic()
            self._changed.notify_all()

    def saw(self, topic: str) -> None:
        with self._changed:
            self.found.add(topic)
            self._last_seen = time.monotonic()
            self._changed.notify_all()

    def wait(self, deadline: float) -> bool:
        """Wait for the subscription, then for RETAINED_QUIET_S without a retained message;
        False when `deadline` (time.monotonic()) came first."""
        with self._changed:
            while True:
                now = time.monotonic()
                quiet_at = self._last_seen + RETAINED_QUIET_S
                if self._subscribed and now >= quiet_at:
                    return True
                if now >= deadline:
                    return False
                self._changed.wait(
                    (min(quiet_at, deadline) if self._subscribed else deadline) - now
                )


class _ZeroCopyClient(paho.Client):
    """paho's client, queuing outgoing packets as memoryviews.

    paho 2.2 resends `packet[pos:]` after each partial socket write; on a bytearray each
    slice copies the unsent rest, so a 200 MB publish takes seconds (quadratic). Slicing a
    memoryview copies nothing.
    """

    def _packet_queue(
        self, command: int, packet: bytes | bytearray, mid: int, qos: int, info: Any = None
    ) -> MQTTErrorCode:
        return super()._packet_queue(command, memoryview(packet), mid, qos, info)  # type: ignore[arg-type]


class MqttSession:
    """One role's connection to the broker, made to ride out broker restarts.

    - `connect()` keeps trying for `mqtt.connect_timeout_s` and says at INFO what it waits
      for; a refused login fails at once.
    - When the broker goes away, paho's network thread reconnects (after 1 s, doubling up
      to `mqtt.reconnect_max_delay_s`); the outage is logged when it starts and when it
      ends, with how long it lasted, and every connect subscribes again.
    - `publish()` returns once the broker has acknowledged the message, waiting through
      outages for up to `mqtt.publish_timeout_s`.
    - `persistent` (the default, for roles): the broker keeps the session while the role is
      away — its subscriptions and the QoS 1 messages published meanwhile — and hands it
      back when the same client id connects again (MQTT 3.1.1: clean_session=False, kept as
      long as the broker's `persistent_client_expiration` allows; MQTT 5: clean_start=False
      and a session expiry of `mqtt.session_expiry_s`). This needs a stable client id:
      `role_client_id(settings, role, name)` — "fog"/"bridge" with the region, "client"
      with the client id, "server" alone — the same on every start of that instance and
      never used by two live processes at once (they would take the session from each
      other in turn). The monitor, health checks and test recorders pass
      `persistent=False` with an id of their own, so nothing queues up for them.
    - `manual_ack`: incoming QoS 1 messages are acknowledged only by `ack(received)`, once
      the role has handled them durably; until then the broker keeps them and delivers
      them again after a reconnect, so a crash between receipt and durable handling loses
      nothing. Needs `persistent`. The chunks of a message stay unacknowledged with it, so
      after a reconnect they all come again and make the message again (a duplicate).
    - `wire` (default: the defaults): payloads over `wire.chunk_bytes` go out as chunks on
      ``<topic>/chunk/<i>``, every subscription brings its chunk subtopics too, and
      `receive()` reassembles within the `wire.chunk_*` limits and `wire.max_payload_bytes`.
      Chunks that are wrong, or transfers dropped, are recorded in `rejections` (the role's
      own, when it passes it) and acknowledged.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        logger: Logger,
        *,
        persistent: bool = True,
        manual_ack: bool = False,
        wire: WireSettings | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.client_id = client_id
        self.persistent = persistent
        self.manual_ack = manual_ack
        self.log = logger
        self.bytes_sent = 0
        self.bytes_received = 0
        self._where = f"{settings.host}:{settings.port}"
        self._inbox: queue.Queue[Received] = queue.Queue()
        wire = wire or WireSettings()
        self.chunk_bytes = wire.chunk_bytes
        self.rejections = rejections or Rejections(logger)
        self._reassembler: chunks.Reassembler[Received] = chunks.Reassembler(
            chunks.ChunkLimits(
                max_payload_bytes=wire.max_payload_bytes,
                max_transfers=wire.chunk_transfers,
                buffer_bytes=wire.chunk_buffer_bytes,
                timeout_s=wire.chunk_timeout_s,
            ),
            remember_completed=not manual_ack,
        )
        # Topic → chunks of the retained chunked message this session last published there,
        # so that a later one clears the indices it does not overwrite.
        self._retained_chunks: dict[str, int] = {}
        self._probe: _RetainedProbe | None = None  # guarded by _lock
        self._subscriptions: list[str] = []
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._acks = threading.Condition(self._lock)
        # Guarded by _lock:
        self._pending_subacks: set[int] = set()
        self._acked: dict[int, ReasonCode | None] = {}
        self._abandoned: set[int] = set()
        self._connected = False
        self._ever_connected = False
        self._lost_at: float | None = None
        self._session_number = 0
        self._refusal: str | None = None
        self._refused_for_good = False
        self._closed = False

        if settings.protocol == "5":
            self._client = _ZeroCopyClient(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=paho.MQTTv5,
                manual_ack=manual_ack,
            )
        else:
            self._client = _ZeroCopyClient(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=not persistent,
                protocol=paho.MQTTv311,
                manual_ack=manual_ack,
            )
        if settings.username is not None:
            self._client.username_pw_set(settings.username, settings.password)
        if settings.tls.enabled:
            self._client.tls_set(
                ca_certs=_path(settings.tls.ca_file),
                certfile=_path(settings.tls.cert_file),
                keyfile=_path(settings.tls.key_file),
                cert_reqs=ssl.CERT_REQUIRED,
            )
            self._client.tls_insecure_set(settings.tls.insecure)
        self._client.reconnect_delay_set(min_delay=1, max_delay=settings.reconnect_max_delay_s)
        # An exception escaping a callback would end paho's network thread, and with it
        # every reconnection: each callback logs its own failures and carries on.
        self._client.on_connect = self._guarded("connect", self._on_connect)
        self._client.on_disconnect = self._guarded("disconnect", self._on_disconnect)
        self._client.on_subscribe = self._guarded("subscribe", self._on_subscribe)
        self._client.on_publish = self._guarded("publish", self._on_publish)
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        """True while the broker has accepted this session and the connection stands."""
        with self._lock:
            return self._connected

    def connect(self, subscriptions: Sequence[str] = ()) -> MqttSession:
        """Connect and subscribe, trying for `mqtt.connect_timeout_s`; raises BrokerError
        with the reason (unreachable, refused login, no answer) when that is over."""
        wanted = list(subscriptions)
        below = [chunks.chunk_filter(topic) for topic in wanted]
        self._subscriptions = wanted + [topic for topic in below if topic is not None]
        timeout = self.settings.connect_timeout_s
        started = time.monotonic()
        deadline = started + timeout
        progress = WaitProgress(self.log, f"waiting for the MQTT broker at {self._where}", started)
        while True:
            try:
                self._client.connect(
                    self.settings.host,
                    self.settings.port,
                    self.settings.keepalive_s,
                    **self._connect_options(),
                )
                break
            except OSError as exc:  # ssl.SSLError included
                if time.monotonic() >= deadline:
                    raise BrokerError(
                        f"cannot reach the MQTT broker at {self._where}: {exc}; is it running, "
                        "and are --mqtt-host/--mqtt-port right?"
                    ) from None
                progress.report(str(exc))
                time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
        self._client.loop_start()
        while not self._subscribed.wait(max(0.0, min(0.1, deadline - time.monotonic()))):
            with self._lock:
                refusal, final = self._refusal, self._refused_for_good
            if final or time.monotonic() >= deadline:
                self.close()
                if refusal is not None:
                    raise BrokerError(
                        f"the MQTT broker at {self._where} refused the session: {refusal}"
                    )
                raise BrokerError(
                    f"the MQTT broker at {self._where} accepted no session within "
                    f"{timeout:g} s; is something else listening on that port?"
                )
            progress.report(refusal or "connected, no session yet")
        progress.finish(f"connected to the MQTT broker at {self._where}")
        self.log.debug(
            "connected to %s as %s (%s session), subscribed to %s",
            self._where,
            self.client_id,
            "persistent" if self.persistent else "clean",
            self._subscriptions,
        )
        return self

    def receive(self, timeout: float | None = None) -> Received | None:
        """The next message (whole, if it came in chunks), or None when `timeout` seconds
        pass without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for step in self._reassembler.expire():
                self._finish_chunks(step)
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            expiry = self._reassembler.seconds_to_expiry()
            if expiry is not None:
                wait = expiry if wait is None else min(wait, expiry)
            try:
                received = self._inbox.get(timeout=wait)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            message = self._reassemble(received)
            if message is not None:
                return message

    def publish(self, topic: str, payload: bytes | bytearray, *, retain: bool = False) -> None:
        """Publish at QoS 1 and return once the broker has acknowledged it (every chunk of
        it, when it is larger than `wire.chunk_bytes`).

        While the broker is away the message waits, and goes out again after every
        reconnect until acknowledged, so a receiver may get it twice (and drop the copy).
        Raises BrokerError after `mqtt.publish_timeout_s` (for each chunk), or at once when
        the broker refuses it (an MQTT 5 reason code) or it cannot be an MQTT message.
        """
        if len(payload) > self.chunk_bytes:
            self._publish_chunked(topic, payload, retain)
            return
        deadline = time.monotonic() + self.settings.publish_timeout_s
        self._settle(self._send(topic, payload, retain), topic, len(payload), deadline)
        if retain:
            # A whole message replaces a chunked one: its indices must not outlive it.
            for index in range(self._retained_chunks.pop(topic, 0)):
                self.publish(chunks.chunk_topic(topic, index), b"", retain=True)

    def clear_retained(self, topics: Sequence[str], *, chunks_of: Sequence[str] = ()) -> int:
        """Clear, with empty retained messages, what the broker keeps retained on each of
        `topics` and on every `<topic>/chunk/<i>` of them and of `chunks_of` (whose
        messages a new one will replace), whichever process left it. Nothing says how many
        chunks a process that is gone left, so a moment's subscription to the chunk
        subtopics learns which are there (the session's login must be allowed to read
        them). Returns how many chunk topics were cleared."""
        left = self._retained_chunk_topics([*topics, *chunks_of])
        for topic in left:
            self.publish(topic, b"", retain=True)
        for topic in [*topics, *chunks_of]:
            self._retained_chunks.pop(topic, None)
        for topic in topics:
            self.publish(topic, b"", retain=True)
        return len(left)

    def _retained_chunk_topics(self, topics: Sequence[str]) -> list[str]:
        """The chunk topics of `topics` on which the broker holds a retained message."""
        filters = [wanted for wanted in map(chunks.chunk_filter, topics) if wanted is not None]
        if not filters:
            return []
        probe = _RetainedProbe(filters)
        with self._lock:
            self._probe = probe
        try:
            _, mid = self._client.subscribe([(wanted, QOS) for wanted in filters])
            complete = mid is not None and probe.wait(
                time.monotonic() + self.settings.publish_timeout_s
            )
        finally:
            with self._lock:
                self._probe = None
            self._client.unsubscribe(filters)
        if not complete or probe.refused:
            why = ", ".join(probe.refused) or "no answer to the subscription"
            self.log.warning(
                "could not learn which chunks are left retained on %s (%s); chunks an "
                "earlier process left there stay",
                ", ".join(topics),
                why,
            )
        return sorted(probe.found, key=lambda topic: (len(topic), topic))

    def _publish_chunked(self, topic: str, payload: bytes | bytearray, retain: bool) -> None:
        """Publish `payload` as chunks, at most CHUNKS_IN_FLIGHT unacknowledged at a time;
        retained, clear what an earlier message on `topic` left: the whole message there,
        and the chunk indices beyond this one's."""
        in_flight: deque[tuple[int, str, int, float]] = deque()
        count = 0
        try:
            for count, chunk in enumerate(chunks.split(payload, self.chunk_bytes), start=1):
                if len(in_flight) == CHUNKS_IN_FLIGHT:
                    self._settle(*in_flight.popleft())
                where = chunks.chunk_topic(topic, count - 1)
                deadline = time.monotonic() + self.settings.publish_timeout_s
                in_flight.append((self._send(where, chunk, retain), where, len(chunk), deadline))
            while in_flight:
                self._settle(*in_flight.popleft())
        finally:
            with self._acks:
                self._abandoned.update(mid for mid, *_ in in_flight)
        if not retain:
            return
        previous = self._retained_chunks.pop(topic, None)
        if previous is None:
            self.publish(topic, b"", retain=True)
        for index in range(count, previous or 0):
            self.publish(chunks.chunk_topic(topic, index), b"", retain=True)
        self._retained_chunks[topic] = count

    def _send(self, topic: str, payload: bytes | bytearray, retain: bool) -> int:
        """Hand one MQTT message to paho; its mid, for `_settle`."""
        size = len(payload)
        if size > MAX_PAYLOAD_BYTES:
            raise BrokerError(
                f"cannot publish {size:,} bytes on {topic}: an MQTT message carries at most "
                f"{MAX_PAYLOAD_BYTES:,} bytes"
            )
        if self._closed:
            raise BrokerError(f"cannot publish on {topic}: the MQTT session is closed")
        try:
            info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        except ValueError as exc:
            raise BrokerError(f"cannot publish {size:,} bytes on {topic}: {exc}") from None
        # paho keeps a QoS 1 message until its PUBACK, also one published while
        # disconnected (rc NO_CONN), and sends every unacknowledged one again (DUP) after
        # each reconnect, clean session or not. So waiting is all the retrying there is
        # to do: a copy of our own would only add a duplicate. (paho's wait_for_publish
        # cannot be used: it raises at once when rc was NO_CONN, even once delivered.)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerError(
                f"publishing {size:,} bytes on {topic} failed: {paho.error_string(info.rc)}"
            )
        return info.mid

    def _settle(self, mid: int, topic: str, size: int, deadline: float) -> None:
        """Wait for the broker's acknowledgement of one message `_send` handed over."""
        timeout = self.settings.publish_timeout_s
        acknowledged, reason = self._wait_for_puback(mid, deadline)
        if not acknowledged:
            raise BrokerError(
                f"the MQTT broker at {self._where} did not acknowledge {size:,} bytes on "
                f"{topic} within {timeout:g} s (mqtt.publish_timeout_s){self._outage_note()}"
            )
        if reason is not None and reason.is_failure:
            raise BrokerError(f"the MQTT broker at {self._where} refused {topic}: {reason}")
        self.bytes_sent += size

    def ack(self, received: Received) -> None:
        """Acknowledge a message of a `manual_ack` session once the role is done with it —
        handled durably, dropped or rejected alike (an unacknowledged message comes back
        after every reconnect). Ack promptly: Mosquitto sends a session at most
        `max_inflight_messages` unacknowledged messages (20 unless configured; fogfl's
        configurations say 0, no cap, as a chunked message needs) and queues the rest."""
        for part in received.parts:
            self.ack(part)
        if not self.manual_ack or received.qos == 0 or received.parts:
            return
        with self._lock:
            delivered_here = received.session == self._session_number and not self._closed
        # After a reconnect without the old session the broker no longer knows the message
        # (and may give its mid to another): nothing to acknowledge.
        if delivered_here:
            self._client.ack(received.mid, received.qos)

    def close(self) -> None:
        """Disconnect. A persistent session stays with the broker for the next connect."""
        with self._acks:
            self._closed = True
            self._acks.notify_all()
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connect_options(self) -> dict[str, Any]:
        if self.settings.protocol != "5":
            return {}  # 3.1.1 takes clean_session in the constructor
        if not self.persistent:
            return {"clean_start": True}
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        return {"clean_start": False, "properties": properties}

    def _wait_for_puback(self, mid: int, deadline: float) -> tuple[bool, ReasonCode | None]:
        with self._acks:
            while mid not in self._acked:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    # paho still holds it (and may deliver it later); its PUBACK is no news.
                    self._abandoned.add(mid)
                    return False, None
                self._acks.wait(remaining)
            return True, self._acked.pop(mid)

    def _outage_note(self) -> str:
        with self._lock:
            lost_at, connected = self._lost_at, self._connected
        if connected:
            return "; the connection stands, so the broker may be overloaded"
        if lost_at is None:
            return "; not connected"
        return f"; the broker has been unreachable for {time.monotonic() - lost_at:.0f} s"

    def _guarded(self, what: str, callback: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            try:
                callback(*args)
            except Exception:
                self.log.exception("the MQTT %s callback failed; the session carries on", what)

        return call

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if reason.is_failure:
            self._on_refused(reason)
            return
        with self._lock:
            first = not self._ever_connected
            self._ever_connected = True
            self._connected = True
            self._refusal = None
            if first or not flags.session_present:
                self._session_number += 1
            lost_at, self._lost_at = self._lost_at, None
        if lost_at is not None:
            if flags.session_present:
                session = "the broker kept our session"
            elif self.persistent:
                session = (
                    "the broker lost our session (no persistence, or killed before it saved "
                    "it): what was published for us meanwhile is gone"
                )
            else:
                session = "subscribing again"
            self.log.warning(
                "back on the MQTT broker at %s after %.1f s; %s",
                self._where,
                time.monotonic() - lost_at,
                session,
            )
        elif first and flags.session_present:
            self.log.info("resuming the session the broker kept for %s", self.client_id)
        self._subscribe(client, first)

    def _subscribe(self, client: paho.Client, first: bool) -> None:
        """Subscribe on every connect: a broker that lost the session lost our subscriptions."""
        if not self._subscriptions:
            self._subscribed.set()
            return
        requests: list[tuple[str, Any]]
        if self.settings.protocol == "5":
            # After a reconnect, only a subscription the broker had lost brings the
            # retained messages again (MQTT 3.1.1 has no such option: they come again).
            handling = (
                SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
                if first
                else SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            requests = [
                (topic, SubscribeOptions(qos=QOS, retainHandling=handling))
                for topic in self._subscriptions
            ]
        else:
            requests = [(topic, QOS) for topic in self._subscriptions]
        _, mid = client.subscribe(requests)
        with self._lock:
            # A SUBACK lost with an earlier connection will never come.
            self._pending_subacks = set() if mid is None else {mid}

    def _on_refused(self, reason: ReasonCode) -> None:
        text = str(reason)
        with self._lock:
            repeated = self._refusal == text
            self._refusal = text
            if not self._ever_connected and reason.value in _FINAL_REFUSALS:
                self._refused_for_good = True
        if not repeated:
            self.log.error("the MQTT broker at %s refused the connection: %s", self._where, text)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Any,
    ) -> None:
        with self._lock:
            probe = None if mid in self._pending_subacks else self._probe
        if probe is not None:
            probe.subscribed(
                [
                    f"{topic} ({reason})"
                    for topic, reason in zip(probe.filters, reasons, strict=False)
                    if reason.is_failure
                ]
            )
            return
        refused = [
            f"{topic} ({reason})"
            for topic, reason in zip(self._subscriptions, reasons, strict=False)
            if reason.is_failure
        ]
        if refused:
            self.log.error("the MQTT broker refused the subscription to %s", ", ".join(refused))
        with self._lock:
            self._pending_subacks.discard(mid)
            done = not self._pending_subacks
        if done:
            self._subscribed.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
            if self._closed or not was_connected:
                return
            self._lost_at = time.monotonic()
        if reason.value == _SESSION_TAKEN_OVER:
            self.log.error(
                "the MQTT broker at %s gave our session to another connection with client id "
                "%s; do two processes use one id?",
                self._where,
                self.client_id,
            )
        else:
            # Unless the broker said why, paho reports a closed socket as "Unspecified error".
            said = flags.is_disconnect_packet_from_server
            why = str(reason) if said or reason.value != 128 else "connection closed"
            self.log.warning("lost the MQTT broker at %s (%s); reconnecting", self._where, why)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        with self._acks:
            if mid in self._abandoned:
                self._abandoned.discard(mid)
                return
            self._acked[mid] = reason
            self._acks.notify_all()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._probe_takes(message):
            if self.manual_ack and message.qos > 0:
                client.ack(message.mid, message.qos)
            return
        if not message.payload or not self._subscribed_to(message.topic):
            # An empty payload clears a retained message (a new run's server does so); it is
            # never a fogfl message, and no role needs to see it. A topic this session never
            # subscribed to is the broker's mistake (amqtt 0.11 sends a connecting client the
            # retained messages of every other client's subscriptions), never the role's news.
            if self.manual_ack and message.qos > 0:
                client.ack(message.mid, message.qos)
            return
        try:
            with self._lock:
                session = self._session_number
            received = Received(
                message.topic,
                message.payload,
                bool(message.retain),
                message.mid,
                message.qos,
                bool(message.dup),
                session,
                time.time(),
            )
        except Exception as exc:  # e.g. a topic that is not UTF-8
            self.log.warning("dropped an MQTT message nobody can read: %s", exc)
            if self.manual_ack and message.qos > 0:
                client.ack(message.mid, message.qos)  # or it would come back forever
            return
        self.bytes_received += len(message.payload)
        self._inbox.put(received)

    def _reassemble(self, received: Received) -> Received | None:
        """`received` itself, unless it is a chunk: then the message it completes, or None."""
        where = chunks.located(received.topic)
        if where is None:
            return received
        topic, index = where
        try:
            chunk = chunks.read_chunk(received.payload)
            if chunk is not None and chunk.index != index:
                raise WireError(
                    "bad-chunk", f"chunk {chunk.index} of a transfer came on the topic of {index}"
                )
        except WireError as error:
            self._finish_chunks(chunks.Step(topic, receipts=[received], error=error))
            return None
        if chunk is None:
            return received  # no chunk: a message for the role, whatever it is
        whole = None
        # The receipt acknowledges the chunk; its bytes are in the transfer's buffer now.
        receipt = replace(received, payload=b"")
        for step in self._reassembler.add(topic, chunk, receipt, retained=received.retained):
            if step.payload is None:
                self._finish_chunks(step)
                continue
            parts = tuple(step.receipts)
            whole = Received(
                topic,
                step.payload,
                all(part.retained for part in parts),
                qos=QOS,
                duplicate=any(part.duplicate for part in parts),
                session=self._session_number,
                received_at=max(part.received_at for part in parts),
                parts=parts,
            )
        return whole

    def _finish_chunks(self, step: chunks.Step[Received]) -> None:
        """Acknowledge chunks that will not make a message; record why."""
        for part in step.receipts:
            self.ack(part)
        if step.error is not None:
            self.rejections.record_error(step.error, step.topic)
        elif step.note:
            self.log.debug("ignored chunks on %s: %s", step.topic, step.note)

    def _probe_takes(self, message: paho.MQTTMessage) -> bool:
        """Note a retained chunk a `clear_retained` probe asked for; True when the role did
        not subscribe to it, so has no use for it."""
        with self._lock:
            probe = self._probe
        if probe is None:
            return False
        try:
            topic = message.topic
            if not probe.covers(topic):
                return False
        except (TypeError, ValueError):  # a topic that is not UTF-8 was not asked for
            return False
        if message.retain and message.payload:
            probe.saw(topic)
        return not self._subscribed_to(topic)

    def _subscribed_to(self, topic: str) -> bool:
        try:
            return any(paho.topic_matches_sub(wanted, topic) for wanted in self._subscriptions)
        except (TypeError, ValueError):  # a topic that is not UTF-8: let the check below say so
            return True


def _path(value: object) -> str | None:
    return None if value is None else str(value)
