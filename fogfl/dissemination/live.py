"""One event through a real MQTT broker, counted by the broker and by the subscribers.

N nodes: one publisher and N−1 subscribers (paho clients) on a fresh topic. The publisher
sends one update at QoS 1; each subscriber counts what it receives. Mosquitto's ``$SYS``
counters give what the broker itself received and sent, read before and after the event.

Reading ``$SYS`` costs broker traffic of its own, so the reads use a minimal MQTT client on
a raw socket that sees every byte the broker sends it (it reads until the broker closes the
connection after DISCONNECT) and subtracts exactly that. A read during which the broker
refreshed its ``$SYS`` tree (seen as a non-retained message) is never used as a snapshot.
"""

from __future__ import annotations

import logging
import secrets
import selectors
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fogfl.broker import LocalBroker, mosquitto_binary, mosquitto_conf, start_broker
from fogfl.dissemination.experiments import Advance, ExperimentResult, Row
from fogfl.dissemination.models import mqtt_event
from fogfl.errors import BrokerError
from fogfl.processes import ChildProcess, free_port, wait_for_port

log = logging.getLogger("fogfl.dissemination")

QOS = 1
SYS_INTERVAL_S = 1  # for the Mosquitto this module starts; the default of 10 s is slow to wait for
POLL_S = 0.3
UPTIME = "$SYS/broker/uptime"
PUBLISH_RECEIVED = "$SYS/broker/publish/messages/received"
PUBLISH_SENT = "$SYS/broker/publish/messages/sent"
BYTES_SENT = "$SYS/broker/bytes/sent"
SUBSCRIPTIONS = "$SYS/broker/subscriptions/count"
VERSION = "$SYS/broker/version"  # retained since start-up, subscribed last: ends a read
SYS_TOPICS = (UPTIME, PUBLISH_RECEIVED, PUBLISH_SENT, BYTES_SENT, SUBSCRIPTIONS, VERSION)


@dataclass(frozen=True)
class LiveOptions:
    nodes: int = 200
    message_bytes: int = 50
    host: str = "127.0.0.1"
    port: int | None = None  # an existing broker; None starts one
    timeout_s: float = 60.0
    workdir: Path | None = None


@dataclass
class SysRead:
    """One ``$SYS`` read: the counter values it saw and what the read itself cost the broker."""

    values: dict[str, str]
    publishes: int  # PUBLISH packets the broker sent this reader
    bytes: int  # every byte the broker sent this reader
    refreshed: bool  # the broker refreshed $SYS while we were connected

    @property
    def cycle(self) -> int:
        return _int(self.values.get(UPTIME, "0").split()[0])

    def counter(self, topic: str) -> int:
        return _int(self.values.get(topic, "0"))


@dataclass
class LiveMeasurement:
    broker_kind: str
    topic: str
    received: int
    subscribers_reached: int
    seconds_to_last: float | None
    broker_publish_in: int | None = None
    broker_publish_out: int | None = None
    broker_bytes_out: int | None = None
    unavailable: str | None = None  # why the broker-side counts are missing
    reads: list[SysRead] = field(default_factory=list)


def run_live(options: LiveOptions, advance: Advance) -> ExperimentResult:
    """Publish one event to N−1 real subscribers and compare the counts with the model."""
    if options.nodes < 2:
        raise BrokerError(
            f"live needs at least 2 nodes (a publisher and a subscriber), got {options.nodes}"
        )
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="fogfl-dissemination-live-"))
    broker = _broker(options, workdir)
    try:
        measurement = measure(broker, options, advance)
    finally:
        broker.stop()
    return _result(options, measurement)


