"""Starting a local MQTT broker: Mosquitto when its binary is installed, else the embedded one.

Used by `fogfl up` and by the test suite; both stop the broker by its PID when done.
Mosquitto runs with persistence in its work directory, so retained messages, persistent
sessions and the QoS 1 messages queued for them survive a restart (`LocalBroker.restart`):
all of it after SIGTERM, which saves on the way out; after SIGKILL what the last autosave
wrote. The embedded broker keeps everything in memory: a restart loses it all.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fogfl.errors import BrokerError
from fogfl.processes import ChildProcess, free_port, wait_for_port

BrokerMode = Literal["auto", "mosquitto", "embedded", "external"]


@dataclass(frozen=True)
class BrokerSecurity:
    """What the broker enforces: logins (a password file, or with `tls` client
    certificates whose common name is the user) and the ACL; see fogfl/security."""

    password_file: Path
    acl_file: Path
    tls: tuple[Path, Path, Path] | None = None  # CA, certificate, key

    @classmethod
    def of_bundle(cls, directory: Path, tls: bool) -> BrokerSecurity:
        """The broker's files in a credentials directory written by `fogfl certs`."""
        broker = (directory / "broker").resolve()
        certificates = (broker / "ca.crt", broker / "broker.crt", broker / "broker.key")
        return cls(broker / "passwd", broker / "acl", certificates if tls else None)


STARTUP_TIMEOUT_S = 15.0
STOP_GRACE_S = 10.0  # Mosquitto saves its database on SIGTERM; large retained models take a while
AUTOSAVE_INTERVAL_S = 2  # what a SIGKILL can lose at most
PERSISTENCE_DIR = "mosquitto-data"


