"""`fogfl up` rounds over emulated links: a 1 MB model (task synthetic) with 1 region × 2
clients, once on loopback and once over a fixed link per client, each `--rounds` rounds.
Prints, per round, the measured upload and download seconds (slowest and median client)
beside bytes × 8 / rate, the bytes the links counted, and the round time on loopback vs
over the link.

    python benchmarks/rounds_over_links.py                      # 4 Mbit/s, 3 rounds, ~1 min
    python benchmarks/rounds_over_links.py --rate-mbit 10 --megabytes 4
    python benchmarks/rounds_over_links.py --cloud-mbit 8       # and the fog site's cloud link
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from fogfl.run_dir import METRICS_FILE, read_metrics


def run(
    directory: Path,
    megabytes: float,
    rounds: int,
    rate_mbit: float | None,
    cloud_mbit: float | None = None,
) -> list[dict]:
    config = {
        "task": {"name": "synthetic", "options": {"megabytes": megabytes}},
        "federation": {"rounds": rounds, "regions": ["north"], "clients_per_region": 2},
        # Over a slow link a 1 MB publish takes seconds; give it room.
        "mqtt": {"publish_timeout_s": 120},
    }
    (directory / "fogfl.yaml").write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "fogfl", "up", "--config", str(directory / "fogfl.yaml")]
    argv += ["--run-dir", str(directory / "run")]
    if rate_mbit is not None:
        links: dict[str, object] = {"default": {"rate_mbit": rate_mbit}}
        if cloud_mbit is not None:
            links["cloud"] = {"rate_mbit": cloud_mbit}
        (directory / "links.yaml").write_text(yaml.safe_dump({"links": links}))
        argv += ["--links", str(directory / "links.yaml")]
    # fogfl up stops every process it started, on failure too.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.exit(f"fogfl up failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return [row for row in read_metrics(directory / "run" / METRICS_FILE) if row["clients"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate-mbit", type=float, default=4.0)
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cloud-mbit", type=float, help="also a fixed cloud link for the fog site (links.cloud)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        loopback_dir, link_dir = Path(scratch) / "loopback", Path(scratch) / "link"
        loopback_dir.mkdir()
        link_dir.mkdir()
        loopback = run(loopback_dir, args.megabytes, args.rounds, None)
        linked = run(link_dir, args.megabytes, args.rounds, args.rate_mbit, args.cloud_mbit)
    bytes_per_s = args.rate_mbit * 1e6 / 8
    print(
        f"{args.megabytes:g} MB model, 1 region × 2 clients, fixed {args.rate_mbit:g} Mbit/s "
        "link per client (both ways)"
    )
    header = (
        "round  update B   predicted s  upload s max/median   error   download s max/median"
        "   wire up B  wire down B  round s link  round s loopback"
    )
    print(header)
    errors = []
    for row, plain in zip(linked, loopback, strict=True):
        clients = int(row["clients"])
        update_bytes = (int(row["bytes_edge"]) - int(row["bytes_down"])) / clients
        predicted = update_bytes / bytes_per_s
        upload_max, upload_median = float(row["upload_s_max"]), float(row["upload_s_median"])
        errors.append(upload_median / predicted - 1)
        print(
            f"{row['round']:>5}  {update_bytes:>8.0f}  {predicted:>11.3f}  "
            f"{upload_max:>8.3f} / {upload_median:<8.3f}  {errors[-1]:>+6.1%}   "
            f"{row['download_s_max'] or '-':>8} / {row['download_s_median'] or '-':<10}"
            f"  {row['wire_bytes_up']:>10}  {row['wire_bytes_down']:>11}"
            f"  {float(row['round_seconds']):>12.2f}  {float(plain['round_seconds']):>16.2f}"
        )
    print(f"median upload error vs bytes × 8 / rate: {statistics.median(errors):+.1%}")
    if args.cloud_mbit is not None:
        model_bytes = args.megabytes * 1e6
        print(
            f"cloud link {args.cloud_mbit:g} Mbit/s: the partial's float32 arrays up take "
            f"{model_bytes * 8 / (args.cloud_mbit * 1e6):.3f} s (the fit's model comes down "
            "while the clients work)"
        )
        for row in linked:
            print(
                f"  round {row['round']}: cloud wire up {row['cloud_wire_bytes_up']} B, "
                f"down {row['cloud_wire_bytes_down']} B, round {float(row['round_seconds']):.2f} s"
            )


if __name__ == "__main__":
    main()
