"""The command line explains itself and turns bad input into one readable line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogfl.broker import LocalBroker
from fogfl.cli import app
from fogfl.processes import free_port

COMMANDS = ["client", "fog-broker", "fog-bridge", "server", "monitor", "up"]


def fogfl(*arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a fogfl command to its end (the timeout only bounds a hang)."""
    return subprocess.run(
        [sys.executable, "-m", "fogfl", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output and "--mqtt-host" in result.output


def test_top_level_help_lists_the_roles() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_invalid_config_file_is_reported_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("mqtt:\n  port: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "fogfl", "fog-broker", "--region", "north", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "mqtt.port" in result.stderr and "Traceback" not in result.stderr


def test_fog_broker_never_imports_torch() -> None:
    probe = "import sys, fogfl.roles.fog_broker, fogfl.roles.monitor; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("command", [*COMMANDS, "health", "sim", "report", "dissemination"])
def test_help_shows_each_default_once_and_never_none(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "[default: None]" not in result.output
    assert all(line.count("[default:") <= 1 for line in result.output.splitlines())
    if command != "up" and command != "health":
        return
    assert "MQTT broker host. [default: localhost]" in result.output
    if command == "up":
        assert "Federated rounds. [default: 5]" in result.output


def test_server_help_names_the_strategies() -> None:
    result = CliRunner().invoke(app, ["server", "--help"], env={"COLUMNS": "200"})
    assert "fedadam" in result.output and "import path" in result.output
    assert "Run Flower's FedAvg" not in result.output


def test_monitor_duration_bounds_the_wait_for_a_missing_broker() -> None:
    port = free_port()
    # connect_timeout_s stays at its 60 s default: the duration, not it, ends the wait.
    result = fogfl("monitor", "--json", "--duration", "3", "--mqtt-port", str(port), "--insecure")
    assert result.returncode == 2
    assert f"waiting for the MQTT broker at localhost:{port} (1 s)" in result.stderr
    assert f"cannot reach the MQTT broker at localhost:{port}" in result.stderr


def test_a_client_without_a_broker_says_what_it_waits_for() -> None:
    port = free_port()
    result = fogfl(
        "client",
        "--id",
        "north-01",
        "--region",
        "north",
        "--mqtt-port",
        str(port),
        "--insecure",
        FOGFL_MQTT__CONNECT_TIMEOUT_S="3",
        FOGFL_TASK__OPTIONS__DURATION_S="10",
    )
    assert result.returncode == 2
    assert f"waiting for the MQTT broker at localhost:{port} (1 s)" in result.stderr


def test_a_bridge_without_a_flower_server_says_what_it_waits_for(
    mqtt_broker: LocalBroker,
) -> None:
    flower = f"127.0.0.1:{free_port()}"
    result = fogfl(
        "fog-bridge",
        "--region",
        "north",
        "--server",
        flower,
        "--server-wait",
        "3",
        "--mqtt-host",
        mqtt_broker.host,
        "--mqtt-port",
        str(mqtt_broker.port),
        "--insecure",
    )
    assert result.returncode == 2
    assert f"waiting for the Flower server at {flower} (1 s): nothing listens" in result.stderr
    assert f"no Flower server at {flower} answered within 3 s" in result.stderr
    assert "--server-wait" in result.stderr
