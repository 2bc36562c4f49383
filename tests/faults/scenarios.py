"""Fault scenarios on a whole local federation: each starts `fogfl up`'s federation (real
processes, a real Mosquitto), breaks something for real in round 2, lets the run finish,
and says what a user would notice: did the run finish, how many rounds had every region,
is the final global model the one an undisturbed run gives (the in-process simulation of
the same configuration and seed), how long it took, which roles died.

`tests/faults/test_scenarios.py` asserts on these outcomes; `benchmarks/faults.py` prints
them as a table.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flwr
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogfl.broker import mosquitto_binary
from fogfl.config import FogflConfig, load_config
from fogfl.mqtt import Received, Topics
from fogfl.processes import ChildProcess
from fogfl.roles.launcher import Federation, Status, _child_environment
from fogfl.run_dir import METRICS_FILE, MODEL_FILE, read_metrics
from fogfl.security.bundle import load_credentials
from fogfl.security.signing import Signer
from fogfl.sim.hierarchy import simulate
from fogfl.sim.workers import ClientPool
from fogfl.wire import Envelope, Tensors, decode, encode
from tests.integration.harness import Recorder, publisher

ROUNDS = 4
REGIONS = ["north", "south"]
CLIENTS_PER_REGION = 2
RUN_TIMEOUT_S = 300.0


def scenario_config() -> FogflConfig:
    """Small and deterministic: 2 regions × 2 QoE clients, 4 rounds."""
    return load_config(
        None,
        {
            "federation.rounds": ROUNDS,
            "federation.regions": REGIONS,
            "federation.clients_per_region": CLIENTS_PER_REGION,
            "federation.seed": 11,
            "federation.run_id": "faults",
            "training.local_epochs": 25,
            "task.options": {"duration_s": 900},
            "fog.deadline_s": 60,
            "bridge.partial_timeout_s": 60,
            "server.round_timeout_s": 90,
            "mqtt.connect_timeout_s": 30,
        },
        environ={},
    )


def reference_model(config: FogflConfig) -> Tensors:
    """The final global model of an undisturbed run, computed in-process."""
    with ClientPool(2) as pool:
        return simulate(config, pool).final_tensors()


@dataclass
class Outcome:
    scenario: str
    finished: bool
    rounds_complete: int
    exact: bool
    seconds: float
    dead_roles: list[str] = field(default_factory=list)
    note: str = ""
    # What each part of an attack came to, by name (`FaultyFederation.details`).
    details: dict[str, str] = field(default_factory=dict)


class FaultyFederation(Federation):
    """`fogfl up`'s federation, with roles that can be killed and started again while the
    launcher's loop watches it (from another thread: `poll` waits while a role is swapped)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.swapping = threading.Lock()
        self.details: dict[str, str] = {}

    def poll(self) -> Status:
        with self.swapping:
            return super().poll()

    def child(self, name: str) -> ChildProcess:
        if self.server is not None and self.server.name == name:
            return self.server
        return next(role for role in self.roles if role.name == name)

    def restart(self, name: str, downtime_s: float, *extra: str) -> None:
        """SIGKILL a role, as a crash would, and start it again with the same command line
        (plus `extra`) and log file after `downtime_s`."""
        with self.swapping:
            victim = self.child(name)
            os.kill(victim.pid, signal.SIGKILL)
            victim.stop(grace=0)
            time.sleep(downtime_s)
            again = ChildProcess(
                victim.name, [*victim.argv, *extra], victim.log_path, env=_child_environment()
            )
            if victim is self.server:
                self.server = again
            else:
                self.roles[self.roles.index(victim)] = again

    def spawn(self, name: str, arguments: list[str]) -> None:
        with self.swapping:
            self.roles.append(self._spawn(name, arguments))


Fault = Callable[[FaultyFederation, Recorder], str]


def no_fault(federation: FaultyFederation, watcher: Recorder) -> str:
    return ""


def broker_restart(federation: FaultyFederation, watcher: Recorder) -> str:
    watcher.wait_for(120, kind="update", round="2")
    assert federation.broker is not None
    federation.broker.restart(downtime_s=2.0)
    return "Mosquitto stopped (SIGTERM) mid-round 2, down 2 s, started again"


def fog_broker_kill(federation: FaultyFederation, watcher: Recorder) -> str:
    watcher.wait_for(120, kind="update", round="2", region="north")
    federation.restart("fog-broker-north", 1.0)
    return "fog broker north SIGKILLed after its first round-2 update, restarted after 1 s"


def bridge_kill(federation: FaultyFederation, watcher: Recorder) -> str:
    watcher.wait_for(120, kind="update", round="2", region="north")
    federation.restart("fog-bridge-north", 1.0)
    return "bridge north SIGKILLed mid-round 2, restarted after 1 s"


