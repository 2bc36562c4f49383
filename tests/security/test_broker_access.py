"""The broker enforces who may connect and who may publish or read where (the ACL that
`fogfl certs` writes), with passwords and with client certificates."""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path

import pytest

from fogfl.broker import LocalBroker
from fogfl.chunks import chunk_topic
from fogfl.config import WireSettings
from fogfl.errors import BrokerError
from fogfl.mqtt import MqttSession
from fogfl.security.certs import CertificateAuthority
from tests.security.conftest import TOPICS, session, settings_as

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test")

# (identity, topic, allowed): every role's own topics, and what it must not write.
PUBLISHES = [
    ("client-north-01", TOPICS.updates("north", "north-01"), True),
    ("client-north-01", TOPICS.updates("north", "north-02"), False),  # impersonation
    ("client-north-01", TOPICS.updates("south", "north-01"), False),  # a foreign region
    ("client-north-01", TOPICS.global_model, False),
    ("client-north-01", TOPICS.round_announcement, False),
    ("client-north-01", TOPICS.partial("north"), False),
    ("fog-north", TOPICS.partial("north"), True),
    ("fog-north", TOPICS.region_model("north"), True),
    ("fog-north", TOPICS.partial("south"), False),
    ("fog-north", TOPICS.global_model, False),
    ("fog-north", TOPICS.updates("north", "north-01"), False),
    ("bridge-north", TOPICS.partial("north"), False),
    ("monitor", TOPICS.global_model, False),
    ("server", TOPICS.global_model, True),
    ("server", TOPICS.round_announcement, True),
    # Chunks of a message travel on its topic's subtopics, under the same rules.
    ("client-north-01", chunk_topic(TOPICS.updates("north", "north-01"), 3), True),
    ("client-north-01", chunk_topic(TOPICS.updates("north", "north-02"), 3), False),
    ("client-north-01", chunk_topic(TOPICS.global_model, 0), False),
    ("fog-north", chunk_topic(TOPICS.partial("north"), 1), True),
    ("fog-north", chunk_topic(TOPICS.partial("south"), 1), False),
    ("server", chunk_topic(TOPICS.global_model, 12), True),
]


def test_anonymous_and_wrong_logins_are_refused(secure_broker: LocalBroker, bundle: Path) -> None:
    with pytest.raises(BrokerError, match="refused the session"):
        session(settings_as(secure_broker, None, ""))
    wrong = settings_as(secure_broker, bundle, "client-north-01")
    wrong.password = "not-the-password"
    with pytest.raises(BrokerError, match="refused the session"):
        session(wrong)
    session(settings_as(secure_broker, bundle, "client-north-01")).close()


def test_each_identity_writes_only_its_own_topics(secure_broker: LocalBroker, bundle: Path) -> None:
    watcher = session(settings_as(secure_broker, bundle, "monitor"), [TOPICS.everything])
    refusals: dict[tuple[str, str], str] = {}
    for identity, topic, _ in PUBLISHES:
        sender = session(settings_as(secure_broker, bundle, identity))
        try:
            sender.publish(topic, f"{identity} on {topic}".encode())
        except BrokerError as refused:  # MQTT 5: the broker says so
            refusals[identity, topic] = str(refused)
        finally:
            sender.close()
    time.sleep(1.0)
    arrived = set()
    while (received := watcher.receive(timeout=0)) is not None:
        arrived.add(bytes(received.payload).decode())
    watcher.close()
    for identity, topic, allowed in PUBLISHES:
        what = f"{identity} on {topic}"
        assert (what in arrived) == allowed, f"{what}: allowed={allowed}, arrived={what in arrived}"
        if secure_broker.kind == "mosquitto":
            assert ((identity, topic) in refusals) != allowed, what
            if not allowed:
                assert "Not authorized" in refusals[identity, topic]


