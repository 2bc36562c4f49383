"""Speed of `fogfl sim`, and the same experiment through the real runtime (`fogfl up`).

Times, end to end (worker start-up included), the simulated QoE federation at 100 clients ×
20 rounds and at 1000 clients × 2 rounds (2 regions, the default 2 local epochs), with the
peak memory of the coordinator and of the worker processes; then a small federation (6
clients × 5 rounds) both simulated and run as real processes over a broker by `fogfl up`,
with the largest difference between the two final global models.

    python benchmarks/sim.py                    # all three
    python benchmarks/sim.py --skip-large       # without 1000 clients
    python benchmarks/sim.py --workers 1        # one worker process instead of two
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fogfl.broker import mosquitto_binary
from fogfl.config import FogflConfig, load_config
from fogfl.run_dir import MODEL_FILE
from fogfl.sim.hierarchy import simulate
from fogfl.sim.workers import ClientPool
from fogfl.wire import decode


def qoe(clients: int, rounds: int) -> FogflConfig:
    return load_config(
        None,
        {
            "federation": {
                "rounds": rounds,
                "regions": ["north", "south"],
                "clients_per_region": clients // 2,
                "seed": 42,
            },
            "task": {"name": "qoe"},
        },
        environ={},
    )


def simulated(config: FogflConfig, workers: int) -> dict[str, Any]:
    started = time.monotonic()
    with ClientPool(workers) as pool:
        pool_ready = time.monotonic()
        run = simulate(config, pool)
    total = time.monotonic() - started
    round_seconds = [r.round_seconds or 0.0 for r in run.records[1:]]
    return {
        "seconds": total,
        "pool_start": pool_ready - started,
        "rounds": sum(round_seconds),
        "first_round": round_seconds[0],
        "final_mae": run.records[-1].eval_mae,
        "updates": sum(run.client_updates),
        "model": run.final_tensors(),
    }


def peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def through_runtime(config: FogflConfig, folder: Path) -> dict[str, Any]:
    config_path, run_dir = folder / "config.yaml", folder / "run"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    broker = "mosquitto" if mosquitto_binary() else "embedded"
    command = ["up", "--config", str(config_path), "--run-dir", str(run_dir), "--broker", broker]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fogfl", *command],
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"fogfl up failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    model = decode((run_dir / MODEL_FILE).read_bytes(), kinds={"global"}, max_bytes=10**9)
    rows = list(csv_rows(run_dir / "metrics.csv"))
    return {
        "seconds": seconds,
        "broker": broker,
        "rounds": sum(float(r["round_seconds"] or 0) for r in rows[1:]),
        "final_mae": float(rows[-1]["eval_mae"]),
        "model": model.tensors,
    }


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[name] - b[name]).max()) for name in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-large", action="store_true", help="skip 1000 clients")
    parser.add_argument("--skip-runtime", action="store_true", help="skip fogfl up")
    args = parser.parse_args()

    cases = [(100, 20)] + ([] if args.skip_large else [(1000, 2)])
    print(f"fogfl sim, QoE, 2 regions, 2 local epochs, {args.workers} workers")
    for clients, rounds in cases:
        found = simulated(qoe(clients, rounds), args.workers)
        print(
            f"  {clients:>5} clients × {rounds:>2} rounds: {found['seconds']:6.1f} s in all "
            f"(worker start {found['pool_start']:.1f} s, rounds {found['rounds']:.1f} s, "
            f"first round {found['first_round']:.1f} s), {found['updates']} client updates, "
            f"final MAE {found['final_mae']:.4f}"
        )
    print(
        f"  peak memory: coordinator {peak_rss_mb(resource.RUSAGE_SELF):.0f} MB, "
        f"largest worker {peak_rss_mb(resource.RUSAGE_CHILDREN):.0f} MB"
    )
    if args.skip_runtime:
        return
    small = qoe(6, 5)
    print("6 clients × 5 rounds, QoE, 2 regions: simulated vs fogfl up")
    sim = simulated(small, args.workers)
    with tempfile.TemporaryDirectory() as folder:
        real = through_runtime(small, Path(folder))
    print(
        f"  fogfl sim: {sim['seconds']:5.1f} s in all, rounds {sim['rounds']:.2f} s, "
        f"final MAE {sim['final_mae']:.4f}"
    )
    print(
        f"  fogfl up ({real['broker']}): {real['seconds']:5.1f} s in all, rounds "
        f"{real['rounds']:.2f} s, final MAE {real['final_mae']:.4f}"
    )
    print(
        "  largest difference between the final global models: "
        f"{largest_difference(sim['model'], real['model']):.2e}"
    )


if __name__ == "__main__":
    main()
