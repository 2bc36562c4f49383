"""Attacks on a whole secure federation (`fogfl up`'s, real processes and Mosquitto, over
TLS and over the default plaintext transport): the run ends exactly as an undisturbed one,
and each role says what it refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fogfl.broker import mosquitto_binary
from fogfl.wire import Tensors
from tests.faults.scenarios import ROUNDS, Outcome, run_scenario
from tests.integration.harness import rejected_reasons

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_binary() is None, reason="needs the mosquitto binary"),
]

REFUSED_AT_THE_PORT = "refused a Flower client: it claims region north but cannot prove"


def assert_undisturbed(outcome: Outcome, logs: Path) -> None:
    assert outcome.finished, f"{outcome.note}; logs in {logs}"
    assert outcome.dead_roles == [], logs
    assert outcome.rounds_complete == ROUNDS, logs
    assert outcome.exact, f"the final model is not the undisturbed run's; logs in {logs}"


def fake_regions(outcome: Outcome) -> dict[str, str]:
    return {k: v for k, v in outcome.details.items() if k.startswith("fake region")}


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
    assert_undisturbed(outcome, logs)
    for client in logs.glob("client-*.log"):
        assert rejected_reasons(client.read_text()).count("bad-signature") == 3, client
    bridge = (logs / "fog-bridge-south.log").read_text()
    assert rejected_reasons(bridge).count("bad-signature") == 3, bridge
    assert fake_regions(outcome) == {
        "fake region, plaintext, no proof": "no connection",
        "fake region, plaintext, forged proof": "no connection",
        "fake region, TLS, no proof": "refused",
        "fake region, TLS, forged proof": "refused",
    }, outcome.note
    server = (logs / "server.log").read_text()
    assert server.count(REFUSED_AT_THE_PORT) == 2
    assert "a second bridge connected" not in server


def test_replayed_messages_and_strangers_without_tls_change_nothing(
    scenario_reference: Tensors, tmp_path: Path
) -> None:
    """Without TLS (the default), with stolen logins and no signing key: genuinely signed
    messages copied onto region north's topics with the server's login (south's partials,
    a global model, a region model signed by fog-south), strangers at the plaintext Flower
    port claiming north (refused by the challenge), and 600 hostile messages with the logins
    of a client, a fog broker and the server (tests/faults/scenarios.py, hostile-flood).
    The run ends with the undisturbed run's model."""
    name = "hostile-flood+replays+fake-regions"
    outcome = run_scenario(name, tmp_path, scenario_reference)
    logs = tmp_path / name / "logs"
    assert_undisturbed(outcome, logs)
    assert fake_regions(outcome) == {
        "fake region, plaintext, no proof": "refused",
        "fake region, plaintext, forged proof": "refused",
    }, outcome.note
    replayed = {k: v for k, v in outcome.details.items() if k.startswith("replayed")}
    assert replayed == {
        "replayed region models": "1",
        "replayed global models": "1",
        "replayed partials": str(ROUNDS - 2),
    }, outcome.note
    bridge = (logs / "fog-bridge-north.log").read_text()
    assert sorted(rejected_reasons(bridge)) == ["wrong-kind"] + ["wrong-region"] * (ROUNDS - 2)
    clients = sorted(logs.glob("client-north-*.log"))
    assert len(clients) == 2
    for client in clients:
        assert rejected_reasons(client.read_text()) == ["wrong-region"], client
    server = (logs / "server.log").read_text()
    assert server.count(REFUSED_AT_THE_PORT) == 2
    assert "a second bridge connected" not in server
