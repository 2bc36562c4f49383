"""Fault scenarios (tests/faults/scenarios.py) on a whole federation: the run finishes,
every round has every region, the final model is the undisturbed run's, and no role died.

The other scenarios have tests of their own, with closer checks of what happened:
broker-restart in test_broker_restart.py, bridge-kill and second-bridge in test_bridges.py,
server-kill-resume in test_server_restart.py, hostile-flood in one run with other attacks in
tests/security/test_attacks.py; `benchmarks/faults.py` runs them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from fogfl.broker import mosquitto_binary
from fogfl.wire import Tensors
from tests.faults.scenarios import ROUNDS, run_scenario

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_binary() is None, reason="needs the mosquitto binary"),
]


@pytest.mark.parametrize("name", ["fog-broker-kill", "client-kill"])
def test_the_run_survives(name: str, scenario_reference: Tensors, tmp_path: Path) -> None:
    outcome = run_scenario(name, tmp_path, scenario_reference)
    logs = tmp_path / name / "logs"
    assert outcome.finished, f"{outcome.note}; logs in {logs}"
    assert outcome.dead_roles == [], logs
    assert outcome.rounds_complete == ROUNDS, logs
    assert outcome.exact, f"the final model is not the undisturbed run's; logs in {logs}"
