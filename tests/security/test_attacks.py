"""Attacks on a whole secure federation (`fogfl up`'s, real processes and Mosquitto): the
run ends exactly as an undisturbed one, and each role says what it refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fogfl.broker import mosquitto_binary
from fogfl.wire import Tensors
from tests.faults.scenarios import ROUNDS, Outcome, reference_model, run_scenario, scenario_config
from tests.integration.harness import rejected_reasons

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_binary() is None, reason="needs the mosquitto binary"),
]


@pytest.fixture(scope="module")
def reference() -> Tensors:
    return reference_model(scenario_config())


def _undisturbed(outcome: Outcome, logs: Path) -> None:
    assert outcome.finished, f"{outcome.note}; logs in {logs}"
    assert outcome.dead_roles == [], logs
    assert outcome.rounds_complete == ROUNDS, logs
    assert outcome.exact, f"the final model is not the undisturbed run's; logs in {logs}"


def test_forged_global_models_and_partials_change_nothing(
    reference: Tensors, tmp_path: Path
) -> None:
    outcome = run_scenario("forged-models", tmp_path, reference)
    logs = tmp_path / "forged-models" / "logs"
    _undisturbed(outcome, logs)
    for client in logs.glob("client-*.log"):
        # Unsigned, signed by a stranger's key, signed by a fog broker's: all three refused.
        assert rejected_reasons(client.read_text()).count("bad-signature") == 3, client
    bridge = (logs / "fog-bridge-south.log").read_text()
    assert rejected_reasons(bridge).count("bad-signature") == 3, bridge


def test_strangers_at_the_flower_port_are_not_regions(reference: Tensors, tmp_path: Path) -> None:
    """Over TLS: a plaintext Flower client cannot even connect; one over TLS (the CA
    certificate is no secret) that claims a region without its bridge's key is refused."""
    outcome = run_scenario("fake-regions", tmp_path, reference, tls=True)
    logs = tmp_path / "fake-regions" / "logs"
    _undisturbed(outcome, logs)
    server = (logs / "server.log").read_text()
    assert server.count("refused a Flower client: it claims region north but cannot prove") == 2
    assert "a second bridge connected" not in server
    assert outcome.note.count("failed") >= 2, outcome.note  # the plaintext ones