def server_kill_and_resume(federation: FaultyFederation, watcher: Recorder) -> str:
    watcher.wait_for(120, kind="round", round="3")
    federation.restart("server", 1.0, "--resume")
    return "server SIGKILLed as round 3 began, restarted with --resume"


def client_kill(federation: FaultyFederation, watcher: Recorder) -> str:
    watcher.wait_for(120, kind="global", round="2")
    federation.restart("client-north-01", 0.0)
    return "client north-01 SIGKILLed while training round 2, restarted"


def second_bridge(federation: FaultyFederation, watcher: Recorder) -> str:
    # Spawned as round 1 begins: a bridge takes a few seconds to start and connect.
    watcher.wait_for(120, kind="round", round="1")
    federation.spawn("fog-bridge-north-2", ["fog-bridge", "--region", "north"])
    return "a second bridge for north started as round 1 began, joins mid-run"


def hostile_flood(federation: FaultyFederation, watcher: Recorder) -> str:
    watcher.wait_for(120, kind="global", round="2")
    valid = Envelope(
        kind="update",
        run_id="faults",
        round=2,
        sender="mallory",
        region="north",
        num_examples=10**6,
        tensors={"w": np.ones(3, np.float32)},
    )
    garbage = [
        b"\x00" * 7,
        b"\xff" * 64,
        encode(valid),  # wrong tensors for the task
        b'\x20\x00\x00\x00\x00\x00\x00\x00{"__metadata__":{"round":3}}    ',
        b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"[" * 16,
    ]
    # Sent with the logins of a client, a fog broker and the server, as if they were
    # stolen: the broker's ACL lets each through on its own topic, and only the roles'
    # checks (and the signatures the logins do not carry) stand in the way.
    credentials = federation.config.security.credentials
    assert federation.broker is not None and credentials is not None
    topics = watcher.session.topics
    logins = {
        topics.updates("north", "north-01"): "client-north-01",
        topics.partial("south"): "fog-south",
        topics.round_announcement: "server",
    }
    sent = 0
    for topic, identity in logins.items():
        session = publisher(federation.broker, credentials, identity)
        try:
            for _ in range(40):
                for payload in garbage:
                    session.publish(topic, payload)
                    sent += 1
        finally:
            session.close()
    return (
        f"{sent} hostile messages on fl/updates/north/north-01, fl/partial/south and "
        "fl/round, with stolen logins"
    )


def forged_models(federation: FaultyFederation, watcher: Recorder) -> str:
    """A broker compromise, or an ACL mistake: with the server's and a fog broker's logins
    an attacker publishes a poisoned global model and partial (retained, as the real ones
    are) — unsigned, signed with a key of its own, and signed with a key of the wrong
    identity. Only the signatures stand in the way."""
    received, _ = watcher.wait_for(120, kind="global", round="2")
    real = decode(received.payload, kinds={"global"}, max_bytes=10**9)
    poison = {name: np.full_like(array, 7.0) for name, array in real.tensors.items()}
    credentials = federation.config.security.credentials
    assert federation.broker is not None and credentials is not None
    fog_key = load_credentials(credentials, "fog-north").signer().key
    signers = [None, Signer("server", Ed25519PrivateKey.generate()), Signer("fog-north", fog_key)]
    topics = watcher.session.topics
    tls = federation.config.security.tls
    forged = 0
    for identity, topic, message in (
        # The next round's model: were it taken, every client would train on the poison.
        ("server", topics.global_model, dataclasses.replace(real, tensors=poison, round=3)),
        (
            "fog-south",
            topics.partial("south"),
            Envelope(
                kind="partial",
                run_id=real.run_id,
                round=real.round,
                sender="fog-south",
                region="south",
                num_examples=10**12,
                tensors=poison,
                contributors=["south-03"],
                stats={"weight": 10**12},
            ),
        ),
    ):
        session = publisher(federation.broker, credentials, identity, tls)
        try:
            for signer in signers:
                session.publish(topic, encode(message, signer=signer), retain=True)
                forged += 1
        finally:
            session.close()
    return f"{forged} forged global models and partials published with stolen logins"


class _RogueRegion(flwr.client.NumPyClient):
    """A hand-written Flower client that claims a region and answers every fit with a
    poisoned model and a huge example count; it notes what the server did with it."""

    def __init__(self, proof: str | None) -> None:
        self.proof = proof
        self.challenged = False
        self.notice = ""
        self.fitted = False

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        self.challenged = self.challenged or "fogfl_challenge" in config
        self.notice = str(config.get("fogfl_notice", self.notice))
        claim: dict[str, Any] = {"fogfl_region": "north"}
        if self.proof is not None:
            claim["fogfl_proof"] = self.proof
        return claim

    def fit(self, parameters: list[Any], config: dict[str, Any]) -> tuple[list[Any], int, dict]:
        self.fitted = True
        return [np.full_like(p, 7.0) for p in parameters], 10**12, {}

    def outcome(self, error: Exception | None) -> str:
        """``fitted`` (the server took it for a region), ``refused`` (challenged, then told
        so), ``no connection`` (never asked anything: the channel failed), or what else."""
        if self.fitted:
            return "fitted"
        if self.challenged and self.notice == "refused":
            return "refused"
        if not self.challenged and error is not None:
            return "no connection"
        return f"challenged={self.challenged}, notice={self.notice!r}, error={error!r}"


