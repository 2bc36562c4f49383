"""Child processes that fogfl starts: free ports, and stopping them by their own PIDs."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out as the source ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; also covers most other systems' ranges


def _bound_outside_ephemeral(host: str) -> socket.socket:
    """A socket bound to a free port below the ephemeral range.

    A listener on an ephemeral port can be lost while it is down: a client that keeps
    reconnecting to it (a serving bridge, a client waiting for a restarted broker) may be
    given that very port as its source port, and TCP then connects the socket to itself,
    so the port is taken when the listener comes back. Ports below the range are never
    handed out that way. Falls back to the kernel's pick when none is free."""
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 12_000), low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((host, port))
            return probe
        except OSError:
            probe.close()
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind((host, 0))
    return probe


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now, outside the ephemeral range."""
    with _bound_outside_ephemeral(host) as probe:
        return int(probe.getsockname()[1])


HELD_PORT_ENV = "FOGFL_HELD_PORT_FD"


def reserve_port(host: str = "127.0.0.1") -> socket.socket:
    """Hold a free port for a child that binds it later: bound, never listening. Hand it to
    the child with `ChildProcess(..., held_port=socket)`; the child calls `release_held_port()`
    right before it binds, so no other program can take the port in between."""
    return _bound_outside_ephemeral(host)


def release_held_port() -> None:
    """Close the port a parent held for this process (see `reserve_port`), if any."""
    fd = os.environ.pop(HELD_PORT_ENV, "")
    if fd.isdigit():
        with contextlib.suppress(OSError):
            os.close(int(fd))


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """True once something accepts TCP connections on host:port, False after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


_started: list[ChildProcess] = []
_started_lock = threading.Lock()


class ChildProcess:
    """A process fogfl started, with its output in a log file, stopped by its own PID.

    Each child leads its own session, so Ctrl-C at the terminal reaches only the parent,
    which then stops every child in order. Every child is also registered at once, so
    `stop_started` can end it even if its starter was interrupted before keeping it.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        held_port: socket.socket | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        passed: tuple[int, ...] = ()
        if held_port is not None:
            passed = (held_port.fileno(),)
            env = {**(os.environ if env is None else env), HELD_PORT_ENV: str(passed[0])}
        with signals_deferred():
            self.popen = subprocess.Popen(
                self.argv,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
                pass_fds=passed,
            )
            with _started_lock:
                _started.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        if self.popen.poll() is None:
            _signal(self.pid, signal.SIGTERM)
            if self.wait(grace) is None:
                _signal(self.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()
        with _started_lock, contextlib.suppress(ValueError):
            _started.remove(self)
        return int(self.popen.returncode)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_all(children: Sequence[ChildProcess], grace: float = 5.0) -> None:
    """Stop every child: all get SIGTERM first, then stragglers SIGKILL."""
    for child in children:
        if child.poll() is None:
            _signal(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        child.stop(max(0.1, deadline - time.monotonic()))


def running_children() -> frozenset[ChildProcess]:
    """The children this process started and has not stopped yet."""
    with _started_lock:
        return frozenset(_started)


def stop_started(grace: float = 5.0, keep: frozenset[ChildProcess] = frozenset()) -> None:
    """Stop every child this process started and has not stopped yet, except `keep`
    (children that are not the caller's, e.g. started before it began)."""
    with _started_lock:
        running = [child for child in _started if child not in keep]
    stop_all(running, grace)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for the duration and act on them after it, so that
    starting a child (between fork and keeping its PID) or stopping children cannot be cut
    short. Main thread only (elsewhere it changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def hold(signum: int, frame: object) -> None:
        arrived.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in arrived[:1]:
            handler = previous[signal.Signals(signum)]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
