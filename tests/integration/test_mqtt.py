"""The MQTT session against a real broker: large payloads, retained messages, bad hosts, and
riding out broker restarts (publish through an outage, resubscription, persistent sessions,
manual acknowledgement)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fogfl.broker import LocalBroker, start_broker
from fogfl.config import MqttSettings
from fogfl.errors import BrokerError
from fogfl.mqtt import MqttSession, Received
from fogfl.processes import ChildProcess, free_port
from fogfl.wire import Envelope, decode, encode

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test")
PROTOCOLS = ["3.1.1", "5"]
NEVER_S = 2.0  # how long to wait for a message that must not come


def settings_for(broker: LocalBroker, **values: object) -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port, **values)


def session(
    broker: LocalBroker,
    name: str,
    topics: list[str] | None = None,
    *,
    persistent: bool = False,
    manual_ack: bool = False,
    **values: object,
) -> MqttSession:
    return MqttSession(
        settings_for(broker, **values), name, LOG, persistent=persistent, manual_ack=manual_ack
    ).connect(topics or [])


def payloads(received: list[Received]) -> list[bytes]:
    return [bytes(r.payload) for r in received]


def drain(receiver: MqttSession, timeout: float = NEVER_S) -> list[Received]:
    """Everything that arrives until `timeout` seconds pass without a message."""
    seen = []
    while (message := receiver.receive(timeout)) is not None:
        seen.append(message)
    return seen


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout} s for {what}")


class Background:
    """A call on a thread of its own, to watch it wait and to collect its outcome."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:
            self.error = exc

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout} s"
        if self.error is not None:
            raise self.error


def test_a_large_model_arrives_intact(fresh_broker: LocalBroker) -> None:
    receiver = session(fresh_broker, "receiver", ["fl/global_model"])
    sender = session(fresh_broker, "sender")
    weights = {
        "w": np.random.default_rng(0).normal(size=(3, 1000, 1000)).astype(np.float32)
    }  # 12 MB
    sender.publish(
        "fl/global_model",
        encode(Envelope(kind="global", run_id="r", round=1, sender="server", tensors=weights)),
    )
    received = receiver.receive(timeout=30)
    assert received is not None
    got = decode(received.payload, kinds={"global"}, max_bytes=10**9)
    np.testing.assert_array_equal(got.tensors["w"], weights["w"])
    sender.close()
    receiver.close()


def test_a_late_subscriber_gets_the_retained_global_model(fresh_broker: LocalBroker) -> None:
    sender = session(fresh_broker, "sender")
    sender.publish("fl/global_model", b"round 7", retain=True)
    late = session(fresh_broker, "late", ["fl/global_model"])
    received = late.receive(timeout=10)
    assert received is not None and received.retained and received.payload == b"round 7"
    sender.close()
    late.close()


def test_unreachable_broker_is_a_clear_error() -> None:
    settings = MqttSettings(host="127.0.0.1", port=free_port(), connect_timeout_s=1)
    with pytest.raises(BrokerError, match="cannot reach the MQTT broker"):
        MqttSession(settings, "nobody", LOG).connect()


def test_connect_says_what_it_waits_for_and_connects_once_the_broker_is_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = MqttSettings(host="127.0.0.1", port=port, connect_timeout_s=60)
    waiting = MqttSession(settings, "early", LOG, persistent=False)
    caplog.set_level(logging.INFO, logger="test")
    connecting = Background(waiting.connect)
    said = f"waiting for the MQTT broker at 127.0.0.1:{port}"
    wait_until(lambda: any(said in r.getMessage() for r in caplog.records), 10, said)
    broker = start_broker("auto", tmp_path / "broker", port=port)
    try:
        connecting.result(30)
        assert waiting.connected
        assert any("connected to the MQTT broker" in r.getMessage() for r in caplog.records)
        waiting.close()
    finally:
        broker.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_publish_during_an_outage_arrives_after_the_restart(
    restartable_broker: LocalBroker, protocol: str
) -> None:
    receiver = session(
        restartable_broker,
        "fogfl-fl-fog-north",
        ["fl/updates/north"],
        persistent=True,
        protocol=protocol,
    )
    sender = session(restartable_broker, "fogfl-fl-client-c1", persistent=True, protocol=protocol)
    restartable_broker.stop()
    publishing = Background(lambda: sender.publish("fl/updates/north", b"update from c1"))
    wait_until(lambda: not sender.connected, 10, "the sender to notice the outage")
    assert publishing.running() and publishing.error is None, "the publish gave up at once"
    restartable_broker.start()
    publishing.result(60)
    arrived = receiver.receive(timeout=30)
    assert arrived is not None and arrived.payload == b"update from c1"
    assert sender.bytes_sent == len(b"update from c1")
    sender.close()
    receiver.close()


