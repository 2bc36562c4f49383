"""Run a command and find, by PID, every process it left behind.

The command runs under a small supervisor process that makes itself a child subreaper
(Linux `PR_SET_CHILD_SUBREAPER`): whatever the command starts and does not end is
re-parented to the supervisor when the command exits, however it detached itself (new
sessions included). The supervisor then lists its children — the leftovers — by PID, kills
them, and reports them. Signals can be sent to the command once a trigger file appears, to
interrupt it at a chosen moment (e.g. while the broker is starting).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Reaped:
    returncode: int
    output: str
    leftovers: list[str]  # "pid: command line" of each process left behind


def run_reaped(
    argv: list[str],
    *,
    trigger: Path | None = None,
    signals: list[tuple[float, int]] = (),  # type: ignore[assignment]
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> Reaped:
    """Run `argv` to its end; once `trigger` exists (or at once without one), send each
    (delay after the trigger, signal) in `signals`. Returns its exit code, output and the
    processes it left behind (which have been killed since)."""
    plan = {
        "argv": argv,
        "trigger": str(trigger) if trigger else None,
        "signals": list(signals),
        "timeout": timeout,
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.reaper", json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return Reaped(report["returncode"], report["output"], report["leftovers"])


def _children(of: int, *, alive: bool = False) -> list[int]:
    """The PIDs whose parent is `of`; with `alive`, not those that have exited already
    (zombies: a grandchild that died after it was re-parented here, waiting to be reaped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(parent) == of and not (alive and state in "ZX"):
            found.append(int(entry.name))
    return found


def _describe(pid: int) -> str:
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        return f"{pid}: {' '.join(a.decode(errors='replace') for a in argv if a)}"
    except OSError:
        return f"{pid}: ?"


def _supervise(plan: dict[str, object]) -> dict[str, object]:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    log = Path(f"/tmp/reaper-{os.getpid()}.out")
    with log.open("wb") as out:
        command = subprocess.Popen(
            plan["argv"],  # type: ignore[arg-type]
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + float(plan["timeout"])  # type: ignore[arg-type]
        trigger = plan["trigger"]
        while trigger and not Path(str(trigger)).exists() and command.poll() is None:
            time.sleep(0.005)
        triggered = time.monotonic()
        for delay, signum in plan["signals"]:  # type: ignore[attr-defined]
            time.sleep(max(0.0, triggered + delay - time.monotonic()))
            if command.poll() is None:
                command.send_signal(signum)
        try:
            returncode = command.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            command.kill()
            returncode = command.wait()
    time.sleep(0.5)  # let anything the command left behind be re-parented to us
    leftovers = [_describe(pid) for pid in _children(os.getpid(), alive=True)]
    for pid in _children(os.getpid()):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    give_up = time.monotonic() + 10
    while time.monotonic() < give_up:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
        except ChildProcessError:
            break
    output = log.read_text(errors="replace")
    log.unlink()
    return {"returncode": returncode, "output": output, "leftovers": leftovers}


if __name__ == "__main__":
    print(json.dumps(_supervise(json.loads(sys.argv[1]))))