def fake_regions(federation: FaultyFederation, watcher: Recorder) -> str:
    """Strangers who reach the Flower port claim region north: one with no proof, one with
    a proof signed by a key of its own; each over plaintext and, where the server speaks
    TLS, over TLS with the federation's (public) CA certificate. Each attempt's outcome
    (`_RogueRegion.outcome`) goes into the details as ``fake region, <transport>, <proof>``."""
    watcher.wait_for(120, kind="global", round="2")
    address = federation.config.server.address
    credentials = federation.config.security.credentials
    assert credentials is not None
    root = (credentials / "ca.crt").read_bytes()

    def join(name: str, proof: str | None, tls: bool) -> None:
        rogue = _RogueRegion(proof)
        error: Exception | None = None
        try:
            flwr.client.start_client(
                server_address=address,
                client=rogue.to_client(),
                insecure=not tls,
                root_certificates=root if tls else None,
            )
        except Exception as exc:  # a refused TLS handshake, a closed stream
            error = exc
        federation.details[name] = rogue.outcome(error)

    forged_proof = base64.b64encode(Ed25519PrivateKey.generate().sign(b"north")).decode()
    transports = [False, True] if federation.config.security.tls else [False]
    attempts = [
        (f"fake region, {'TLS' if tls else 'plaintext'}, {what}", proof, tls)
        for tls in transports
        for what, proof in (("no proof", None), ("forged proof", forged_proof))
    ]
    threads = [threading.Thread(target=join, args=attempt, daemon=True) for attempt in attempts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    outcomes = [f"{name}: {federation.details.get(name, 'no answer')}" for name, *_ in attempts]
    return f"{len(attempts)} rogue Flower clients claimed region north ({'; '.join(outcomes)})"


def replayed_messages(federation: FaultyFederation, watcher: Recorder) -> str:
    """With the server's stolen login, which may write every region's partial and region
    model (to clear them), an attacker copies genuinely signed messages onto region north's
    topics: south's partials of rounds 2 to ROUNDS - 1 onto fl/partial/north as each comes
    (retained, as the real ones are), the round-2 global model there too, and a poisoned
    region model signed by fog-south's own key onto fl/region_model/north. Every signature
    verifies; only the receivers' region and kind checks stand in the way. In round 2 north's
    fog broker is held back (SIGSTOP, as a congested uplink would delay it) until south's
    copy is on north's topic, so that a bridge without those checks would hand it to Flower
    and the global model would change. The details say how many of each went out, as
    ``replayed <what>``."""
    received, _ = watcher.wait_for(120, kind="global", round="2")
    held = federation.child("fog-broker-north")
    os.kill(held.pid, signal.SIGSTOP)
    real = decode(received.payload, kinds={"global"}, max_bytes=10**9)
    credentials = federation.config.security.credentials
    assert federation.broker is not None and credentials is not None
    topics = watcher.session.topics
    south_region_model = Envelope(
        kind="region",
        run_id=real.run_id,
        round=real.round,
        edge_round=2,
        sender="fog-south",
        region="south",
        num_examples=10**6,
        tensors={name: np.full_like(array, 7.0) for name, array in real.tensors.items()},
        config=real.config,
    )
    fog_south = load_credentials(credentials, "fog-south").signer()
    session = publisher(federation.broker, credentials, "server", federation.config.security.tls)
    try:
        payload = encode(south_region_model, signer=fog_south)
        session.publish(topics.region_model("north"), payload, retain=True)
        federation.details["replayed region models"] = "1"
        session.publish(topics.partial("north"), received.payload, retain=True)
        federation.details["replayed global models"] = "1"
        # Each round's before the next round's partials exist: the bridge reads it while it
        # still waits for a round, so each one is judged.
        for number in range(2, ROUNDS):
            partial = _first_on(watcher, topics.partial("south"), round=str(number), final="false")
            session.publish(topics.partial("north"), partial.payload, retain=True)
            federation.details["replayed partials"] = str(number - 1)
            if number == 2:
                # Delivered to the watcher, so to the bridge too, before north's own.
                _first_on(watcher, topics.partial("north"), region="south", round="2")
                time.sleep(0.5)
                os.kill(held.pid, signal.SIGCONT)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have ended since
            os.kill(held.pid, signal.SIGCONT)
        session.close()
    copied = federation.details.get("replayed partials", "0")
    return (
        f"with the server's login: {copied} of south's partials, a global model and a region "
        "model signed by fog-south copied onto region north's topics"
    )


def _first_on(watcher: Recorder, topic: str, timeout: float = 120, **match: str) -> Received:
    """The first message the watcher saw on `topic` whose header matches `match`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [received for received, _ in watcher.where(**match) if received.topic == topic]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no message on {topic} matching {match} within {timeout} s")


def together(*faults: Fault) -> Fault:
    """Faults at once, in round 2: one after the other, the run could end before the last.
    The first that raises is raised once all are done."""

    def inject(federation: FaultyFederation, watcher: Recorder) -> str:
        notes: dict[int, str] = {}
        errors: list[Exception] = []

        def one(index: int, fault: Fault) -> None:
            try:
                notes[index] = fault(federation, watcher)
            except Exception as exc:  # raised below, in the injector's thread
                errors.append(exc)

        threads = [
            threading.Thread(target=one, args=(index, fault), daemon=True)
            for index, fault in enumerate(faults)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        if errors:
            raise errors[0]
        return "; ".join(
            notes.get(index, f"{fault.__name__} never returned")
            for index, fault in enumerate(faults)
        )

    return inject


# Attacks on a secure federation (tests/security/test_attacks.py): the run must end as if
# nothing had happened.
ATTACKS: dict[str, Fault] = {
    "forged-models": forged_models,
    "fake-regions": fake_regions,
    "replays": replayed_messages,
    # Several in one run: one federation's start-up instead of several (the suite's time).
    "forged-models+fake-regions": together(forged_models, fake_regions),
    "hostile-flood+replays+fake-regions": together(hostile_flood, replayed_messages, fake_regions),
}


SCENARIOS: dict[str, Fault] = {
    "none": no_fault,
    "broker-restart": broker_restart,
    "fog-broker-kill": fog_broker_kill,
    "bridge-kill": bridge_kill,
    "server-kill-resume": server_kill_and_resume,
    "client-kill": client_kill,
    "second-bridge": second_bridge,
    "hostile-flood": hostile_flood,
}


def run_scenario(name: str, workdir: Path, reference: Tensors, tls: bool = False) -> Outcome:
    """Run one scenario (or attack) to the end of its run and describe what came of it;
    the federation is secure as `fogfl up`'s is by default, over TLS with `tls`."""
    if mosquitto_binary() is None:
        raise RuntimeError("fault scenarios need the mosquitto binary")
    config = scenario_config()
    config.security.tls = tls
    fault = SCENARIOS.get(name) or ATTACKS[name]
    run_dir = workdir / name
    started = time.monotonic()
    note = ""
    with FaultyFederation(config, "mosquitto", run_dir, RUN_TIMEOUT_S) as federation:
        assert federation.broker is not None
        watcher = Recorder(
            federation.broker,
            [Topics(config.mqtt.topic_prefix).everything],
            credentials=federation.config.security.credentials,
            tls=tls,
        )
        fault_error = ""
        fault_done = threading.Event()

        def inject() -> None:
            nonlocal note, fault_error
            try:
                note = fault(federation, watcher)
            except Exception as exc:  # reported as the outcome, not raised in a thread
                fault_error = f"the fault could not be injected: {exc}"
            finally:
                fault_done.set()

        # The fault runs beside the launcher's own loop, as an operator's hand would.
        injector = threading.Thread(target=inject, daemon=True)
        injector.start()
        while not (status := federation.poll()).finished:
            time.sleep(0.25)
        fault_done.wait(5)
        watcher.close()
        details = dict(federation.details)
        dead = [
            f"{role.name} ({role.poll()})"
            for role in [*federation.roles, *([federation.server] if federation.server else [])]
            if role.poll() not in (None, 0)
        ]
    seconds = time.monotonic() - started
    rows = read_metrics(run_dir / METRICS_FILE)
    complete = sum(
        1 for row in rows if row.get("round") != "0" and row.get("regions") == str(len(REGIONS))
    )
    exact = False
    model_file = run_dir / MODEL_FILE
    if model_file.exists():
        final = decode(model_file.read_bytes(), kinds={"global"}, max_bytes=10**9).tensors
        exact = all(np.allclose(final[k], reference[k], rtol=1e-5, atol=1e-6) for k in reference)
    return Outcome(
        scenario=name,
        finished=status.ok,
        rounds_complete=complete,
        exact=exact,
        seconds=seconds,
        dead_roles=dead,
        note=fault_error or (status.failure.splitlines() or [note])[0],
        details=details,
    )