def test_a_publish_cut_off_by_a_broker_crash_is_sent_again_in_full(
    restartable_broker: LocalBroker,
) -> None:
    receiver = session(
        restartable_broker, "fogfl-fl-client-c1", ["fl/global_model"], persistent=True
    )
    sender = session(restartable_broker, "fogfl-fl-server", persistent=True)
    restartable_broker.restart()  # SIGTERM saves both sessions, so the crash cannot lose them
    wait_until(lambda: sender.connected and receiver.connected, 30, "both sessions to return")
    assert restartable_broker.process is not None
    os.kill(restartable_broker.process.pid, signal.SIGSTOP)  # frozen: nothing is acknowledged
    model = np.random.default_rng(1).bytes(30 * 2**20)  # more than the socket buffers hold
    publishing = Background(lambda: sender.publish("fl/global_model", model, retain=True))
    wait_until(lambda: unsent_bytes_to(restartable_broker.port) > 2**20, 30, "a publish stuck")
    assert publishing.running(), f"a frozen broker acknowledged nothing: {publishing.error}"
    restartable_broker.kill()  # mid-publish: part of the packet is in the socket, part is not
    restartable_broker.start()
    publishing.result(120)
    arrived = receiver.receive(timeout=60)
    assert arrived is not None and bytes(arrived.payload) == model
    sender.close()
    receiver.close()


def unsent_bytes_to(port: int) -> int:
    """The most bytes any local TCP connection to `port` holds unsent (Linux's view)."""
    most = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rsplit(":", 1)[1], 16) == port:
            most = max(most, int(fields[4].split(":")[0], 16))
    return most


def test_a_publish_the_broker_never_acknowledges_fails_after_publish_timeout(
    restartable_broker: LocalBroker,
) -> None:
    sender = session(restartable_broker, "sender", publish_timeout_s=1)
    restartable_broker.stop()
    with pytest.raises(BrokerError, match=r"did not acknowledge 5 bytes on fl/round within 1 s"):
        sender.publish("fl/round", b"hello")
    sender.close()


