"""Shared fixtures: a real MQTT broker on a free port, started and stopped by PID.

Mosquitto when its binary is installed; otherwise the embedded amqtt broker, except in CI
(CI=true or FOGFL_REQUIRE_MOSQUITTO=1), where a missing Mosquitto is an error so that
what CI tested is always the real broker. A test that stops and restarts its broker asks
for `restartable_broker`: Mosquitto only (the embedded broker forgets everything on a
restart), skipped without it outside CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fogfl.broker import BrokerMode, LocalBroker, mosquitto_binary, start_broker
from fogfl.wire import Tensors


def _require_mosquitto() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or bool(
        os.environ.get("FOGFL_REQUIRE_MOSQUITTO")
    )


def _broker_of_its_own(workdir: Path, mode: BrokerMode = "auto") -> Iterator[LocalBroker]:
    if mosquitto_binary() is None:
        if _require_mosquitto():
            pytest.fail("CI must test against Mosquitto, but no mosquitto binary is installed")
        if mode == "mosquitto":
            pytest.skip("needs a mosquitto binary: the embedded broker does not survive a restart")
    broker = start_broker(mode, workdir)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    yield from _broker_of_its_own(tmp_path_factory.mktemp("broker"))


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of its own for one test (no retained messages from other tests)."""
    yield from _broker_of_its_own(tmp_path / "broker")


@pytest.fixture
def restartable_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """Mosquitto of its own with persistence, which the test may `stop()`, `kill()`,
    `start()` or `restart()` on the same port; whatever runs at the end is stopped."""
    yield from _broker_of_its_own(tmp_path / "broker", "mosquitto")


@pytest.fixture(scope="session")
def scenario_reference() -> Tensors:
    """The final model of an undisturbed fault-scenario run, simulated once per session
    for every test that compares a disturbed run with it."""
    from tests.faults.scenarios import reference_model, scenario_config

    return reference_model(scenario_config())
