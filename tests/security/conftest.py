"""Secure federations' parts for the security tests: credentials from `fogfl certs`'s own
code, and a real broker that enforces them (Mosquitto; the embedded broker where there is
none, except in CI)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from fogfl.broker import BrokerSecurity, LocalBroker, mosquitto_binary, start_broker
from fogfl.config import MqttSettings, load_config
from fogfl.mqtt import MqttSession, Topics
from fogfl.security.bundle import provision
from fogfl.security.identities import federation_identities
from tests.conftest import _require_mosquitto
from tests.integration.harness import login

TOPICS = Topics("fl")
CLIENTS = {"north": ["north-01", "north-02"], "south": ["south-03"]}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Credentials for a federation of two regions and three clients."""
    config = load_config(
        None, {"federation.regions": list(CLIENTS), "federation.clients": CLIENTS}, environ={}
    )
    directory = tmp_path_factory.mktemp("credentials")
    provision(directory, federation_identities(config), TOPICS)
    return directory


def _secure_broker(workdir: Path, bundle: Path, tls: bool) -> Iterator[LocalBroker]:
    if mosquitto_binary() is None and _require_mosquitto():
        pytest.fail("CI must test against Mosquitto, but no mosquitto binary is installed")
    broker = start_broker("auto", workdir, security=BrokerSecurity.of_bundle(bundle, tls))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def secure_broker(tmp_path: Path, bundle: Path) -> Iterator[LocalBroker]:
    yield from _secure_broker(tmp_path / "broker", bundle, tls=False)


@pytest.fixture
def tls_broker(tmp_path: Path, bundle: Path) -> Iterator[LocalBroker]:
    yield from _secure_broker(tmp_path / "broker", bundle, tls=True)


def settings_as(
    broker: LocalBroker, bundle: Path | None, name: str, *, tls: bool = False
) -> MqttSettings:
    """How identity `name` of `bundle` logs in to `broker` (anonymous when bundle is None),
    giving up quickly: these tests expect refusals."""
    settings = login(broker, bundle, name, tls)
    settings.connect_timeout_s, settings.publish_timeout_s = 3, 5
    return settings


def session(settings: MqttSettings, subscriptions: list[str] | None = None) -> MqttSession:
    return MqttSession(
        settings, f"test-{id(settings)}", logging.getLogger("test"), persistent=False
    ).connect(subscriptions or [])
