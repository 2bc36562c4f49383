"""Shared fixtures: a real MQTT broker on a free port, started and stopped by PID.

Mosquitto when its binary is installed; otherwise the embedded amqtt broker, except in CI
(CI=true or FOGFL_REQUIRE_MOSQUITTO=1), where a missing Mosquitto is an error so that
what CI tested is always the real broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fogfl.broker import LocalBroker, mosquitto_binary, start_broker


def _require_mosquitto() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or bool(
        os.environ.get("FOGFL_REQUIRE_MOSQUITTO")
    )


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    if mosquitto_binary() is None and _require_mosquitto():
        pytest.fail("CI must test against Mosquitto, but no mosquitto binary is installed")
    broker = start_broker("auto", tmp_path_factory.mktemp("broker"))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of its own for one test (no retained messages from other tests)."""
    if mosquitto_binary() is None and _require_mosquitto():
        pytest.fail("CI must test against Mosquitto, but no mosquitto binary is installed")
    broker = start_broker("auto", tmp_path / "broker")
    try:
        yield broker
    finally:
        broker.stop()