class RefusingBroker:
    """Stands in for a broker that is restarting: answers every CONNECT with CONNACK
    "server unavailable" (MQTT 5 reason code 0x88, no properties) and hangs up."""

    def __init__(self, host: str, port: int) -> None:
        self.refused = 0
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                with contextlib.suppress(OSError):
                    connection.recv(1024)  # the CONNECT
                    connection.sendall(bytes([0x20, 0x03, 0x00, 0x88, 0x00]))
                    self.refused += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def test_reconnecting_goes_on_while_the_broker_refuses_sessions(
    restartable_broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test")
    sender = session(restartable_broker, "fogfl-fl-server", persistent=True)
    restartable_broker.stop()
    refusing = RefusingBroker(restartable_broker.host, restartable_broker.port)
    try:
        publishing = Background(lambda: sender.publish("fl/round", b"round 2", retain=True))
        wait_until(lambda: refusing.refused >= 2, 30, "two refused reconnection attempts")
    finally:
        refusing.close()
    restartable_broker.start()
    publishing.result(60)
    refusals = [r for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refusals) == 1 and "Server unavailable" in refusals[0].getMessage()
    late = session(restartable_broker, "late", ["fl/round"])
    arrived = late.receive(timeout=10)
    assert arrived is not None and arrived.payload == b"round 2"
    late.close()
    sender.close()


def test_a_broker_that_falls_silent_is_left_and_rejoined(restartable_broker: LocalBroker) -> None:
    """A frozen broker (or a cut link) closes no socket: the keep-alive has to notice."""
    watcher = session(restartable_broker, "watcher", ["fl/round"], persistent=True, keepalive_s=5)
    assert restartable_broker.process is not None
    os.kill(restartable_broker.process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not watcher.connected, 60, "the keep-alive to give up on the broker")
    finally:
        os.kill(restartable_broker.process.pid, signal.SIGCONT)
    wait_until(lambda: watcher.connected, 60, "the session to come back")
    sender = session(restartable_broker, "sender")
    sender.publish("fl/round", b"round 3")
    arrived = watcher.receive(timeout=30)
    assert arrived is not None and arrived.payload == b"round 3"
    sender.close()
    watcher.close()


def test_subscriptions_come_back_after_a_broker_that_forgot_them(
    restartable_broker: LocalBroker,
) -> None:
    """A clean session's subscriptions die with the broker; the session makes them again."""
    watcher = session(restartable_broker, "watcher", ["fl/global_model"])
    restartable_broker.restart()
    sender = session(restartable_broker, "sender")
    sender.publish("fl/global_model", b"after the restart", retain=True)
    arrived = watcher.receive(timeout=30)
    assert arrived is not None and arrived.payload == b"after the restart"
    sender.close()
    watcher.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_persistent_session_gets_what_was_published_while_it_was_away(
    restartable_broker: LocalBroker, protocol: str
) -> None:
    name, topic = "fogfl-fl-bridge-north", "fl/partial/north"
    session(restartable_broker, name, [topic], persistent=True, protocol=protocol).close()
    session(restartable_broker, "clean", [topic], protocol=protocol).close()
    sender = session(restartable_broker, "sender", protocol=protocol)
    sender.publish(topic, b"partial 1")
    restartable_broker.restart()  # SIGTERM: Mosquitto saves sessions and queued messages
    sender.publish(topic, b"partial 2")
    back = session(restartable_broker, name, [topic], persistent=True, protocol=protocol)
    assert payloads(drain(back)) == [b"partial 1", b"partial 2"]
    clean = session(restartable_broker, "clean", [topic], protocol=protocol)
    assert clean.receive(timeout=NEVER_S) is None, "a clean session must not get a backlog"
    for open_session in (sender, back, clean):
        open_session.close()


CRASHING_RECEIVER = """
import logging, time
from fogfl.config import MqttSettings
from fogfl.mqtt import MqttSession
settings = MqttSettings(host={host!r}, port={port}, protocol={protocol!r})
session = MqttSession(settings, {name!r}, logging.getLogger("receiver"), manual_ack=True)
session.connect([{topic!r}])
print("ready", flush=True)
message = session.receive(timeout=60)
print("received", message and bytes(message.payload), flush=True)
time.sleep(600)  # never acknowledges: killed first
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unacknowledged_message_comes_back_after_a_crash(
    restartable_broker: LocalBroker, tmp_path: Path, protocol: str
) -> None:
    name, topic = "fogfl-fl-fog-north", "fl/updates/north"
    script = CRASHING_RECEIVER.format(
        host=restartable_broker.host,
        port=restartable_broker.port,
        protocol=protocol,
        name=name,
        topic=topic,
    )
    crashing = ChildProcess("receiver", [sys.executable, "-c", script], tmp_path / "receiver.log")
    sender = session(restartable_broker, "sender", protocol=protocol)
    try:
        wait_until(lambda: "ready" in crashing.tail(), 30, "the receiver to subscribe")
        sender.publish(topic, b"update 1")
        wait_until(lambda: "received b'update 1'" in crashing.tail(), 30, "the first delivery")
    finally:
        os.kill(crashing.pid, signal.SIGKILL)  # a crash: no DISCONNECT, no PUBACK
        crashing.stop(grace=0)
    back = session(
        restartable_broker, name, [topic], persistent=True, manual_ack=True, protocol=protocol
    )
    again = back.receive(timeout=30)
    assert again is not None and again.payload == b"update 1" and again.duplicate
    back.ack(again)
    sender.publish(topic, b"update 2")
    second = back.receive(timeout=30)
    assert second is not None and second.payload == b"update 2"
    back.ack(second)
    back.close()
    after_acks = session(
        restartable_broker, name, [topic], persistent=True, manual_ack=True, protocol=protocol
    )
    assert after_acks.receive(timeout=NEVER_S) is None, "an acknowledged message came back"
    after_acks.close()
    sender.close()
