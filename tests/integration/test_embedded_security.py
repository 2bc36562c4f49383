"""The embedded broker enforces the run's Mosquitto password and ACL files and client
certificates: the real broker process, real paho clients (MQTT 3.1.1).

A message that must *not* arrive is followed by one that must, from the same publisher, so
its absence is known once the second one is in: the broker keeps one publisher's order.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fogfl.processes import ChildProcess, free_port, wait_for_port
from fogfl.security.mosquitto_files import AclRule, acl_file, password_file

pytestmark = pytest.mark.integration
pytest.importorskip("amqtt")

HOST = "127.0.0.1"
WAIT_S = 15.0  # only ever reached when a test fails
PASSWORDS = {
    "server": "server-secret",
    "fog-north": "fog-secret",
    "client-n1": "client-secret",
    "monitor": "monitor-secret",
}
RULES = {
    "server": [AclRule("write", "fl/global_model"), AclRule("read", "fl/partial/+")],
    "fog-north": [AclRule("read", "fl/updates/north/+"), AclRule("write", "fl/partial/north")],
    "client-n1": [
        AclRule("read", "fl/global_model"),
        AclRule("write", "fl/updates/north/client-n1"),
    ],
    "monitor": [AclRule("read", "fl/#")],
}
UPDATE = "fl/updates/north/client-n1"


@dataclass
class Broker:
    port: int
    process: ChildProcess

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")


@contextmanager
def embedded_broker(workdir: Path, *options: str) -> Iterator[Broker]:
    port = free_port(HOST)
    argv = [sys.executable, "-m", "fogfl.embedded_broker", "--port", str(port), *options]
    process = ChildProcess("embedded-broker", argv, workdir / "embedded-broker.log")
    try:
        assert wait_for_port(HOST, port, WAIT_S) and process.poll() is None, process.tail()
        yield Broker(port, process)
    finally:
        process.stop(grace=3.0)


def write_files(workdir: Path) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "passwords").write_text(password_file(PASSWORDS))
    (workdir / "acl").write_text(acl_file(RULES))
    return ["--password-file", str(workdir / "passwords"), "--acl-file", str(workdir / "acl")]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with embedded_broker(tmp_path, *write_files(tmp_path)) as started:
        yield started


class Peer:
    """One paho client that records its CONNACK, SUBACKs and messages."""

    def __init__(
        self,
        port: int,
        user: str | None = None,
        password: str | None = None,
        *,
        client_id: str = "",
        persistent: bool = False,
        will: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=not persistent,
            reconnect_on_failure=False,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if will is not None:
            self.client.will_set(will, b"will of " + (user or "?").encode(), qos=1)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.answer: str | None = None
        self.answered = threading.Event()
        self.subacks: dict[int, str] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.changed = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def connect(self) -> str:
        """The broker's answer: its CONNACK reason, "closed" or the connect error."""
        try:
            self.client.connect(HOST, self.port)
        except (OSError, ssl.SSLError) as error:
            return f"failed: {error}"
        self.client.loop_start()
        assert self.answered.wait(WAIT_S), "the broker never answered the CONNECT"
        assert self.answer is not None
        return self.answer

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.answer = str(reason)
        self.answered.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.answer is None:
            self.answer = "closed"
        self.answered.set()

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: Any, reasons: Any, properties: Any
    ) -> None:
        with self.changed:
            self.subacks[mid] = str(reasons[0])
            self.changed.notify_all()

    def _on_message(self, client: paho.Client, userdata: Any, message: Any) -> None:
        with self.changed:
            self.messages.append((message.topic, bytes(message.payload)))
            self.changed.notify_all()

    def subscribe(self, topic_filter: str) -> str:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        with self.changed:
            assert self.changed.wait_for(lambda: mid in self.subacks, WAIT_S), "no SUBACK"
            return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT_S)

    def wait_for(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including this message."""
        with self.changed:
            arrived = self.changed.wait_for(lambda: (topic, payload) in self.messages, WAIT_S)
            assert arrived, f"{topic} {payload!r} never arrived; got {self.messages}"
            return self.messages[: self.messages.index((topic, payload)) + 1]

    def cut(self) -> None:
        """Lose the connection without a DISCONNECT, as a crash would (the will goes out)."""
        self.client.socket().shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def peer(port: int, user: str | None = None, **options: Any) -> Iterator[Peer]:
    """A connected peer logged in as `user` (with its right password)."""
    connected = Peer(port, user, PASSWORDS.get(user or ""), **options)
    try:
        assert connected.connect() == "Success"
        yield connected
    finally:
        connected.close()


def test_anonymous_connections_are_refused(broker: Broker) -> None:
    assert Peer(broker.port).connect() == "Not authorized"
    assert "anonymous connections are not allowed" in broker.log()


def test_a_wrong_password_and_an_unknown_user_are_refused(broker: Broker) -> None:
    assert Peer(broker.port, "client-n1", "guess").connect() == "Not authorized"
    assert Peer(broker.port, "nobody", "client-secret").connect() == "Not authorized"
    assert "wrong username or password for user 'client-n1'" in broker.log()


def test_the_right_password_is_accepted(broker: Broker) -> None:
    assert Peer(broker.port, "client-n1", "client-secret").connect() == "Success"


def test_an_allowed_publish_arrives(broker: Broker) -> None:
    with peer(broker.port, "fog-north") as fog, peer(broker.port, "client-n1") as client:
        assert fog.subscribe("fl/updates/north/+") == "Granted QoS 1"
        client.publish(UPDATE, b"update 1")
        assert fog.wait_for(UPDATE, b"update 1") == [(UPDATE, b"update 1")]


def test_a_publish_outside_the_acl_is_dropped_and_logged(broker: Broker) -> None:
    with peer(broker.port, "monitor") as monitor, peer(broker.port, "client-n1") as client:
        assert monitor.subscribe("fl/#") == "Granted QoS 1"
        client.publish("fl/global_model", b"forged model")
        client.publish(UPDATE, b"update 1")
        assert monitor.wait_for(UPDATE, b"update 1") == [(UPDATE, b"update 1")]
    assert (
        "dropped a publish by user client-n1 (client id " in broker.log()
        and ") on fl/global_model: its ACL does not allow writing there" in broker.log()
    )


def test_a_subscription_outside_the_acl_is_refused_and_delivers_nothing(broker: Broker) -> None:
    with (
        peer(broker.port, "client-n1") as client,
        peer(broker.port, "fog-north") as fog,
        peer(broker.port, "server") as server,
    ):
        assert client.subscribe("fl/partial/north") == "Unspecified error"  # SUBACK 0x80
        assert client.subscribe("fl/global_model") == "Granted QoS 1"
        fog.publish("fl/partial/north", b"partial 1")
        fog.publish("fl/partial/north", b"partial 2")
        server.publish("fl/global_model", b"model 1")
        assert client.wait_for("fl/global_model", b"model 1") == [("fl/global_model", b"model 1")]
    assert "refused the subscription of user client-n1" in broker.log()


def test_a_subscription_wider_than_the_acl_delivers_only_what_it_may_read(
    broker: Broker,
) -> None:
    with (
        peer(broker.port, "client-n1") as client,
        peer(broker.port, "fog-north") as fog,
        peer(broker.port, "server") as server,
    ):
        assert client.subscribe("fl/#") == "Granted QoS 1"
        fog.publish("fl/partial/north", b"partial 1")
        server.publish("fl/global_model", b"model 1")
        fog.publish("fl/partial/north", b"partial 2")
        server.publish("fl/global_model", b"model 2")
        assert client.wait_for("fl/global_model", b"model 2") == [
            ("fl/global_model", b"model 1"),
            ("fl/global_model", b"model 2"),
        ]


def test_retained_messages_reach_only_those_who_may_read_them(broker: Broker) -> None:
    with (
        peer(broker.port, "monitor") as monitor,
        peer(broker.port, "fog-north") as fog,
        peer(broker.port, "server") as server,
    ):
        assert monitor.subscribe("fl/#") == "Granted QoS 1"
        fog.publish("fl/partial/north", b"retained partial", retain=True)
        server.publish("fl/global_model", b"retained model", retain=True)
        monitor.wait_for("fl/global_model", b"retained model")
        # amqtt 0.11 would offer a newcomer the retained messages of the monitor's fl/#.
        with peer(broker.port, "client-n1") as client:
            assert client.subscribe("fl/#") == "Granted QoS 1"
            assert client.wait_for("fl/global_model", b"retained model") == [
                ("fl/global_model", b"retained model")
            ]


def test_a_refused_connect_leaves_the_session_of_its_client_id_alone(broker: Broker) -> None:
    with (
        peer(broker.port, "monitor") as monitor,
        peer(broker.port, "server") as server,
        peer(broker.port, "client-n1", client_id="n1", persistent=True) as client,
    ):
        assert monitor.subscribe("fl/#") == "Granted QoS 1"
        assert client.subscribe("fl/global_model") == "Granted QoS 1"
        # A clean-session CONNECT deletes the kept session in amqtt 0.11, refused or not.
        assert Peer(broker.port, "server", "guess", client_id="n1").connect() == "Not authorized"
        # Another user, with its right password, may not take the session over either.
        other = Peer(broker.port, "fog-north", "fog-secret", client_id="n1", persistent=True)
        assert other.connect() == "Not authorized"
        # Last, a mightier user for the same client id, with a will, but not its password:
        # amqtt 0.11 copies such a CONNECT's user and will into the kept session at once.
        forger = Peer(broker.port, "server", "guess", client_id="n1", persistent=True)
        forger.client.will_set("fl/global_model", b"forged will")
        assert forger.connect() == "Not authorized"
        client.publish("fl/global_model", b"forged model")
        client.publish(UPDATE, b"update 1")
        assert monitor.wait_for(UPDATE, b"update 1") == [(UPDATE, b"update 1")]
        server.publish("fl/global_model", b"model 1")
        assert client.wait_for("fl/global_model", b"model 1") == [("fl/global_model", b"model 1")]
        client.cut()  # the forged will would go out now
        with peer(broker.port, "client-n1", client_id="n1-again", will=UPDATE) as again:
            again.cut()
        assert monitor.wait_for(UPDATE, b"will of client-n1") == [
            (UPDATE, b"update 1"),
            ("fl/global_model", b"model 1"),
            (UPDATE, b"will of client-n1"),
        ]
    assert "client id 'n1' holds a session of user 'client-n1'" in broker.log()


def test_a_will_the_user_may_not_write_is_dropped(broker: Broker) -> None:
    with peer(broker.port, "monitor") as monitor:
        assert monitor.subscribe("fl/#") == "Granted QoS 1"
        with peer(broker.port, "client-n1", client_id="a", will="fl/global_model") as forger:
            forger.cut()
        with peer(broker.port, "client-n1", client_id="b", will=UPDATE) as honest:
            honest.cut()
        assert monitor.wait_for(UPDATE, b"will of client-n1") == [(UPDATE, b"will of client-n1")]
    assert "dropped the will of user client-n1 (client id a) on fl/global_model" in broker.log()


def start_failure(workdir: Path, *options: str) -> str:
    """What the broker says when it refuses to start (it must exit 2)."""
    argv = [sys.executable, "-m", "fogfl.embedded_broker", "--port", str(free_port(HOST))]
    process = ChildProcess("embedded-broker", [*argv, *options], workdir / "start.log")
    try:
        assert process.wait(WAIT_S) == 2, process.tail()
    finally:
        process.stop(grace=1.0)
    return process.tail()


def test_missing_or_malformed_files_stop_the_start_with_a_clear_message(tmp_path: Path) -> None:
    options = write_files(tmp_path)
    missing = tmp_path / "absent"
    assert f"cannot read the password file {missing}" in start_failure(
        tmp_path, "--password-file", str(missing)
    )
    assert f"cannot read the ACL file {missing}" in start_failure(
        tmp_path, options[0], options[1], "--acl-file", str(missing)
    )
    (tmp_path / "bad-passwords").write_text("client-n1 client-secret\n")
    assert "password file line 1" in start_failure(
        tmp_path, "--password-file", str(tmp_path / "bad-passwords")
    )
    (tmp_path / "bad-acl").write_text("user client-n1\ntopic fl/global_model read\n")
    assert "ACL file line 2" in start_failure(tmp_path, "--acl-file", str(tmp_path / "bad-acl"))
    (tmp_path / "bad-filter").write_text("user client-n1\ntopic read fl/#/model\n")
    assert "'#' may only stand alone as the last level" in start_failure(
        tmp_path, "--acl-file", str(tmp_path / "bad-filter")
    )


# Client certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(
    directory: Path, name: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> None:
    certificate, key = pair
    (directory / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = _issue("fogfl test CA", None, ca=True)
    rogue = _issue("rogue CA", None, ca=True)
    _write(certs, "ca", ca)
    _write(certs, "broker", _issue("broker", (ca[0].subject, ca[1]), server=True))
    for user in ("client-n1", "monitor"):
        _write(certs, user, _issue(user, (ca[0].subject, ca[1])))
    _write(certs, "rogue-client", _issue("server", (rogue[0].subject, rogue[1])))
    (tmp_path / "acl").write_text(acl_file(RULES))
    options = [
        *("--acl-file", str(tmp_path / "acl"), "--cafile", str(certs / "ca.crt")),
        *("--certfile", str(certs / "broker.crt"), "--keyfile", str(certs / "broker.key")),
    ]
    with embedded_broker(tmp_path, *options) as started:
        yield started, certs


def client_tls(certs: Path, name: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs / "ca.crt")
    if name is not None:
        context.load_cert_chain(certs / f"{name}.crt", certs / f"{name}.key")
    return context


def test_with_client_certificates_the_user_is_the_common_name(
    tls_broker: tuple[Broker, Path],
) -> None:
    broker, certs = tls_broker
    with (
        peer(broker.port, "monitor", tls=client_tls(certs, "monitor")) as monitor,
        # The certificate says client-n1, whatever user and password CONNECT claims.
        peer(broker.port, "server", tls=client_tls(certs, "client-n1")) as client,
    ):
        assert monitor.subscribe("fl/#") == "Granted QoS 1"
        client.publish("fl/global_model", b"forged model")
        client.publish(UPDATE, b"update 1")
        assert monitor.wait_for(UPDATE, b"update 1") == [(UPDATE, b"update 1")]
    assert "dropped a publish by user client-n1" in broker.log()


def test_with_client_certificates_other_connections_are_refused(
    tls_broker: tuple[Broker, Path],
) -> None:
    broker, certs = tls_broker
    for tls in (None, client_tls(certs, None), client_tls(certs, "rogue-client")):
        answer = Peer(broker.port, "monitor", "monitor-secret", tls=tls).connect()
        assert answer.startswith(("failed", "closed")), answer


def test_client_certificates_do_not_go_with_a_password_file(tmp_path: Path) -> None:
    options = write_files(tmp_path)
    tls = ("--cafile", "ca.crt", "--certfile", "broker.crt", "--keyfile", "broker.key")
    assert "--password-file does not go with --cafile" in start_failure(tmp_path, *options, *tls)
    assert "--cafile also needs --certfile, --keyfile" in start_failure(
        tmp_path, "--cafile", "ca.crt"
    )