def measure(broker: LocalBroker, options: LiveOptions, advance: Advance) -> LiveMeasurement:
    """Run the event on a broker that is already up."""
    host, port = broker.host, broker.port
    deadline = time.monotonic() + options.timeout_s
    topic = f"fogfl/dissemination/{secrets.token_hex(4)}"
    reads: list[SysRead] = []
    with_sys = broker.kind != "embedded"
    baseline = _sys_snapshot(host, port, deadline, reads, lambda read: True) if with_sys else None
    clients = _LiveClients(host, port, topic, options.nodes - 1, advance)
    try:
        clients.connect(deadline)
        before = None
        if baseline is not None:
            subscriptions = baseline.counter(SUBSCRIPTIONS) + options.nodes - 1
            before = _sys_snapshot(
                host,
                port,
                deadline,
                reads,
                lambda read: read.counter(SUBSCRIPTIONS) >= subscriptions,
            )
        first_read = len(reads) - 1
        seconds_to_last = clients.publish(secrets.token_bytes(options.message_bytes), deadline)
        advance(1)
        result = LiveMeasurement(
            broker_kind=broker.kind,
            topic=topic,
            received=sum(clients.counts),
            subscribers_reached=sum(1 for count in clients.counts if count),
            seconds_to_last=seconds_to_last,
            reads=reads,
        )
        if before is None:
            result.unavailable = (
                "the embedded broker has no $SYS counters; "
                "install Mosquitto (apt-get install mosquitto) for the broker-side counts"
                if not with_sys
                else "the broker published no usable $SYS snapshot"
            )
        else:
            after = _sys_snapshot(
                host,
                port,
                deadline,
                reads,
                lambda read: (
                    read.cycle > before.cycle
                    and read.counter(PUBLISH_RECEIVED) > before.counter(PUBLISH_RECEIVED)
                ),
            )
            if after is None:
                result.unavailable = "no $SYS snapshot after the event arrived in time"
            else:
                _broker_counts(result, before, after, reads[first_read:-1])
        advance(1)
        return result
    finally:
        clients.close()


def _broker_counts(
    result: LiveMeasurement, before: SysRead, after: SysRead, between: list[SysRead]
) -> None:
    """Counter differences, less what the reads from `before` up to `after` cost: they
    happened between the two snapshots, so the broker counted their traffic too."""
    result.broker_publish_in = after.counter(PUBLISH_RECEIVED) - before.counter(PUBLISH_RECEIVED)
    result.broker_publish_out = (
        after.counter(PUBLISH_SENT)
        - before.counter(PUBLISH_SENT)
        - sum(read.publishes for read in between)
    )
    result.broker_bytes_out = (
        after.counter(BYTES_SENT) - before.counter(BYTES_SENT) - sum(read.bytes for read in between)
    )


def live_steps(options: LiveOptions) -> int:
    return options.nodes - 1 + 2


