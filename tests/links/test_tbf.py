"""An independent check of the emulator's rate: the kernel's `tbf` qdisc shapes a veth pair
between two network namespaces this test creates; the same sender and receiver then run
over the kernel's link and over the emulator configured to the same rate. Skipped without
the privilege to create namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.links.helpers import link_runner

RATE_MBIT = 16
PAYLOAD = 3_000_000
MTU = 1500
# What TCP delivers of each frame tbf counts: MSS (MTU - IP - TCP - timestamps) of the
# Ethernet frame (MTU + header); the emulator's rate is payload already.
PAYLOAD_PER_WIRE_BYTE = (MTU - 20 - 20 - 12) / (MTU + 14)

RECEIVER = """
import json, socket, sys, time
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
first = conn.recv(65536)
start, total = time.monotonic(), 0
while data := conn.recv(65536):
    total += len(data)
print(json.dumps({"bytes": len(first) + total, "rate_bytes_s": total / (time.monotonic() - start)}))
"""
SENDER = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as conn:
    conn.sendall(bytes(int(sys.argv[3])))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def shaped_veth() -> Iterator[tuple[list[str], list[str], str]]:
    """Namespaces A and B joined by a veth pair, A's side shaped by tbf at RATE_MBIT:
    (command prefix in A, in B, B's address)."""
    if shutil.which("ip") is None or shutil.which("tc") is None or os.geteuid() != 0:
        pytest.skip("needs root, ip and tc to build a shaped veth pair")
    tag = f"{os.getpid() % 100000}"
    a, b = f"fogfl-lk{tag}a", f"fogfl-lk{tag}b"
    try:
        _ip("netns", "add", a)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    try:
        _ip("netns", "add", b)
        _ip("link", "add", f"lk{tag}a", "netns", a, "type", "veth", "peer", f"lk{tag}b", "netns", b)
        for ns, dev, addr in ((a, f"lk{tag}a", "10.231.7.1/24"), (b, f"lk{tag}b", "10.231.7.2/24")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up", "mtu", str(MTU))
            _ip("-n", ns, "link", "set", "lo", "up")
        subprocess.run(
            ["ip", "netns", "exec", a, "tc", "qdisc", "add", "dev", f"lk{tag}a", "root", "tbf",
             "rate", f"{RATE_MBIT}mbit", "burst", "32kb", "latency", "100ms"],
            check=True, capture_output=True, timeout=20,
        )  # fmt: skip
        yield ["ip", "netns", "exec", a], ["ip", "netns", "exec", b], "10.231.7.2"
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _measure(sender_prefix: Sequence[str], receiver_prefix: Sequence[str], host: str) -> float:
    """Payload bytes per second the receiver in one namespace saw from the other."""
    receiver = subprocess.Popen(
        [*receiver_prefix, sys.executable, "-c", RECEIVER, host],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        subprocess.run(
            [*sender_prefix, sys.executable, "-c", SENDER, host, str(port), str(PAYLOAD)],
            check=True,
            timeout=60,
        )
        result = json.loads(receiver.stdout.readline())
        receiver.wait(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert result["bytes"] == PAYLOAD
    return float(result["rate_bytes_s"])


def test_the_emulator_delivers_the_rate_the_kernels_tbf_does(
    shaped_veth: tuple[list[str], list[str], str], tmp_path: Path
) -> None:
    in_a, in_b, address_b = shaped_veth
    kernel = _measure(in_a, in_b, address_b)
    # tbf counts whole frames; its payload rate follows from the frame overhead.
    assert kernel == pytest.approx(RATE_MBIT * 125_000 * PAYLOAD_PER_WIRE_BYTE, rel=0.05)
    kernel_rate = kernel / PAYLOAD_PER_WIRE_BYTE
    emulated = _measure_via_emulator(tmp_path)
    # The emulator's rate is payload: it should match the kernel's shaped rate.
    assert emulated / kernel_rate == pytest.approx(1.0, abs=0.1)


def _measure_via_emulator(tmp_path: Path) -> float:
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, "127.0.0.1"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        spec = {
            "upstream_port": port,
            "proxies": [{"name": "check", "link": {"rate_mbit": RATE_MBIT}}],
        }
        with link_runner(tmp_path, spec) as runner:
            subprocess.run(
                [sys.executable, "-c", SENDER, "127.0.0.1", str(runner.ports["check"]),
                 str(PAYLOAD)],
                check=True, timeout=60,
            )  # fmt: skip
            result = json.loads(receiver.stdout.readline())
            assert runner.stop()[0] == 0
        receiver.wait(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert result["bytes"] == PAYLOAD
    return float(result["rate_bytes_s"])
