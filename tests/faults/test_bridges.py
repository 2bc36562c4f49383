"""Bridges that crash, multiply or never come: real processes on a real broker.

The server counts regions, not connections: a bridge SIGKILLed mid-round and restarted
rejoins and its region still answers that round; a second bridge for a region replaces the
first instead of counting the region twice; a region without a bridge fails its round after
`server.region_wait_s` instead of Flower's 24 h wait. In every case the global model is
flat FedAvg over the updates that were aggregated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fogfl.broker import LocalBroker
from fogfl.mqtt import Received
from fogfl.processes import free_port
from fogfl.run_dir import METRICS_FILE, read_metrics
from fogfl.wire import Envelope, read_metadata
from tests.faults.test_server_restart import TOPICS, start_regions, tensors_of
from tests.integration.harness import Recorder, roles, write_config

pytestmark = pytest.mark.integration
CLIENTS = {"north": [("north-1", 240), ("north-2", 160)], "south": [("south-3", 200)]}


def assert_flat_fedavg(recorder: Recorder, rounds: int, regions: dict[str, list[str]]) -> None:
    """Every global model after round r is the example-weighted mean of the round-r
    updates of the clients of `regions`: each counted once, none left out."""
    globals_ = {
        (int(m["round"]), m["final"]): tensors_of(r)
        for r, m in recorder.messages
        if m.get("kind") == "global"
    }
    expected_senders = sorted(c for members in regions.values() for c in members)
    for round_ in range(1, rounds + 1):
        updates: dict[str, Envelope] = {
            m["sender"]: tensors_of(r)
            for r, m in recorder.messages
            if m.get("kind") == "update" and m["round"] == str(round_) and m["region"] in regions
        }
        assert sorted(updates) == expected_senders, f"round {round_}"
        chosen = [updates[c] for c in expected_senders]
        after = globals_[(round_ + 1, "false")] if round_ < rounds else globals_[(rounds, "true")]
        for name, value in after.tensors.items():
            flat = np.average(
                np.stack([u.tensors[name] for u in chosen]).astype(np.float64),
                axis=0,
                weights=[u.num_examples for u in chosen],
            )
            relative = np.linalg.norm(value - flat) / np.linalg.norm(flat)
            assert relative <= 1e-6, f"round {round_} {name}: {relative:.2g} off flat FedAvg"


def ids(clients: dict[str, list[tuple[str, int]]]) -> dict[str, list[str]]:
    return {region: [c for c, _ in members] for region, members in clients.items()}


def test_a_bridge_killed_mid_round_and_restarted_rejoins_and_its_region_answers(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    rounds = 3
    recorder = Recorder(fresh_broker, [TOPICS.all_updates, TOPICS.global_model])
    with roles(tmp_path / "logs") as started:
        killed: list[int] = []

        def kill_north_bridge_mid_round_2(received: Received, meta: dict[str, str]) -> None:
            # North's bridge is inside Flower's round-2 fit, waiting for the partial.
            if not killed and meta.get("kind") == "update" and meta.get("round") == "2":
                killed.append(started.children["bridge-north"].pid)
                os.kill(killed[0], signal.SIGKILL)

        recorder.on_message = kill_north_bridge_mid_round_2
        common = start_regions(
            started,
            tmp_path,
            fresh_broker,
            CLIENTS,
            rounds,
            sections={"server": {"region_wait_s": 60}},
            round_s=3,
        )
        started.start("server", "server", "--config", str(common))
        assert started.wait("bridge-north", 120) == -signal.SIGKILL, started.log("bridge-north")
        started.start(
            "bridge-north-again", "fog-bridge", "--region", "north", "--config", str(common)
        )
        assert started.wait("server", 180) == 0, started.log("server")
        for name in started.children:
            if name != "bridge-north":
                assert started.wait(name, 60) == 0, started.log(name)
        server_log = started.log("server")
    recorder.close()

    assert "region north: its bridge's connection closed during round 2" in server_log
    rows = {int(row["round"]): row for row in read_metrics(tmp_path / "run" / METRICS_FILE)}
    assert [rows[r]["regions"] for r in (1, 2, 3)] == ["2", "2", "2"]
    assert [rows[r]["failed_regions"] for r in (1, 2, 3)] == ["0", "0", "0"]
    assert_flat_fedavg(recorder, rounds, ids(CLIENTS))


def test_two_bridges_for_one_region_do_not_bias_the_global_model(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    rounds = 4
    recorder = Recorder(fresh_broker, [TOPICS.all_updates, TOPICS.global_model])
    with roles(tmp_path / "logs") as started:
        second: list[str] = []

        def start_a_second_north_bridge(received: Received, meta: dict[str, str]) -> None:
            # The first one is inside round 2's fit: it finishes that, then stands down.
            if not second and meta.get("kind") == "update" and meta.get("round") == "2":
                second.append("bridge-north-2")
                started.start(
                    "bridge-north-2", "fog-bridge", "--region", "north", "--config", str(common)
                )

        recorder.on_message = start_a_second_north_bridge
        common = start_regions(started, tmp_path, fresh_broker, CLIENTS, rounds, round_s=3)
        started.start("server", "server", "--config", str(common))
        assert started.wait("server", 180) == 0, started.log("server")
        for name in started.children:
            assert started.wait(name, 60) == 0, started.log(name)
        server_log = started.log("server")
        north_logs = [started.log("bridge-north"), started.log("bridge-north-2")]
    recorder.close()

    assert "region north: a second bridge connected" in server_log
    stopped = [log for log in north_logs if "took over at the server; this bridge stops" in log]
    assert len(stopped) == 1, "exactly one of north's bridges should have stood down"
    rows = {int(row["round"]): row for row in read_metrics(tmp_path / "run" / METRICS_FILE)}
    assert [rows[r]["regions"] for r in range(1, rounds + 1)] == ["2"] * rounds
    assert [rows[r]["clients"] for r in range(1, rounds + 1)] == ["3"] * rounds
    assert_flat_fedavg(recorder, rounds, ids(CLIENTS))


def test_a_region_without_a_bridge_fails_its_rounds_after_region_wait_s(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    rounds = 2
    recorder = Recorder(fresh_broker, [TOPICS.all_updates, TOPICS.global_model])
    with roles(tmp_path / "logs") as started:
        common = start_regions(
            started,
            tmp_path,
            fresh_broker,
            CLIENTS,
            rounds,
            bridges={"south": 0},
            sections={
                "federation": {"min_regions": 1},
                # Enough for north's bridge to join on a busy machine; south never does.
                "server": {"region_wait_s": 6, "round_timeout_s": 86_400},
            },
        )
        started.start("server", "server", "--config", str(common))
        # Flower's own wait for a missing client would be 86,400 s.
        assert started.wait("server", 180) == 0, started.log("server")
        server_log = started.log("server")
    recorder.close()

    assert server_log.count("region south: no bridge connected within 6 s") == rounds + 1
    rows = {int(row["round"]): row for row in read_metrics(tmp_path / "run" / METRICS_FILE)}
    assert [rows[r]["regions"] for r in (1, 2)] == ["1", "1"]
    assert [rows[r]["failed_regions"] for r in (1, 2)] == ["1", "1"]
    # South's clients trained, but a region without a bridge is not in the model.
    assert_flat_fedavg(recorder, rounds, {"north": ids(CLIENTS)["north"]})


class RawSubscriber:
    """Sees what fogfl's sessions hide from the roles: empty payloads, which clear a
    retained message. Keeps (topic, run id or "cleared") in arrival order."""

    def __init__(self, broker: LocalBroker, topic: str) -> None:
        self.seen: list[tuple[str, str]] = []
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "the raw subscriber was never subscribed"

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        run = read_metadata(message.payload).get("run_id", "?") if message.payload else "cleared"
        self.seen.append((message.topic, run))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_serving_bridge_joins_the_next_run(fresh_broker: LocalBroker, tmp_path: Path) -> None:
    recorder = Recorder(fresh_broker, [TOPICS.round_announcement])
    raw = RawSubscriber(fresh_broker, TOPICS.all_partials)
    with roles(tmp_path / "logs") as started:
        common = start_regions(started, tmp_path, fresh_broker, CLIENTS, rounds=1, serve=True)
        for run_id in ("first", "second"):
            name = f"server-{run_id}"
            run_dir = tmp_path / run_id
            started.start(
                name,
                "server",
                "--run-id",
                run_id,
                "--run-dir",
                str(run_dir),
                "--config",
                str(common),
            )
            assert started.wait(name, 180) == 0, started.log(name)
            rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
            assert rows[1]["regions"] == "2" and rows[1]["clients"] == "3", run_id
        for bridge in ("bridge-north", "bridge-south"):
            assert started.children[bridge].poll() is None, started.log(bridge)
            assert started.log(bridge).count("the Flower server ended the run") == 2
    recorder.close()
    raw.close()

    # Each run's last announcement says it is over; the second run began by clearing the
    # partials the first left retained, before any of its own.
    announced = [
        (m["run_id"], json.loads(m["config"]).get("ended", False)) for _, m in recorder.messages
    ]
    ends = [i for i, (_, ended) in enumerate(announced) if ended]
    assert [announced[i][0] for i in ends] == ["first", "second"]
    assert ends[0] < announced.index(("second", False)) and ends[1] == len(announced) - 1
    partials = raw.seen
    last_of_first = max(i for i, (_, run) in enumerate(partials) if run == "first")
    first_of_second = next(i for i, (_, run) in enumerate(partials) if run == "second")
    between = partials[last_of_first + 1 : first_of_second]
    assert sorted(topic for topic, run in between if run == "cleared") == [
        TOPICS.partial("north"),
        TOPICS.partial("south"),
    ]


def test_without_serve_a_bridge_whose_server_never_comes_says_so_and_exits(
    tmp_path: Path, fresh_broker: LocalBroker
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "bridge.yaml",
        fresh_broker,
        bridge={"server_address": f"127.0.0.1:{port}", "server_wait_s": 1},
    )
    done = subprocess.run(
        [sys.executable, "-m", "fogfl", "fog-bridge", "--region", "north", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"no Flower server at 127.0.0.1:{port} answered within 1 s" in done.stderr
