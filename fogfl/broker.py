"""Starting a local MQTT broker: Mosquitto when its binary is installed, else the embedded one.

Used by `fogfl up` and by the test suite; both stop the broker by its PID when done.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fogfl.errors import BrokerError
from fogfl.processes import ChildProcess, free_port, wait_for_port

BrokerMode = Literal["auto", "mosquitto", "embedded", "external"]
STARTUP_TIMEOUT_S = 15.0


@dataclass
class LocalBroker:
    kind: Literal["mosquitto", "embedded", "external"]
    host: str
    port: int
    process: ChildProcess | None = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=3.0)


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if Path(candidate).exists():
            return candidate
    return None


def mosquitto_conf(port: int, host: str = "127.0.0.1") -> str:
    """A Mosquitto configuration for one local, anonymous, in-memory listener."""
    return "\n".join(
        [
            f"listener {port} {host}",
            "allow_anonymous true",
            "persistence false",
            "max_queued_messages 10000",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ]
    )


def start_broker(
    mode: BrokerMode,
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> LocalBroker:
    """Start (or, for `external`, just describe) the broker a local federation talks to."""
    if mode == "external":
        if port is None:
            raise BrokerError("--broker external needs --mqtt-port (and --mqtt-host)")
        return LocalBroker("external", host, port)
    binary = mosquitto_binary()
    if mode == "mosquitto" and binary is None:
        raise BrokerError(
            "--broker mosquitto, but no mosquitto binary is on PATH; install it "
            "(apt-get install mosquitto) or use --broker embedded"
        )
    if mode in ("auto", "mosquitto") and binary is not None:
        return _start_mosquitto(binary, workdir, host, port)
    return _start_embedded(workdir, host, port)


def _start_mosquitto(binary: str, workdir: Path, host: str, port: int | None) -> LocalBroker:
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        chosen = port or free_port(host)
        conf = workdir / "mosquitto.conf"
        conf.write_text(mosquitto_conf(chosen, host))
        process = ChildProcess("mosquitto", [binary, "-c", str(conf)], workdir / "mosquitto.log")
        if _wait_ready(process, host, chosen):
            return LocalBroker("mosquitto", host, chosen, process)
        process.stop(grace=1.0)
        if port is not None:
            break
    raise BrokerError(f"mosquitto did not start; see {workdir / 'mosquitto.log'}")


def _start_embedded(workdir: Path, host: str, port: int | None) -> LocalBroker:
    chosen = port or free_port(host)
    argv = [sys.executable, "-m", "fogfl.embedded_broker", "--host", host, "--port", str(chosen)]
    process = ChildProcess("embedded-broker", argv, workdir / "embedded-broker.log")
    if not _wait_ready(process, host, chosen):
        process.stop(grace=1.0)
        raise BrokerError(
            f"the embedded broker did not start; see {workdir / 'embedded-broker.log'}"
        )
    return LocalBroker("embedded", host, chosen, process)


def _wait_ready(process: ChildProcess, host: str, port: int) -> bool:
    return (
        process.poll() is None
        and wait_for_port(host, port, STARTUP_TIMEOUT_S)
        and process.poll() is None
    )
