"""`fogfl up` interrupted at any moment leaves no process behind, brokers included.

Each run happens under a subreaper (tests/reaper.py), so whatever the launcher leaves
behind is found by its PID, however it detached itself.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from fogfl.broker import mosquitto_binary
from fogfl.config import load_config
from fogfl.processes import ChildProcess
from fogfl.roles.launcher import Federation
from tests.reaper import run_reaped

pytestmark = pytest.mark.integration

UP = [sys.executable, "-m", "fogfl", "up", "--rounds", "3", "--clients-per-region", "2"]


def test_ctrl_c_while_the_broker_starts_leaves_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    reaped = run_reaped(
        [*UP, "--broker", "embedded", "--run-dir", str(run_dir)],
        # The embedded broker takes about a second to listen: its log appearing means the
        # launcher is waiting for it.
        trigger=run_dir / "logs" / "embedded-broker.log",
        signals=[(0.0, signal.SIGINT)],
    )
    assert reaped.leftovers == [], reaped.output
    assert reaped.returncode == 130, reaped.output
    assert f"partial results in {run_dir}" in reaped.output


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs the mosquitto binary")
def test_two_ctrl_c_20_ms_apart_leave_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    reaped = run_reaped(
        [*UP, "--broker", "mosquitto", "--run-dir", str(run_dir)],
        trigger=run_dir / "logs" / "client-south-04.log",
        signals=[(0.3, signal.SIGINT), (0.32, signal.SIGINT)],
    )
    assert reaped.leftovers == [], reaped.output
    assert reaped.returncode == 130, reaped.output
    assert "interrupted" in reaped.output


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs the mosquitto binary")
def test_sigterm_while_mosquitto_starts_leaves_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    reaped = run_reaped(
        [*UP, "--broker", "mosquitto", "--run-dir", str(run_dir)],
        trigger=run_dir / "logs" / "mosquitto.log",
        signals=[(0.0, signal.SIGTERM), (0.01, signal.SIGINT)],
    )
    assert reaped.leftovers == [], reaped.output
    assert reaped.returncode == 130, reaped.output


def test_a_federation_stops_its_own_children_only(tmp_path: Path) -> None:
    """A test's (or any caller's) own broker started before the federation outlives it."""
    bystander = ChildProcess(
        "bystander", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b.log"
    )
    try:
        federation = Federation(load_config(None, environ={}), "mosquitto", tmp_path / "run", 60)
        ours = ChildProcess(
            "ours", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "o.log"
        )
        federation.stop()
        assert ours.poll() is not None, "a child started during the federation was left running"
        assert bystander.poll() is None, "the federation stopped a child that was not its own"
    finally:
        bystander.stop(grace=1.0)
