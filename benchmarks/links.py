"""The link emulator measured: its delivered rate against the configured rate from 1 to
100 Mbit/s (target: within 5%), its own CPU cost (CPU seconds per GB moved, shaped and
unshaped), and a 1 MB MQTT publish over a fixed 4 Mbit/s link against bytes × 8 / rate.

The emulator runs as the launcher will run it, `python -m fogfl.links` in its own process;
sender and receiver are plain sockets in this one, the broker a Mosquitto this script starts.

    python benchmarks/links.py                    # every part, about a minute
    python benchmarks/links.py --seconds 2 --rates 1 10 100
    python benchmarks/links.py --skip-mqtt
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fogfl.links.model import fixed_link

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextmanager
def emulator(upstream_port: int, link: dict[str, Any] | None) -> Iterator[tuple[int, int]]:
    """`python -m fogfl.links` with one proxy; (its listen port, its PID)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, ports = Path(tmp) / "spec.json", Path(tmp) / "ports.json"
        proxy: dict[str, Any] = {"name": "bench"}
        if link is not None:
            proxy["link"] = link
        spec.write_text(json.dumps({"upstream_port": upstream_port, "proxies": [proxy]}))
        process = subprocess.Popen(
            [sys.executable, "-m", "fogfl.links", str(spec), "--ports", str(ports)],
            stdout=subprocess.DEVNULL,
        )
        try:
            while not ports.exists():
                if process.poll() is not None:
                    raise SystemExit("the link emulator did not start")
                time.sleep(0.02)
            yield json.loads(ports.read_text())["bench"], process.pid
        finally:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=10)


def transfer(rate_mbit: float | None, nbytes: int) -> tuple[float, float]:
    """Send `nbytes` through an emulated link: (payload bytes per second the receiver saw
    after its first chunk, the emulator's CPU seconds)."""
    server = socket.create_server(("127.0.0.1", 0))
    link = {"rate_mbit": rate_mbit} if rate_mbit is not None else None
    with emulator(server.getsockname()[1], link) as (port, pid):
        sender = threading.Thread(target=_send, args=(port, nbytes))
        cpu_before = cpu_seconds(pid)
        sender.start()
        conn, _ = server.accept()
        with conn:
            first = len(conn.recv(1 << 20))
            started, total = time.perf_counter(), 0
            while data := conn.recv(1 << 20):
                total += len(data)
            elapsed = time.perf_counter() - started
        sender.join()
        cpu = cpu_seconds(pid) - cpu_before
    server.close()
    if first + total != nbytes:
        raise SystemExit(f"{first + total} bytes arrived of {nbytes}")
    return total / elapsed, cpu


def _send(port: int, nbytes: int) -> None:
    block = bytes(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        left = nbytes
        while left > 0:
            conn.sendall(block[: min(left, len(block))])
            left -= len(block)


def rate_table(rates: list[float], seconds: float) -> None:
    print(f"\nDelivered vs configured rate ({seconds:g} s of traffic each)")
    print(
        f"{'configured Mbit/s':>18} {'delivered Mbit/s':>17} {'ratio':>7} {'CPU s/GB':>9} "
        f"{'CPU % of a core':>16}"
    )
    for rate in rates:
        nbytes = int(rate * 125_000 * seconds)
        delivered, cpu = transfer(rate, nbytes)
        mbit = delivered * 8 / 1e6
        share = cpu / (nbytes / delivered)
        print(
            f"{rate:18g} {mbit:17.3f} {mbit / rate:7.4f} {cpu / (nbytes / 1e9):9.2f} {share:16.1%}"
        )


def cpu_table(megabytes: int) -> None:
    print(f"\nEmulator CPU cost at full speed ({megabytes} MB each)")
    print(f"{'link':>18} {'delivered Mbit/s':>17} {'CPU s':>7} {'CPU s/GB':>9}")
    for label, rate in (("unshaped", None), ("shaped 1000 Mbit/s", 1000.0)):
        nbytes = megabytes * 1_000_000
        delivered, cpu = transfer(rate, nbytes)
        print(f"{label:>18} {delivered * 8 / 1e6:17.1f} {cpu:7.2f} {cpu / (nbytes / 1e9):9.2f}")


def mqtt_publish(repeats: int, rate_mbit: float, payload_bytes: int) -> None:
    import paho.mqtt.client as paho

    from fogfl.broker import start_broker

    print(
        f"\n{payload_bytes / 1e6:g} MB MQTT publish (QoS 1) over a fixed {rate_mbit:g} Mbit/s link"
    )
    expected = payload_bytes * 8 / (rate_mbit * 1e6)
    model = fixed_link("bench", rate_mbit, rate_mbit).transfer_time(payload_bytes)
    print(f"bytes x 8 / rate = {expected:.3f} s; the link model's transfer_time = {model:.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker("auto", Path(tmp))
        try:
            arrived = threading.Event()
            arrival: list[float] = []
            subscriber = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-sub")

            def on_message(client: Any, userdata: Any, message: Any) -> None:
                arrival.append(time.perf_counter())
                arrived.set()

            subscriber.on_message = on_message
            subscriber.connect(broker.host, broker.port)
            subscriber.subscribe("bench/links", qos=1)
            subscriber.loop_start()
            with emulator(broker.port, {"rate_mbit": rate_mbit}) as (port, _):
                publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-pub")
                publisher.connect("127.0.0.1", port)
                publisher.loop_start()
                time.sleep(0.5)  # connected, the link idle again
                payload = os.urandom(payload_bytes)
                measured, acked = [], []
                for _ in range(repeats):
                    arrived.clear()
                    started = time.perf_counter()
                    info = publisher.publish("bench/links", payload, qos=1)
                    if not arrived.wait(60):
                        raise SystemExit("the publish never arrived")
                    measured.append(arrival[-1] - started)
                    info.wait_for_publish(60)
                    acked.append(time.perf_counter() - started)
                    time.sleep(0.3)
                publisher.loop_stop()
                publisher.disconnect()
            subscriber.loop_stop()
            subscriber.disconnect()
        finally:
            broker.stop()
    print(
        f"{'run':>4} {'publish→delivered s':>20} {'publish→PUBACK s':>17} {'vs bytes×8/rate':>16}"
    )
    for i, (m, a) in enumerate(zip(measured, acked, strict=True), start=1):
        print(f"{i:4d} {m:20.3f} {a:17.3f} {m / expected - 1:+12.2%}")
    median = statistics.median(measured)
    print(f"median {median:.3f} s, {median / expected - 1:+.2%} from bytes × 8 / rate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 5, 10, 20, 50, 100])
    parser.add_argument("--seconds", type=float, default=3.0, help="traffic per rate")
    parser.add_argument("--cpu-megabytes", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-mqtt", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rate_table(args.rates, args.seconds)
    cpu_table(args.cpu_megabytes)
    if not args.skip_mqtt:
        mqtt_publish(args.repeats, 4.0, 1_000_000)


if __name__ == "__main__":
    main()
