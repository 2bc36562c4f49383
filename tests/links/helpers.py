"""The link runner as a child process, the way the launcher will start it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Runner:
    process: subprocess.Popen[str]
    ports: dict[str, int]
    counters_path: Path

    def counters(self) -> dict[str, Any]:
        return json.loads(self.counters_path.read_text())["links"]

    def stop(self) -> tuple[int, str]:
        """SIGTERM by PID; (exit code, stdout)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        stdout, _ = self.process.communicate(timeout=10)
        return self.process.returncode, stdout


@contextmanager
def link_runner(tmp_path: Path, spec: dict[str, Any]) -> Iterator[Runner]:
    spec_path, ports, counters = (
        tmp_path / "links.json",
        tmp_path / "ports.json",
        tmp_path / "c.json",
    )
    spec_path.write_text(json.dumps(spec))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fogfl.links",
            str(spec_path),
            "--ports",
            str(ports),
            "--counters",
            str(counters),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not ports.exists():
            if process.poll() is not None:
                raise AssertionError(f"the link runner exited: {process.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError("the link runner wrote no ports file in 20 s")
            time.sleep(0.02)
        yield Runner(process, json.loads(ports.read_text()), counters)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