def publish_packet_bytes(topic: str, payload_bytes: int, qos: int) -> int:
    """Size on the wire of an MQTT 3.1.1 PUBLISH packet."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + payload_bytes
    return 1 + len(_varint(remaining)) + remaining


# --- the broker ---------------------------------------------------------------------------


def _broker(options: LiveOptions, workdir: Path) -> LocalBroker:
    if options.port is not None:
        return LocalBroker("external", options.host, options.port)
    binary = mosquitto_binary()
    if binary is None:
        log.warning("no mosquitto binary: using the embedded broker, which has no $SYS counters")
        return start_broker("embedded", workdir, host=options.host)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port(options.host)
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_conf(port, options.host) + f"sys_interval {SYS_INTERVAL_S}\n")
    process = ChildProcess("mosquitto", [binary, "-c", str(conf)], workdir / "mosquitto.log")
    if process.poll() is None and wait_for_port(options.host, port, 15.0):
        return LocalBroker("mosquitto", options.host, port, process)
    process.stop(grace=1.0)
    raise BrokerError(f"mosquitto did not start; see {workdir / 'mosquitto.log'}")


# --- publisher and subscribers (paho) -----------------------------------------------------


class _LiveClients:
    """The publisher and the subscribers: paho clients driven by one selector loop in the
    calling thread. (paho's own loop gives each client a thread that select()s, which
    stops at about 340 clients: select() cannot watch file descriptors above 1023.)"""

    def __init__(self, host: str, port: int, topic: str, subscribers: int, advance: Advance):
        self.host, self.port, self.topic = host, port, topic
        self.advance = advance
        self.selector = selectors.DefaultSelector()
        self.counts = [0] * subscribers
        self.subscribed = 0
        self.publisher_ready = False
        self.last_delivery: float | None = None
        self.publisher = self._client("publisher")
        self.publisher.on_connect = self._on_publisher_connect
        self.subscribers = [
            self._client(f"subscriber-{index}", index) for index in range(subscribers)
        ]
        for client in self.subscribers:
            client.on_connect = self._on_subscriber_connect
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message

    def _client(self, name: str, index: int | None = None) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self.topic}/{name}",
            protocol=paho.MQTTv311,
            userdata=index,
        )
        client.on_socket_close = self._on_socket_close
        return client

    @property
    def clients(self) -> list[paho.Client]:
        return [self.publisher, *self.subscribers]

    def connect(self, deadline: float) -> None:
        """Connect everyone and wait until every subscriber is subscribed."""
        # One connection at a time: hundreds of simultaneous connects overflow the broker's
        # listen backlog, and the clients then back off for seconds before retrying.
        for client in self.clients:
            try:
                client.connect(self.host, self.port, keepalive=300)
            except OSError as error:
                raise BrokerError(_unreachable(self.host, self.port, error)) from None
            sock = client.socket()
            if sock is None:
                raise BrokerError(f"the broker at {self.host}:{self.port} closed the connection")
            self.selector.register(sock, selectors.EVENT_READ, client)
        ready = self._run_until(
            lambda: self.publisher_ready and self.subscribed == len(self.subscribers), deadline
        )
        if not ready:
            raise BrokerError(
                f"only {self.subscribed} of {len(self.subscribers)} subscribers got subscribed "
                "in time; try fewer --nodes or a longer --live-timeout"
            )

    def publish(self, payload: bytes, deadline: float) -> float | None:
        """Publish the event and wait until every subscriber has it (or the deadline);
        returns the seconds from the publish to the last delivery."""
        sent_at = time.perf_counter()
        info = self.publisher.publish(self.topic, payload, qos=QOS)
        self._run_until(
            lambda: info.is_published() and sum(self.counts) >= len(self.subscribers), deadline
        )
        return None if self.last_delivery is None else self.last_delivery - sent_at

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()
        # The broker closes each connection after DISCONNECT; reading that closes ours.
        self._run_until(lambda: not self.selector.get_map(), time.monotonic() + 2.0)
        self.selector.close()

    def _run_until(self, done: Callable[[], bool], deadline: float) -> bool:
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _events in self.selector.select(min(remaining, 0.1)):
                key.data.loop_read()
            for client in self.clients:
                if client.want_write():
                    client.loop_write()
        return True

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self.selector.unregister(sock)

    def _on_publisher_connect(self, client: paho.Client, *args: Any) -> None:
        self.publisher_ready = True

    def _on_subscriber_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe(self.topic, qos=QOS)

    def _on_subscribe(self, client: paho.Client, index: int, *args: Any) -> None:
        self.subscribed += 1
        self.advance(1)

    def _on_message(self, client: paho.Client, index: int, message: Any) -> None:
        self.counts[index] += 1
        self.last_delivery = time.perf_counter()


# --- $SYS reads (a minimal MQTT 3.1.1 client on a raw socket) ----------------------------


def _sys_snapshot(
    host: str,
    port: int,
    deadline: float,
    reads: list[SysRead],
    wanted: Callable[[SysRead], bool],
) -> SysRead | None:
    """Read $SYS until a clean read (no refresh during it, newer than any refresh seen)
    satisfies `wanted`; every read is appended to `reads`. None on timeout or no $SYS."""
    while time.monotonic() < deadline:
        read = read_sys(host, port, min(5.0, max(0.1, deadline - time.monotonic())))
        if read is None:
            return None
        reads.append(read)
        refreshed = [r.cycle for r in reads if r.refreshed]
        if not read.refreshed and read.cycle > max(refreshed, default=-1) and wanted(read):
            return read
        time.sleep(POLL_S)
    return None


def read_sys(host: str, port: int, timeout: float) -> SysRead | None:
    """Connect, take the retained $SYS values, disconnect, and read until the broker closes
    the connection; None when the broker publishes no $SYS tree."""
    client_id = f"fogfl-sys-{secrets.token_hex(4)}".encode()
    connect = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", 60) + _string(client_id)
    subscribe = struct.pack("!H", 1) + b"".join(_string(t.encode()) + b"\x00" for t in SYS_TOPICS)
    stream = _PacketStream()
    values: dict[str, str] = {}
    publishes = 0
    refreshed = False
    disconnected = False
    end = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        raise BrokerError(_unreachable(host, port, error)) from None
    with sock:
        sock.sendall(_packet(0x10, connect) + _packet(0x82, subscribe))
        while time.monotonic() < end:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                return SysRead(values, publishes, len(stream.buffer), refreshed)
            for header, body in stream.feed(chunk):
                if header & 0xF0 != 0x30:  # not a PUBLISH
                    continue
                publishes += 1
                topic_length = struct.unpack("!H", body[:2])[0]
                values[body[2 : 2 + topic_length].decode()] = body[2 + topic_length :].decode()
                refreshed = refreshed or not header & 0x01  # no RETAIN flag: a live refresh
            if VERSION in values and not disconnected:
                sock.sendall(b"\xe0\x00")  # DISCONNECT; the broker then closes the socket
                disconnected = True
    return None


class _PacketStream:
    """MQTT packets out of a byte stream, each returned once it is complete."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.position = 0

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self.buffer += chunk
        packets = []
        while (packet := self._next()) is not None:
            packets.append(packet)
        return packets

    def _next(self) -> tuple[int, bytes] | None:
        length, shift, cursor = 0, 0, self.position + 1
        while True:
            if cursor >= len(self.buffer):
                return None
            byte = self.buffer[cursor]
            length |= (byte & 0x7F) << shift
            shift += 7
            cursor += 1
            if not byte & 0x80:
                break
        if cursor + length > len(self.buffer):
            return None
        packet = (self.buffer[self.position], bytes(self.buffer[cursor : cursor + length]))
        self.position = cursor + length
        return packet


