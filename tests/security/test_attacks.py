"""Attacks on a whole secure federation (`fogfl up`'s, real processes and Mosquitto, over
TLS): the run ends exactly as an undisturbed one, and each role says what it refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fogfl.broker import mosquitto_binary
from fogfl.wire import Tensors
from tests.faults.scenarios import ROUNDS, run_scenario
from tests.integration.harness import rejected_reasons

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_binary() is None, reason="needs the mosquitto binary"),
]


def test_forged_models_and_strangers_at_the_flower_port_change_nothing(
    scenario_reference: Tensors, tmp_path: Path
) -> None:
    """With stolen logins of the server and a fog broker, an attacker publishes poisoned
    global models and partials (unsigned, signed by a key of its own, signed by another
    identity's key); strangers at the Flower port claim region north, over plaintext (no
    TLS: no connection) and over TLS with the public CA certificate but without the
    bridge's key. The run ends with the undisturbed run's model."""
    name = "forged-models+fake-regions"
    outcome = run_scenario(name, tmp_path, scenario_reference, tls=True)
    logs = tmp_path / name / "logs"
    assert outcome.finished, f"{outcome.note}; logs in {logs}"
    assert outcome.dead_roles == [], logs
    assert outcome.rounds_complete == ROUNDS, logs
    assert outcome.exact, f"the final model is not the undisturbed run's; logs in {logs}"
    for client in logs.glob("client-*.log"):
        assert rejected_reasons(client.read_text()).count("bad-signature") == 3, client
    bridge = (logs / "fog-bridge-south.log").read_text()
    assert rejected_reasons(bridge).count("bad-signature") == 3, bridge
    server = (logs / "server.log").read_text()
    assert server.count("refused a Flower client: it claims region north but cannot prove") == 2
    assert "a second bridge connected" not in server
    assert outcome.note.count("failed") >= 2, outcome.note  # the plaintext ones
