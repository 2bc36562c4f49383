"""The command line explains itself and turns bad input into one readable line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogfl.cli import app

COMMANDS = ["client", "fog-broker", "fog-bridge", "server", "monitor", "up"]


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
