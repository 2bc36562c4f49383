"""`fogfl up`: a whole federation from one command, and nothing left running afterwards."""

from __future__ import annotations

import os
import re
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


# A password of the command line's; the roles log in as their own identities.
GIVEN_PASSWORD = "given-password-7d2b9c41"


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
        "--mqtt-password",
        GIVEN_PASSWORD,
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
    assert warnings_in_logs(run_dir) == []
    secrets = [GIVEN_PASSWORD, *provisioned_secrets(run_dir / "security")]
    assert len(secrets) > 2 * 10, secrets  # 10 identities' passwords and keys, the CA's, …
    assert files_holding(run_dir, secrets, but_not=run_dir / "security") == []
    assert GIVEN_PASSWORD not in output
    assert up.leftovers == []


def provisioned_secrets(security: Path) -> list[str]:
    """What the private files (mode 0600) of a run's credentials hold: each password, each
    line of key material (TLS, signing and CA keys), the broker's password hashes."""
    return [
        line.strip()
        for path in sorted(security.rglob("*"))
        if path.is_file() and not path.stat().st_mode & 0o077
        for line in path.read_text().splitlines()
        if len(line.strip()) >= 16 and not line.startswith("-----")
    ]


def files_holding(run_dir: Path, secrets: list[str], but_not: Path) -> list[str]:
    """The files of the run directory (logs and config.yaml among them) outside `but_not`
    in which any of `secrets` appears."""
    found = []
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and but_not not in path.parents:
            content = path.read_bytes()
            found += [
                f"{path.relative_to(run_dir)}: {secret[:6]}…"
                for secret in secrets
                if secret.encode() in content
            ]
    return found


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
    # The options are valid, so the run starts; the clients find no data and fail.
    env = {**os.environ, "FOGFL_TASK__OPTIONS__DATA_DIR": str(tmp_path / "no-data")}
    up = fogfl_up(
        "--task", "ecg5000", "--clients-per-region", "1", "--run-dir", str(run_dir), env=env
    )
    output = " ".join(up.output.split())  # rich may wrap long lines
    assert up.returncode == 1, output
    # Every role that loads the data fails alike; whichever the launcher notices first is
    # named, with the last lines of its own log.
    named = re.search(r"fogfl up failed: (\S+) exited with code 2", output)
    assert named, output
    assert "no ECG5000 data in" in (run_dir / "logs" / f"{named.group(1)}.log").read_text()
    assert "no ECG5000 data in" in output
    assert up.leftovers == []


def fogfl_up_refused(run_dir: Path, *arguments: str, **env: str) -> str:
    """`fogfl up` that must refuse before starting anything: its one line of stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "fogfl", "up", "--run-dir", str(run_dir), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()
    assert "fogfl up: run" not in result.stdout  # nothing was started
    [line] = result.stderr.splitlines()
    return line


@pytest.mark.parametrize(
    ("arguments", "env", "said"),
    [
        (["--rounds", "0"], {}, "--rounds 0: federation.rounds: Input should be greater"),
        (["--regions", "0"], {}, "--regions 0: a federation needs at least one region"),
        (["--clients-per-region", "0"], {}, "--clients-per-region 0: federation.clients_per"),
        ([], {"FOGFL_FEDERATION__ROUNDS": "0"}, "FOGFL_FEDERATION__ROUNDS=0: federation.rounds"),
        (["--task", "nope"], {}, "unknown task 'nope'"),
        ([], {"FOGFL_TASK__OPTIONS__DURATION_S": "1"}, "task.options.duration_s"),
    ],
)
def test_a_run_that_cannot_work_is_refused_before_anything_starts(
    tmp_path: Path, arguments: list[str], env: dict[str, str], said: str
) -> None:
    assert said in fogfl_up_refused(tmp_path / "run", *arguments, **env)


def test_an_external_broker_that_is_not_there_is_refused_naming_its_address(
    tmp_path: Path,
) -> None:
    closed_port = free_port()
    line = fogfl_up_refused(
        tmp_path / "run",
        "--broker",
        "external",
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        str(closed_port),
        "--insecure",
    )
    assert f"--broker external: cannot reach the MQTT broker at 127.0.0.1:{closed_port}" in line


def test_an_external_broker_without_credentials_is_refused(tmp_path: Path) -> None:
    """fogfl cannot give a broker it did not start the run's logins: secure by default
    means the user brings the credentials that broker knows, or says --insecure."""
    line = fogfl_up_refused(
        tmp_path / "run", "--broker", "external", "--mqtt-port", str(free_port())
    )
    assert "--credentials DIR" in line and "--insecure" in line


def warnings_in_logs(run_dir: Path) -> list[str]:
    """Every WARNING or ERROR line any process of the run logged (roles, Mosquitto, amqtt).
    Run as root (a container), fogfl keeps Mosquitto root so that it can write its
    persistence in the run directory, and Mosquitto says once that it should not be root:
    advice about the machine, not news of the run."""
    alarming = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^\d+: (Warning|Error)")
    as_root = "Warning: Mosquitto should not be run as root" if os.geteuid() == 0 else None
    return [
        f"{log.name}: {line}"
        for log in sorted((run_dir / "logs").glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if alarming.search(line) and not (as_root and as_root in line)
    ]


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
    assert warnings_in_logs(run_dir) == []
    assert up.leftovers == []