def _unreachable(host: str, port: int, error: OSError) -> str:
    reason = error.strerror or error
    return f"cannot reach the MQTT broker at {host}:{port} ({reason}); is it running?"


def _packet(header: int, body: bytes) -> bytes:
    return bytes([header]) + _varint(len(body)) + body


def _string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


# --- the result ---------------------------------------------------------------------------


def _result(options: LiveOptions, measured: LiveMeasurement) -> ExperimentResult:
    n = options.nodes
    model = mqtt_event(n)
    wire_out = (n - 1) * publish_packet_bytes(measured.topic, options.message_bytes, QOS) + (
        4 if QOS else 0  # the PUBACK to the publisher
    )

    def cell(value: int | None) -> int | str:
        return "" if value is None else value

    rows: list[Row] = [
        {
            "quantity": "PUBLISH into the broker",
            "unit": "messages",
            "model": 1,
            "measured": cell(measured.broker_publish_in),
            "source": "$SYS",
        },
        {
            "quantity": "PUBLISH out of the broker",
            "unit": "messages",
            "model": n - 1,
            "measured": cell(measured.broker_publish_out),
            "source": "$SYS",
        },
        {
            "quantity": "updates received by subscribers",
            "unit": "messages",
            "model": n - 1,
            "measured": measured.received,
            "source": "subscribers",
        },
        {
            "quantity": "subscribers reached",
            "unit": "nodes",
            "model": n - 1,
            "measured": measured.subscribers_reached,
            "source": "subscribers",
        },
        {
            "quantity": "bytes out of the broker (wire)",
            "unit": "bytes",
            "model": wire_out,
            "measured": cell(measured.broker_bytes_out),
            "source": "$SYS",
        },
        {
            "quantity": "bytes per event in the model (payload only)",
            "unit": "bytes",
            "model": model.bytes(options.message_bytes, 0),
            "measured": "",
            "source": "model",
        },
    ]
    matches = (
        measured.broker_publish_out == n - 1
        and measured.broker_publish_in == 1
        and measured.received == n - 1
    )
    summary: dict[str, Any] = {
        "broker": measured.broker_kind,
        "nodes": n,
        "topic": measured.topic,
        "qos": QOS,
        "model_messages_per_event": model.messages,
        "broker_publish_in": measured.broker_publish_in,
        "broker_publish_out": measured.broker_publish_out,
        "broker_bytes_out": measured.broker_bytes_out,
        "predicted_wire_bytes_out": wire_out,
        "received": measured.received,
        "subscribers_reached": measured.subscribers_reached,
        "seconds_to_last_delivery": measured.seconds_to_last,
        "sys_reads": len(measured.reads),
        "broker_counts_unavailable": measured.unavailable,
        "matches_model": matches if measured.unavailable is None else None,
    }
    broker_side = (
        f"in {measured.broker_publish_in} · out {measured.broker_publish_out} "
        f"(model 1 · {n - 1}); {measured.broker_bytes_out:,} B out (wire model {wire_out:,})"
        if measured.unavailable is None
        else f"unavailable: {measured.unavailable}"
    )
    highlights = [
        ("broker $SYS: PUBLISH in · out", broker_side),
        (
            "received by subscribers",
            f"{measured.received} of {n - 1} ({measured.subscribers_reached} subscribers reached)",
        ),
    ]
    if measured.seconds_to_last is not None:
        highlights.append(("publish to last delivery", f"{measured.seconds_to_last * 1000:.1f} ms"))
    return ExperimentResult("live", rows, summary, highlights)
