"""Per-round overhead of the hierarchy: round time minus the slowest client's own work.

Runs a real federation (Mosquitto, server, 2 fog brokers, 2 bridges, 2 × 3 clients as
separate processes) on the `synthetic` task, whose model has a chosen size and whose
training is one pass over the weights. A subscriber reads every update's `train_seconds`
(the client's evaluation + training time); the server's metrics.csv gives each round's
time from publishing the global model to aggregating the regions' partials. The
difference is what the hierarchy costs: MQTT transfers, encoding, fog aggregation, the
bridge and Flower.

    python benchmarks/round.py                  # 1 MB and 10 MB, 8 rounds each
    python benchmarks/round.py --sizes 1 --rounds 20
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path

from fogfl.broker import mosquitto_binary
from fogfl.config import FogflConfig, MqttSettings, load_config
from fogfl.logs import role_logger
from fogfl.mqtt import MqttSession, Topics
from fogfl.roles.launcher import Federation
from fogfl.run_dir import METRICS_FILE, read_metrics
from fogfl.security.identities import monitor_identity
from fogfl.security.role import role_security
from fogfl.wire import read_metadata


def slowest_clients(settings: MqttSettings, stop: threading.Event, out: dict[int, float]) -> None:
    session = MqttSession(
        settings, "bench-round-recorder", logging.getLogger("bench"), persistent=False
    ).connect([Topics(settings.topic_prefix).all_updates])
    while not stop.is_set():
        received = session.receive(timeout=0.2)
        if received is None:
            continue
        meta = read_metadata(received.payload)
        if meta.get("kind") == "update":
            seconds = json.loads(meta["metrics"]).get("train_seconds", 0.0)
            round_ = int(meta["round"])
            out[round_] = max(out.get(round_, 0.0), seconds)
    session.close()


def run(megabytes: float, rounds: int, insecure: bool = False) -> list[float]:
    config: FogflConfig = load_config(
        overrides={
            "task.name": "synthetic",
            "task.options": {"megabytes": megabytes},
            "federation.rounds": rounds,
            "federation.run_id": f"bench-{megabytes:g}mb",
            "log_level": "WARNING",
            "security.insecure": insecure,
        }
    )
    slowest: dict[int, float] = {}
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as workdir:
        run_dir = Path(workdir) / "run"
        with Federation(config, "mosquitto", run_dir, timeout_s=600) as federation:
            # The federation is secure, as fogfl up's is: the recorder logs in as its monitor.
            watching = role_security(federation.config, monitor_identity(), role_logger("bench"))
            recorder = threading.Thread(
                target=slowest_clients, args=(watching.mqtt, stop, slowest), daemon=True
            )
            recorder.start()
            while not (status := federation.poll()).finished:
                time.sleep(0.2)
            stop.set()
            recorder.join(5)
            if status.failure:
                raise SystemExit(status.failure)
            rows = read_metrics(run_dir / METRICS_FILE)
    overheads = []
    for row in rows:
        round_ = int(row["round"])
        if round_ >= 2 and row["round_seconds"] and round_ in slowest:  # round 1 includes start-up
            overheads.append(float(row["round_seconds"]) - slowest[round_])
    return overheads


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=float, nargs="*", default=[1, 10], help="model sizes in MB")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="run open (no logins, no signatures), to see what security costs",
    )
    args = parser.parse_args()
    if mosquitto_binary() is None:
        raise SystemExit("this benchmark needs Mosquitto (apt-get install mosquitto)")
    print(
        "2 regions × 3 clients, separate processes, Mosquitto on loopback; "
        "rounds 2.. (round 1 has start-up); "
        + ("open (--insecure)" if args.insecure else "secure: logins, ACL, signed models")
    )
    print(f"{'model':>8} {'rounds':>6} {'median overhead':>16} {'min':>8} {'max':>8}")
    for megabytes in args.sizes:
        overheads = run(megabytes, args.rounds, args.insecure)
        print(
            f"{megabytes:>6g}MB {len(overheads):>6} "
            f"{statistics.median(overheads) * 1000:>13.0f} ms "
            f"{min(overheads) * 1000:>5.0f} ms {max(overheads) * 1000:>5.0f} ms"
        )


if __name__ == "__main__":
    main()
