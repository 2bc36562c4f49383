"""A model larger than MQTT's 256 MB message limit through the whole hierarchy, in chunks.

Runs a real federation (Mosquitto, the server, one fog broker, one bridge and 2 clients,
each its own process, as `fogfl up` starts them) for one round of the `synthetic` task
with a model of `--megabytes` of float32: the server publishes the global model (retained,
signed), each client receives it, trains and sends its update, the fog broker aggregates
them into the region's partial (retained, signed), the bridge hands it to Flower and the
server publishes the final model. Every one of those messages is larger than
`wire.chunk_bytes` and travels as chunks.

Reports the round's time (metrics.csv: from publishing the global model to aggregating
the partial), the transfer times the roles measured, the whole run's wall time, and each
process's peak resident memory: its VmHWM (the kernel's high-water mark of its RSS) read
from /proc/<pid>/status every 0.1 s while it runs, the last reading kept.

    python benchmarks/chunks.py                    # 300 MB, chunks of 4 MiB
    python benchmarks/chunks.py --megabytes 50 --chunk-mib 8
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
from pathlib import Path

from fogfl.broker import mosquitto_binary
from fogfl.config import FogflConfig, load_config
from fogfl.processes import ChildProcess
from fogfl.roles.launcher import Federation
from fogfl.run_dir import METRICS_FILE, read_metrics

MIB = 1024 * 1024


def peak_rss_mib(pid: int) -> float | None:
    """The process's VmHWM in MiB, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def sample_peaks(
    processes: dict[str, ChildProcess], peaks: dict[str, float], stop: threading.Event
) -> None:
    while not stop.is_set():
        for name, process in processes.items():
            peak = peak_rss_mib(process.pid)
            if peak is not None:
                peaks[name] = max(peaks.get(name, 0.0), peak)
        time.sleep(0.1)


def configuration(megabytes: float, chunk_mib: float, insecure: bool) -> FogflConfig:
    # Room for the model, its header and a signature, whatever the size asked for.
    max_payload = max(256 * MIB, math.ceil(megabytes * 1e6 * 1.05 / MIB) * MIB)
    return load_config(
        overrides={
            "task.name": "synthetic",
            "task.options": {"megabytes": megabytes, "examples": 100},
            "federation.regions": ["north"],
            "federation.clients_per_region": 2,
            "federation.rounds": 1,
            "federation.run_id": f"bench-chunks-{megabytes:g}mb",
            "wire.chunk_bytes": int(chunk_mib * MIB),
            "wire.max_payload_bytes": max_payload,
            "wire.chunk_buffer_bytes": max(1024**3, 2 * max_payload),
            "fog.deadline_s": 1200,
            "bridge.partial_timeout_s": 1200,
            "server.round_timeout_s": 1300,
            "log_level": "INFO",
            "security.insecure": insecure,
        },
        environ={},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=float, default=300.0, help="model size, MB float32")
    parser.add_argument("--chunk-mib", type=float, default=4.0, help="wire.chunk_bytes in MiB")
    parser.add_argument("--insecure", action="store_true", help="no logins, no signatures")
    args = parser.parse_args()
    if mosquitto_binary() is None:
        raise SystemExit("this benchmark needs Mosquitto (apt-get install mosquitto)")
    config = configuration(args.megabytes, args.chunk_mib, args.insecure)
    peaks: dict[str, float] = {}
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as workdir:
        run_dir = Path(workdir) / "run"
        started = time.monotonic()
        with Federation(config, "mosquitto", run_dir, timeout_s=1800) as federation:
            processes = {role.name: role for role in federation.roles}
            assert federation.server is not None and federation.broker is not None
            processes["server"] = federation.server
            if federation.broker.process is not None:
                processes["mosquitto"] = federation.broker.process
            sampler = threading.Thread(
                target=sample_peaks, args=(processes, peaks, stop), daemon=True
            )
            sampler.start()
            while not (status := federation.poll()).finished:
                time.sleep(0.2)
            wall = time.monotonic() - started
            stop.set()
            sampler.join(2)
            if status.failure:
                raise SystemExit(status.failure)
            [_, first] = read_metrics(run_dir / METRICS_FILE)
    chunks = math.ceil(args.megabytes * 1e6 / config.wire.chunk_bytes)
    print(
        f"{args.megabytes:g} MB model (float32, synthetic), 1 region × 2 clients, 1 round, "
        f"chunks of {args.chunk_mib:g} MiB (~{chunks} per message), Mosquitto on loopback, "
        + ("open (--insecure)" if args.insecure else "secure: logins, ACL, signed models")
    )
    print(
        f"round {float(first['round_seconds']):.1f} s (metrics.csv round_seconds); "
        f"whole run {wall:.1f} s from the broker's start to the last role's exit"
    )
    print(
        f"download_s max {first['download_s_max']} s, upload_s max {first['upload_s_max']} s, "
        f"cloud_upload_s {first['cloud_upload_s']} s; bytes_up {int(first['bytes_up']):,}, "
        f"bytes_down {int(first['bytes_down']):,}"
    )
    print(f"{'process':<24} {'peak RSS (VmHWM)':>18}")
    for name in sorted(peaks):
        print(f"{name:<24} {peaks[name]:>14,.0f} MiB")


if __name__ == "__main__":
    main()
