"""Helpers for integration tests: fogfl roles as real processes, and a recording subscriber."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fogfl.broker import LocalBroker
from fogfl.config import MqttSettings, TlsSettings
from fogfl.mqtt import MqttSession, Received
from fogfl.processes import ChildProcess, stop_all
from fogfl.wire import read_metadata


def write_config(path: Path, broker: LocalBroker, **sections: dict[str, Any]) -> Path:
    """A config file pointing at `broker`, with the given sections merged in. The test
    brokers are open (tests of the protocol's mechanics), so is the config, unless a
    `security` section says otherwise (tests/security runs everything secure)."""
    data: dict[str, Any] = {
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "connect_timeout_s": 20,
            # The embedded fallback broker (no Mosquitto on this machine) speaks 3.1.1 only.
            "protocol": "3.1.1" if broker.kind == "embedded" else "5",
        },
        # Each test's fog brokers keep their round journal beside its config.
        "fog": {"state_dir": str(path.parent / "fog-state")},
        "security": {} if "security" in sections else {"insecure": True},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


class Roles:
    """fogfl processes started by a test; every one is stopped by PID at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: dict[str, ChildProcess] = {}

    def start(self, name: str, *arguments: str) -> ChildProcess:
        argv = [sys.executable, "-m", "fogfl", *arguments]
        child = ChildProcess(name, argv, self.log_dir / f"{name}.log")
        self.children[name] = child
        return child

    def wait(self, name: str, timeout: float) -> int:
        code = self.children[name].wait(timeout)
        assert code is not None, (
            f"{name} still running after {timeout} s:\n{self.children[name].tail(30)}"
        )
        return code

    def wait_for_log(self, name: str, text: str, timeout: float = 30) -> None:
        """Wait until the process's log contains `text` (e.g. its "ready" line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(name):
                return
            code = self.children[name].poll()
            assert code is None, f"{name} exited with {code}:\n{self.children[name].tail(30)}"
            time.sleep(0.05)
        raise AssertionError(f"{name} never logged {text!r}:\n{self.children[name].tail(30)}")

    def log(self, name: str) -> str:
        return self.children[name].log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_all(list(self.children.values()), grace=3.0)


@contextmanager
def roles(log_dir: Path) -> Iterator[Roles]:
    started = Roles(log_dir)
    try:
        yield started
    finally:
        started.stop()


@dataclass
class Recorder:
    """Subscribes to topics and keeps every message, with its header, in arrival order."""

    broker: LocalBroker
    topics: list[str]
    messages: list[tuple[Received, dict[str, str]]] = field(default_factory=list)
    on_message: Callable[[Received, dict[str, str]], None] | None = None
    credentials: Path | None = None  # a secure broker: log in as its monitor
    tls: bool = False

    def __post_init__(self) -> None:
        settings = login(self.broker, self.credentials, tls=self.tls)
        self.session = MqttSession(
            settings, f"recorder-{id(self)}", logging.getLogger("recorder"), persistent=False
        )
        self.session.connect(self.topics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            received = self.session.receive(timeout=0.1)
            if received is None:
                continue
            try:
                meta = read_metadata(received.payload)
            except Exception:
                meta = {}
            self.messages.append((received, meta))
            if self.on_message is not None:
                self.on_message(received, meta)

    def where(self, **match: str) -> list[tuple[Received, dict[str, str]]]:
        return [(r, m) for r, m in self.messages if all(m.get(k) == v for k, v in match.items())]

    def wait_for(self, timeout: float, **match: str) -> tuple[Received, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.where(**match)
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no message matching {match} within {timeout} s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.session.close()


def login(
    broker: LocalBroker, credentials: Path | None = None, name: str = "monitor", tls: bool = False
) -> MqttSettings:
    """Settings for a session with `broker`: anonymous, or as identity `name` from the
    credentials directory of a secure federation (by password, or with `tls` by its
    certificate)."""
    settings = MqttSettings(
        host=broker.host,
        port=broker.port,
        protocol="3.1.1" if broker.kind == "embedded" else "5",
    )
    if credentials is None:
        return settings
    own = credentials / name
    if tls:
        settings.tls = TlsSettings(
            enabled=True,
            ca_file=own / "ca.crt",
            cert_file=own / "tls.crt",
            key_file=own / "tls.key",
        )
    else:
        settings.username = name
        settings.password = (own / "password").read_text().strip()
    return settings


def publisher(
    broker: LocalBroker, credentials: Path | None = None, name: str = "monitor", tls: bool = False
) -> MqttSession:
    settings = login(broker, credentials, name, tls)
    return MqttSession(
        settings,
        f"publisher-{time.monotonic_ns()}",
        logging.getLogger("publisher"),
        persistent=False,
    ).connect()


def rejected_reasons(log_text: str) -> list[str]:
    return re.findall(r"rejected message.*?\[([a-z-]+)\]", log_text)
