"""`fogfl up`: a whole federation from one command, and nothing left running afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fogfl.broker import mosquitto_binary
from fogfl.processes import free_port
from fogfl.run_dir import CONFIG_FILE, METRICS_FILE, MODEL_FILE, read_metrics
from fogfl.wire import decode
from tests.reaper import Reaped, run_reaped

pytestmark = pytest.mark.integration


def broker_mode() -> str:
    return "mosquitto" if mosquitto_binary() else "embedded"


def fogfl_up(
    *arguments: str,
    env: dict[str, str] | None = None,
    trigger: Path | None = None,
    signals: list[tuple[float, int]] | None = None,
) -> Reaped:
    """Run `fogfl up` to its end under a subreaper: `leftovers` lists, by PID, every process
    it left behind (brokers included)."""
    return run_reaped(
        [sys.executable, "-m", "fogfl", "up", *arguments],
        env=env,
        trigger=trigger,
        signals=signals or [],
        timeout=240,
    )


def test_up_runs_a_federation_and_writes_the_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    up = fogfl_up(
        "--rounds",
        "3",
        "--clients-per-region",
        "2",
        "--run-dir",
        str(run_dir),
        "--broker",
        broker_mode(),
    )
    output = up.output
    assert up.returncode == 0, output
    rows = read_metrics(run_dir / METRICS_FILE)
    assert [row["round"] for row in rows] == ["0", "1", "2", "3"]
    assert all(row["clients"] == "4" and row["regions"] == "2" for row in rows[1:])
    assert float(rows[3]["eval_loss"]) < float(rows[1]["eval_loss"])
    assert all(
        float(rows[r]["bytes_up"]) > 0 and float(rows[r]["bytes_down"]) > 0 for r in (1, 2, 3)
    )
    assert decode((run_dir / MODEL_FILE).read_bytes(), kinds={"global"}, max_bytes=10**8).final
    assert "rounds: 3" in (run_dir / CONFIG_FILE).read_text()
    logs = {p.name for p in (run_dir / "logs").glob("*.log")}
    assert {
        "server.log",
        "fog-broker-north.log",
        "fog-bridge-south.log",
        "client-north-01.log",
        "client-south-04.log",
    } <= logs
    assert "eval loss" in output and "done in" in output
    assert up.leftovers == []


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    up = fogfl_up(
        "--rounds",
        "500",
        "--clients-per-region",
        "1",
        "--run-dir",
        str(run_dir),
        "--broker",
        broker_mode(),
        # metrics.csv appears once the first round is done: every role is running.
        trigger=run_dir / METRICS_FILE,
        signals=[(0.0, signal.SIGINT)],
    )
    assert up.returncode == 130, up.output
    assert f"interrupted; every process stopped; partial results in {run_dir}" in up.output
    assert up.leftovers == []


def test_failure_names_the_failing_role_and_cleans_up(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "FOGFL_MQTT__CONNECT_TIMEOUT_S": "2"}
    closed_port = str(free_port())
    up = fogfl_up(
        "--broker", "external", "--mqtt-port", closed_port, "--run-dir", str(run_dir), env=env
    )
    output = up.output
    assert up.returncode == 1
    assert "fogfl up failed:" in output and "exited with code 2" in output
    assert "cannot reach the MQTT broker" in output
    assert up.leftovers == []


def test_bad_flag_value_is_one_readable_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fogfl", "up", "--rounds", "0", "--run-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "federation.rounds" in result.stderr and "Traceback" not in result.stderr


def test_up_runs_on_the_embedded_broker(tmp_path: Path) -> None:
    """The fallback for machines without Mosquitto, tested on purpose (not as a fallback)."""
    run_dir = tmp_path / "run"
    up = fogfl_up(
        "--rounds",
        "2",
        "--clients-per-region",
        "1",
        "--run-dir",
        str(run_dir),
        "--broker",
        "embedded",
    )
    output = up.output
    assert up.returncode == 0, output
    assert "broker: embedded" in output
    rows = read_metrics(run_dir / METRICS_FILE)
    assert [row["clients"] for row in rows[1:]] == ["2", "2"]
    assert up.leftovers == []
