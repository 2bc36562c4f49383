"""The server, crashed and resumed, and failing fast: real processes on a real broker.

A server killed with SIGKILL after round 2 of 5 and started again with `--resume` continues
the same run from its checkpoint, the clients, fog brokers and bridges following it without
a restart, and ends with the global model an uninterrupted run ends with. A server whose
run cannot go on exits 1 at once with the reason in one line, although Flower's gRPC
threads still hold its bridges' connections.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fogfl.broker import LocalBroker, start_broker
from fogfl.mqtt import Received, Topics
from fogfl.processes import free_port
from fogfl.run_dir import METRICS_FILE, MODEL_FILE, SUMMARY_FILE, read_metrics
from fogfl.wire import Envelope, Tensors, decode
from tests.integration.harness import Recorder, Roles, roles, write_config

pytestmark = pytest.mark.integration
TOPICS = Topics("fl")
LIMIT = 10**8
# (client id, seconds of QoE trace): uneven regions, so weighting matters.
CLIENTS = {"north": [("north-1", 240), ("north-2", 160)], "south": [("south-3", 200)]}


def start_regions(
    started: Roles,
    tmp_path: Path,
    broker: LocalBroker,
    clients: dict[str, list[tuple[str, int]]],
    rounds: int,
    *,
    bridges: dict[str, int] | None = None,
    fog_regions: list[str] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
    serve: bool = False,
    round_s: float | None = None,
    with_clients: bool = True,
) -> Path:
    """Start the fog brokers, bridges (`bridges[region]` of them, default one) and clients
    of a federation (`serve`: with --serve) and wait until each is ready; returns the shared
    config file, which points the server at `tmp_path / "run"`. The test starts the
    server. `round_s`: each fog broker expects one update more than it gets, so every
    round lasts that long (its deadline) and still aggregates every update. Without
    `with_clients` only the fog sites start (for a run that fails before any training)."""
    staying = ["--serve"] if serve else []
    extra = 0 if round_s is None else 1
    port = free_port()
    settings: dict[str, dict[str, Any]] = {
        "federation": {"rounds": rounds, "regions": list(clients)},
        "training": {"local_epochs": 1},
        "fog": {"deadline_s": round_s or 60},
        "bridge": {"server_address": f"127.0.0.1:{port}", "partial_timeout_s": 60},
        "server": {
            "address": f"127.0.0.1:{port}",
            "run_dir": str(tmp_path / "run"),
            "round_timeout_s": 90,
        },
    }
    for section, values in (sections or {}).items():
        settings.setdefault(section, {}).update(values)
    common = write_config(tmp_path / "common.yaml", broker, **settings)
    for region, members in clients.items():
        if fog_regions is None or region in fog_regions:
            started.start(
                f"fog-{region}",
                "fog-broker",
                "--region",
                region,
                "--expected",
                str(len(members) + extra),
                "--state-dir",
                str(tmp_path / "fog-state"),
                "--config",
                str(common),
                *staying,
            )
        for copy in range((bridges or {}).get(region, 1)):
            name = f"bridge-{region}" + (f"-{copy + 1}" if copy else "")
            started.start(name, "fog-bridge", "--region", region, "--config", str(common), *staying)
        for client_id, seconds in members if with_clients else []:
            own = write_config(
                tmp_path / f"{client_id}.yaml",
                broker,
                task={"name": "qoe", "options": {"duration_s": seconds}},
                training={"local_epochs": 1},
            )
            started.start(
                client_id,
                "client",
                *("--id", client_id, "--region", region, "--config", str(own), *staying),
            )
    for name in started.children:
        started.wait_for_log(name, "ready", timeout=90)
    return common


def final_model(run_dir: Path) -> Tensors:
    return decode((run_dir / MODEL_FILE).read_bytes(), kinds={"global"}, max_bytes=LIMIT).tensors


def tensors_of(received: Received) -> Envelope:
    return decode(received.payload, kinds={"update", "global", "partial"}, max_bytes=LIMIT)


def assert_same_model(actual: Tensors, expected: Tensors) -> None:
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def uninterrupted_run(tmp_path: Path, rounds: int) -> Tensors:
    broker = start_broker("auto", tmp_path / "broker")
    try:
        with roles(tmp_path / "logs") as started:
            common = start_regions(started, tmp_path, broker, CLIENTS, rounds)
            started.start("server", "server", "--config", str(common))
            assert started.wait("server", 300) == 0, started.log("server")
        return final_model(tmp_path / "run")
    finally:
        broker.stop()


def test_a_server_killed_after_round_2_and_resumed_ends_with_the_uninterrupted_model(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    rounds = 5
    expected = uninterrupted_run(tmp_path / "reference", rounds)

    killed: list[str] = []
    recorder = Recorder(fresh_broker, [TOPICS.global_model])
    with roles(tmp_path / "logs") as started:

        def kill_as_round_3_begins(received: Received, meta: dict[str, str]) -> None:
            # Round 3's model goes out after round 2's checkpoint is written.
            if not killed and meta.get("kind") == "global" and meta.get("round") == "3":
                os.kill(started.children["server"].pid, signal.SIGKILL)
                killed.append(meta["run_id"])

        recorder.on_message = kill_as_round_3_begins
        common = start_regions(started, tmp_path, fresh_broker, CLIENTS, rounds)
        started.start("server", "server", "--config", str(common))
        assert started.wait("server", 300) == -signal.SIGKILL, started.log("server")
        assert killed, "the server was never killed"
        run_dir = tmp_path / "run"
        started.start("resumed", "server", "--run-dir", str(run_dir), "--resume")
        assert started.wait("resumed", 300) == 0, started.log("resumed")
        for name in started.children:
            if name != "server":
                assert started.wait(name, 60) == 0, started.log(name)
        resumed_log = started.log("resumed")
    recorder.close()

    assert_same_model(final_model(run_dir), expected)
    run_id = killed[0]
    assert f"run {run_id} resumes after round 2 of 5" in resumed_log
    summary = decode_summary(run_dir)
    assert summary["run_id"] == run_id and summary["failure"] is None
    assert {m["run_id"] for _, m in recorder.messages} == {run_id}
    published = [(int(m["round"]), m["final"]) for _, m in recorder.messages]
    assert published[:3] == [(1, "false"), (2, "false"), (3, "false")]
    # The resumed server starts at round 3; nothing before it is redone.
    assert published[3:] == [(3, "false"), (4, "false"), (5, "false"), (5, "true")]
    rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
    assert [rows[r]["regions"] for r in range(1, 6)] == ["2"] * 5
    assert [rows[r]["clients"] for r in range(1, 6)] == ["3"] * 5
    assert rows[5]["eval_loss"]


def decode_summary(run_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((run_dir / SUMMARY_FILE).read_text())
    return loaded


def stopped_line(log_text: str) -> str:
    lines = [line for line in log_text.splitlines() if " stopped: " in line]
    assert len(lines) == 1, log_text
    return lines[0]


def test_a_round_short_of_min_regions_stops_the_server_at_once(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    # South's bridge is connected, but south has no fog broker: its partial never comes.
    with roles(tmp_path / "logs") as started:
        common = start_regions(
            started,
            tmp_path,
            fresh_broker,
            CLIENTS,
            rounds=3,
            fog_regions=["north"],
            sections={
                "bridge": {"partial_timeout_s": 3},
                "server": {"round_timeout_s": 60},
            },
        )
        started.start("server", "server", "--config", str(common))
        assert started.wait("server", 120) == 1, started.log("server")
        log_text = started.log("server")
        for bridge in ("bridge-north", "bridge-south"):
            # Connected to the end: the server went away under them.
            started.wait_for_log(bridge, "lost the Flower server", timeout=30)
    line = stopped_line(log_text)
    assert "round 1: 1 of the 2 regions it needs answered" in line
    assert "region south: no round 1 partial within 3 s" in line
    assert "continue the run with `fogfl server --run-dir" in log_text
    rows = {int(row["round"]): row for row in read_metrics(tmp_path / "run" / METRICS_FILE)}
    assert rows[1]["regions"] == "1" and 2 not in rows
    assert "round 1: 1 of the 2 regions" in decode_summary(tmp_path / "run")["failure"]


def test_a_global_model_over_the_payload_limit_stops_the_server_at_once(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    with roles(tmp_path / "logs") as started:
        # The server fails as round 1 begins: no client would train.
        common = start_regions(
            started, tmp_path, fresh_broker, CLIENTS, rounds=2, with_clients=False
        )
        strict = write_config(
            tmp_path / "server.yaml",
            fresh_broker,
            **{
                **_sections_of(common),
                "wire": {"max_payload_bytes": 1024},
            },
        )
        started.start("server", "server", "--config", str(strict))
        assert started.wait("server", 120) == 1, started.log("server")
        log_text = started.log("server")
    line = stopped_line(log_text)
    assert re.search(
        r"the global model of round 1 is [\d,]+ bytes, over wire.max_payload_bytes \(1,024\)",
        line,
    ), line
    # The server announced round 1 only after both bridges had joined it.
    assert "region north: bridge connected" in log_text
    assert "region south: bridge connected" in log_text


def _sections_of(config_file: Path) -> dict[str, dict[str, Any]]:
    loaded: dict[str, dict[str, Any]] = yaml.safe_load(config_file.read_text())
    loaded.pop("mqtt", None)
    return loaded