def test_a_client_reads_neither_other_clients_updates_nor_other_regions(
    secure_broker: LocalBroker, bundle: Path
) -> None:
    snoop = session(
        settings_as(secure_broker, bundle, "client-north-02"),
        [TOPICS.all_updates, TOPICS.partial("+"), TOPICS.region_model("south")],
    )
    for identity, topic in (
        ("client-north-01", TOPICS.updates("north", "north-01")),
        ("fog-north", TOPICS.partial("north")),
        ("fog-south", TOPICS.region_model("south")),
    ):
        sender = session(settings_as(secure_broker, bundle, identity))
        sender.publish(topic, b"private")
        sender.close()
    time.sleep(1.0)
    assert snoop.receive(timeout=0) is None
    snoop.close()


def test_the_server_clears_the_retained_chunks_a_fog_broker_left(
    secure_broker: LocalBroker, bundle: Path
) -> None:
    """A new run's server may read the chunk subtopics it clears (and no whole partial), so
    it learns which chunks an earlier fog broker left and clears them."""
    wire = WireSettings(chunk_bytes=64 * 1024)
    partial = TOPICS.partial("north")

    def session_of(identity: str) -> MqttSession:
        settings = settings_as(secure_broker, bundle, identity)
        return MqttSession(settings, f"test-{identity}", LOG, persistent=False, wire=wire)

    fog = session_of("fog-north").connect()
    fog.publish(partial, bytes(5 * wire.chunk_bytes), retain=True)  # 5 chunks
    fog.close()
    server = session_of("server").connect()
    assert server.clear_retained([partial]) == 5
    server.close()
    bridge = session(settings_as(secure_broker, bundle, "bridge-north"), [partial])
    assert bridge.receive(timeout=1.5) is None  # nothing retained, whole or in chunks
    bridge.close()


def test_tls_needs_a_certificate_of_the_federation(
    tls_broker: LocalBroker, bundle: Path, tmp_path: Path
) -> None:
    own = settings_as(tls_broker, bundle, "client-north-01", tls=True)
    session(own).close()
    # Plaintext to the TLS port, even with the right password: no session.
    with pytest.raises(BrokerError):
        session(settings_as(tls_broker, bundle, "client-north-01"))
    # A certificate with the right name from another CA: the handshake fails.
    stranger = CertificateAuthority.create("another CA").issue_client("client-north-01")
    (tmp_path / "s.crt").write_bytes(stranger.cert_pem)
    (tmp_path / "s.key").write_bytes(stranger.key_pem)
    forged = own.model_copy(deep=True)
    forged.tls.cert_file, forged.tls.key_file = tmp_path / "s.crt", tmp_path / "s.key"
    with pytest.raises((BrokerError, ssl.SSLError)):
        session(forged)
    # No client certificate at all.
    bare = own.model_copy(deep=True)
    bare.tls.cert_file = bare.tls.key_file = None
    with pytest.raises((BrokerError, ssl.SSLError)):
        session(bare)


def test_under_tls_the_certificate_is_the_identity(tls_broker: LocalBroker, bundle: Path) -> None:
    """The broker takes the user from the certificate, so the ACL binds it: a client's
    certificate cannot publish the global model, whatever user name it claims."""
    watcher = session(settings_as(tls_broker, bundle, "monitor", tls=True), [TOPICS.everything])
    client = settings_as(tls_broker, bundle, "client-north-01", tls=True)
    client.username = "server"
    sender = session(client)
    refused = ""
    try:
        sender.publish(TOPICS.global_model, b"forged")
    except BrokerError as error:
        refused = str(error)
    sender.publish(TOPICS.updates("north", "north-01"), b"own")
    sender.close()
    time.sleep(1.0)
    arrived = set()
    while (received := watcher.receive(timeout=0)) is not None:
        arrived.add(received.topic)
    watcher.close()
    assert arrived == {TOPICS.updates("north", "north-01")}
    if tls_broker.kind == "mosquitto":
        assert "Not authorized" in refused