@dataclass
class LocalBroker:
    """A broker a federation talks to; the ones fogfl started can be stopped and restarted
    on the same port, by their own PID."""

    kind: Literal["mosquitto", "embedded", "external"]
    host: str
    port: int
    process: ChildProcess | None = None
    argv: list[str] = field(default_factory=list)
    log_path: Path | None = None

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its database), SIGKILL if it does not exit in time."""
        if self.process is not None:
            self.process.stop(grace=STOP_GRACE_S)

    def kill(self) -> None:
        """SIGKILL, as a crash would: Mosquitto keeps only what its last autosave wrote."""
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.stop(grace=0.0)

    def start(self) -> None:
        """Start a stopped broker again on the same port, with the same persistence."""
        if self.process is None or self.log_path is None:
            raise BrokerError(f"the {self.kind} broker at {self.host}:{self.port} is not fogfl's")
        if self.process.poll() is None:
            return
        process = ChildProcess(self.process.name, self.argv, self.log_path)
        # The port may linger for a moment after the old process; only a taken port fails.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _wait_ready(process, self.host, self.port):
            process.stop(grace=1.0)
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"the {self.kind} broker did not start again on port {self.port}; "
                    f"see {self.log_path}"
                )
            time.sleep(0.2)
            process = ChildProcess(self.process.name, self.argv, self.log_path)
        self.process = process

    def restart(self, downtime_s: float = 0.0) -> None:
        """Stop by PID, stay down `downtime_s`, start again on the same port."""
        self.stop()
        time.sleep(downtime_s)
        self.start()


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if Path(candidate).exists():
            return candidate
    return None


def mosquitto_conf(
    port: int,
    host: str = "127.0.0.1",
    persistence_dir: Path | None = None,
    *,
    autosave_interval_s: int = AUTOSAVE_INTERVAL_S,
    session_expiry_s: int = 3600,
    security: BrokerSecurity | None = None,
) -> str:
    """A Mosquitto configuration for one local listener: with `security`, logins and the
    ACL enforced (over TLS with client certificates if it says so), else anonymous. With
    `persistence_dir`, what it holds survives a restart, and MQTT 3.1.1 persistent sessions
    of clients that went away expire after `session_expiry_s` (rounded up to hours, as
    Mosquitto counts)."""
    lines = [f"listener {port} {host}"]
    if security is None:
        lines.append("allow_anonymous true")
    else:
        lines += ["allow_anonymous false", f"acl_file {security.acl_file}"]
        if security.tls is None:
            lines.append(f"password_file {security.password_file}")
        else:
            ca, cert, key = security.tls
            lines += [
                f"cafile {ca}",
                f"certfile {cert}",
                f"keyfile {key}",
                "require_certificate true",
                "use_identity_as_username true",
                "tls_version tlsv1.2",
            ]
    if persistence_dir is None:
        lines.append("persistence false")
    else:
        lines += [
            "persistence true",
            f"persistence_location {persistence_dir}/",
            f"autosave_interval {autosave_interval_s}",
            f"persistent_client_expiration {max(1, math.ceil(session_expiry_s / 3600))}h",
        ]
        if os.geteuid() == 0:
            # As root, Mosquitto would switch to its own user, who cannot write there.
            lines.append("user root")
    lines += [
        "max_queued_messages 10000",
        # A fog broker acknowledges a chunked update's chunks only once the whole update is in
        # its journal; with Mosquitto's default of 20 in flight, 20 chunks would stall it.
        "max_inflight_messages 0",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "",
    ]
    return "\n".join(lines)


def local_broker_problem(mode: BrokerMode) -> str:
    """Why `start_broker(mode)` could not start a local broker here, or "" if it can."""
    if mode == "external":
        return ""
    if mode in ("auto", "mosquitto") and mosquitto_binary() is not None:
        return ""
    if mode == "mosquitto":
        return (
            "--broker mosquitto, but no mosquitto binary is on PATH; install it "
            "(apt-get install mosquitto) or use --broker embedded"
        )
    if importlib.util.find_spec("amqtt") is None:
        return (
            "no mosquitto binary is on PATH and the embedded broker's amqtt is not installed; "
            "install mosquitto (apt-get install mosquitto) or amqtt (pip install amqtt)"
        )
    return ""


def start_broker(
    mode: BrokerMode,
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    session_expiry_s: int = 3600,
    security: BrokerSecurity | None = None,
) -> LocalBroker:
    """Start (or, for `external`, just describe) the broker a local federation talks to;
    with `security`, it admits only the identities and topics that says."""
    if mode == "external":
        if port is None:
            raise BrokerError("--broker external needs --mqtt-port (and --mqtt-host)")
        return LocalBroker("external", host, port)
    problem = local_broker_problem(mode)
    if problem:
        raise BrokerError(problem)
    binary = mosquitto_binary()
    if mode in ("auto", "mosquitto") and binary is not None:
        return _start_mosquitto(binary, workdir, host, port, session_expiry_s, security)
    return _start_embedded(workdir, host, port, security)


def _start_mosquitto(
    binary: str,
    workdir: Path,
    host: str,
    port: int | None,
    session_expiry_s: int,
    security: BrokerSecurity | None,
) -> LocalBroker:
    workdir.mkdir(parents=True, exist_ok=True)
    data = (workdir / PERSISTENCE_DIR).resolve()
    data.mkdir(exist_ok=True)
    log_path = workdir / "mosquitto.log"
    for _attempt in range(3):
        chosen = port or free_port(host)
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            mosquitto_conf(chosen, host, data, session_expiry_s=session_expiry_s, security=security)
        )
        argv = [binary, "-c", str(conf)]
        process = ChildProcess("mosquitto", argv, log_path)
        if _wait_ready(process, host, chosen):
            return LocalBroker("mosquitto", host, chosen, process, argv, log_path)
        process.stop(grace=1.0)
        if port is not None:
            break
    raise BrokerError(f"mosquitto did not start; see {log_path}")


def _start_embedded(
    workdir: Path, host: str, port: int | None, security: BrokerSecurity | None
) -> LocalBroker:
    chosen = port or free_port(host)
    argv = [sys.executable, "-m", "fogfl.embedded_broker", "--host", host, "--port", str(chosen)]
    if security is not None:
        argv += ["--acl-file", str(security.acl_file)]
        if security.tls is None:
            argv += ["--password-file", str(security.password_file)]
        else:
            ca, cert, key = security.tls
            argv += ["--cafile", str(ca), "--certfile", str(cert), "--keyfile", str(key)]
    log_path = workdir / "embedded-broker.log"
    process = ChildProcess("embedded-broker", argv, log_path)
    if not _wait_ready(process, host, chosen):
        process.stop(grace=1.0)
        raise BrokerError(f"the embedded broker did not start; see {log_path}")
    return LocalBroker("embedded", host, chosen, process, argv, log_path)


def _wait_ready(process: ChildProcess, host: str, port: int) -> bool:
    return (
        process.poll() is None
        and wait_for_port(host, port, STARTUP_TIMEOUT_S)
        and process.poll() is None
    )
