"""The hostile payloads of tests/faults/hostile.py through `decode`, as the role reading
each topic calls it: every hostile class, and the seeded mutation corpus grouped by
outcome; for each, the outcome (the rejection's reason), the slowest decode of a few runs,
and the peak memory one decode allocates (tracemalloc). Valid updates for scale.

    python benchmarks/hostile.py                            # classes 5 times, 12,000 mutations
    python benchmarks/hostile.py --repeats 20 --cases 2000
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fogfl.config import FogflConfig
from fogfl.errors import WireError
from fogfl.wire import Envelope, ModelSchema, decode, encode
from tests.faults.hostile import SEED, Case, Receiver, hostile_classes, mutations

MAX_BYTES = FogflConfig().wire.max_payload_bytes


@dataclass
class Measured:
    name: str
    cases: int
    bytes: int
    outcome: str
    slowest_s: float
    peak_bytes: int


def decode_once(payload: bytes, receiver: Receiver) -> str:
    try:
        decode(
            payload,
            kinds=receiver.kinds,
            max_bytes=MAX_BYTES,
            schema=receiver.schema,
            run_id=receiver.run_id,
        )
    except WireError as error:
        return error.reason
    return "accepted"


def measure(name: str, payload: bytes, receiver: Receiver, repeats: int) -> Measured:
    outcome, slowest = "", 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        outcome = decode_once(payload, receiver)
        slowest = max(slowest, time.perf_counter() - started)
    tracemalloc.start()
    decode_once(payload, receiver)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return Measured(name, 1, len(payload), outcome, slowest, peak)


def valid_update(megabytes: float) -> tuple[str, bytes, Receiver]:
    per_tensor = int(megabytes * 1e6 / 4 / 18)
    rng = np.random.default_rng(0)
    tensors = {f"layer{i}": rng.normal(size=per_tensor).astype(np.float32) for i in range(18)}
    message = Envelope(
        kind="update", run_id="bench", round=1, sender="c1", region="r", num_examples=10,
        tensors=tensors, metrics={"train_loss": 0.1},
    )  # fmt: skip
    receiver = Receiver(frozenset({"update"}), ModelSchema.of(tensors), "bench")
    return f"valid update, {megabytes:g} MB in 18 tensors", encode(message), receiver


def corpus_rows(cases: list[Case], repeats: int) -> list[Measured]:
    """One row per outcome of the mutation corpus: its slowest and hungriest case."""
    groups: dict[str, Measured] = defaultdict(lambda: Measured("", 0, 0, "", 0.0, 0))
    for case in cases:
        one = measure(case.name, case.payload, case.receiver, repeats)
        group = groups[one.outcome]
        group.cases += 1
        group.bytes = max(group.bytes, one.bytes)
        group.outcome = one.outcome
        if one.slowest_s > group.slowest_s:
            group.slowest_s, group.name = one.slowest_s, one.name
        group.peak_bytes = max(group.peak_bytes, one.peak_bytes)
    return sorted(groups.values(), key=lambda row: -row.cases)


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 0.01 else f"{seconds * 1e3:.0f} ms"


def mebibytes(count: int) -> str:
    return f"{count / 1024:.1f} KiB" if count < 1 << 20 else f"{count / (1 << 20):.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="decodes per hostile class")
    parser.add_argument("--cases", type=int, default=12_000, help="mutations in the corpus")
    args = parser.parse_args()

    print("| payload | bytes | outcome | slowest decode | peak memory |")
    print("|---|---|---|---|---|")
    classes = [measure(c.name, c.payload, c.receiver, args.repeats) for c in hostile_classes()]
    for megabytes in (0.001, 10.0):
        name, payload, receiver = valid_update(megabytes)
        classes.append(measure(name, payload, receiver, args.repeats))
    for row in classes:
        print(
            f"| {row.name} | {row.bytes:,} | {row.outcome} | {milliseconds(row.slowest_s)} | "
            f"{mebibytes(row.peak_bytes)} |"
        )
    started = time.perf_counter()
    corpus = list(mutations(SEED, args.cases))
    for row in corpus_rows(corpus, repeats=1):
        print(
            f"| mutations → {row.outcome} ({row.cases:,} cases; slowest: {row.name[:60]}) | "
            f"≤ {row.bytes:,} | {row.outcome} | {milliseconds(row.slowest_s)} | "
            f"{mebibytes(row.peak_bytes)} |"
        )
    print(
        f"\n{len(corpus):,} mutations (seed {SEED}) built and decoded in "
        f"{time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    rejected = [row for row in classes if row.outcome != "accepted"]
    worst = max(rejected, key=lambda row: row.slowest_s)
    hungriest = max(rejected, key=lambda row: row.peak_bytes)
    print(
        f"\nslowest rejected hostile class: {worst.name} ({milliseconds(worst.slowest_s)}); "
        f"most memory: {hungriest.name} ({mebibytes(hungriest.peak_bytes)})"
    )


if __name__ == "__main__":
    main()
