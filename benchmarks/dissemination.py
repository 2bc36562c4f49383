"""Speed of the dissemination study, beside the seed notebook's pure-Python approach.

    python benchmarks/dissemination.py                  # everything (about 3 minutes)
    python benchmarks/dissemination.py --seed-trials-10k 0   # skip the slow seed-approach run

Prints a Markdown table for docs/benchmarks.md. The seed's approach (dict-of-sets graphs
built by an O(N²) loop over random.random(), gossip by Python loops over nodes) is
re-implemented below in a few lines, for timing only: same inputs, same rounds, with the
seed's modelling errors fixed so that both sides do the same work.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fogfl.dissemination.experiments import EXPERIMENTS, StudyParams
from fogfl.dissemination.gossip import gossip_rounds
from fogfl.dissemination.study import MODEL_EXPERIMENTS, run_study

# --- the seed's approach, minimal ----------------------------------------------------------


def seed_graph(n: int, p: float, rng: random.Random) -> dict[int, set[int]]:
    adj: dict[int, set[int]] = {i: set() for i in range(n)}
    for i in range(n):
        for j in range(i + 1, n):
            if rng.random() < p:
                adj[i].add(j)
                adj[j].add(i)
    return adj


def seed_gossip(
    adj: dict[int, set[int]],
    alive: set[int],
    sources: list[int],
    fanout: int,
    rounds: int,
    rng: random.Random,
) -> tuple[list[set[int]], list[int]]:
    informed = [{s} for s in sources]
    sends = [0] * len(adj)
    for _ in range(rounds):
        for known in informed:
            new: set[int] = set()
            for u in known:
                neighbours = [v for v in adj[u] if v in alive]
                chosen = neighbours if len(neighbours) <= fanout else rng.sample(neighbours, fanout)
                sends[u] += len(chosen)
                new.update(chosen)
            known |= new
    return informed, sends


def seed_load(params: StudyParams) -> None:
    """Push gossip over uniform peer sampling (the load experiment's complete graph)."""
    rng = random.Random(params.seed)
    for n in params.load_nodes:
        rounds = gossip_rounds(n, params.alpha)
        for _ in range(params.trials):
            informed = {rng.randrange(n)}
            for _ in range(rounds):
                new: set[int] = set()
                for u in informed:
                    picks = rng.sample(range(n - 1), min(params.fanout, n - 1))
                    new.update(v + (v >= u) for v in picks)
                informed |= new


def seed_fog(params: StudyParams) -> None:
    rng = random.Random(params.seed)
    rounds = gossip_rounds(params.nodes, params.alpha)
    n = params.nodes
    for _ in range(params.trials):
        adj = seed_graph(n, params.edge_prob * (1 - params.link_failure), rng)
        informed = {rng.randrange(n)}
        pushes: list[tuple[int, int]] = []
        for _ in range(rounds):
            new: set[int] = set()
            for u in informed:
                neighbours = list(adj[u])
                chosen = rng.sample(neighbours, min(params.fanout, len(neighbours)))
                pushes.extend((u, v) for v in chosen)
                new.update(chosen)
            informed |= new
        for b in params.fog_brokers:
            sum(1 for u, v in pushes if u * b // n != v * b // n)


def seed_failure(params: StudyParams, trials: int) -> None:
    rng = random.Random(params.seed)
    rounds = gossip_rounds(params.nodes, params.alpha)
    for rate in params.failure_rates:
        for _ in range(trials):
            adj = seed_graph(params.nodes, params.edge_prob * (1 - params.link_failure), rng)
            alive = {i for i in range(params.nodes) if rng.random() >= rate}
            if not alive:
                continue
            publisher = rng.choice(sorted(alive))
            seed_gossip(adj, alive, [publisher], params.fanout, rounds, rng)
            broker_up = rng.random() >= rate
            if broker_up and rng.random() >= params.link_failure:
                sum(1 for _ in alive if rng.random() >= params.link_failure)


def seed_partition(params: StudyParams) -> None:
    rng = random.Random(params.seed)
    n, half = params.nodes, params.nodes // 2
    for _ in range(params.trials):
        adj = seed_graph(n, 0.0, rng)
        for offset, size in ((0, half), (half, n - half)):
            for u, neighbours in seed_graph(size, params.edge_prob, rng).items():
                adj[u + offset] |= {v + offset for v in neighbours}
        alive = set(range(n))
        sources = [rng.randrange(half), half + rng.randrange(n - half)]
        informed, _ = seed_gossip(adj, alive, sources, params.fanout, params.partition_rounds, rng)
        for _ in range(params.healing_links):
            a, b = rng.randrange(half), half + rng.randrange(n - half)
            adj[a].add(b)
            adj[b].add(a)
        for _ in range(params.merge_rounds):
            for known in informed:
                for u in list(known):
                    neighbours = list(adj[u])
                    known.update(rng.sample(neighbours, min(params.fanout, len(neighbours))))


def seed_balance(params: StudyParams) -> None:
    rng = random.Random(params.seed)
    rounds = gossip_rounds(params.nodes, params.alpha)
    for _ in range(params.trials):
        adj = seed_graph(params.nodes, params.edge_prob, rng)
        publishers = rng.sample(range(params.nodes), params.publishers)
        seed_gossip(adj, set(adj), publishers, params.fanout, rounds, rng)


# --- timing -------------------------------------------------------------------------------


def seconds(action: Callable[[], object], repeat: int = 1) -> float:
    """Median wall time of `repeat` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per N=200 figure (median)")
    parser.add_argument(
        "--seed-trials-10k",
        type=int,
        default=1,
        help="seed-approach trials per failure rate at N=10,000 (scaled to 25; 0 skips)",
    )
    args = parser.parse_args()
    defaults = StudyParams()
    big = StudyParams(nodes=10_000)

    def ignore(steps: int) -> None:
        pass

    def ours(name: str, params: StudyParams) -> Callable[[], object]:
        return lambda: EXPERIMENTS[name].run(params, ignore)

    with tempfile.TemporaryDirectory() as scratch:
        study = seconds(lambda: run_study(MODEL_EXPERIMENTS, defaults, Path(scratch)), args.repeat)

    def all_models() -> None:
        for name in MODEL_EXPERIMENTS:
            EXPERIMENTS[name].run(defaults, ignore)

    def all_models_seed() -> None:
        seed_load(defaults)
        seed_failure(defaults, defaults.trials)
        seed_partition(defaults)
        seed_balance(defaults)
        seed_fog(defaults)

    rows: list[tuple[str, float, float | None, str]] = [
        ("full default study: 5 experiments, CSVs, PNGs, summary.json", study, None, ""),
        (
            "the 5 default experiments, computation only",
            seconds(all_models, args.repeat),
            seconds(all_models_seed),
            "seed approach timed once",
        ),
    ]
    for name, label, seed_run in (
        ("load", "load, 11 sizes N=10…10,000 × 25 trials", lambda: seed_load(defaults)),
        ("failure", "failure, N=200, 6 rates × 25 trials", lambda: seed_failure(defaults, 25)),
        ("partition", "partition, N=200, 25 trials", lambda: seed_partition(defaults)),
        ("balance", "balance, N=200, 25 publishers × 25 trials", lambda: seed_balance(defaults)),
        ("fog", "fog, N=200, 7 values of B × 25 trials", lambda: seed_fog(defaults)),
    ):
        rows.append(
            (label, seconds(ours(name, defaults), args.repeat), seconds(seed_run, args.repeat), "")
        )
    big_ours = seconds(ours("failure", big))
    big_seed = None
    note = ""
    if args.seed_trials_10k:
        per = args.seed_trials_10k
        big_seed = seconds(lambda: seed_failure(big, per)) * 25 / per
        note = f"seed approach: {per} trial(s) per rate timed, scaled to 25"
    rows.append(("failure, N=10,000, 6 rates × 25 trials", big_ours, big_seed, note))

    print(f"{os.cpu_count()} CPUs; times are the median of {args.repeat} runs at N=200\n")
    print("| workload | fogfl (numpy/scipy) | seed approach (pure Python) | ratio | note |")
    print("|---|---|---|---|---|")
    for label, fast, slow, remark in rows:
        slow_text = "—" if slow is None else f"{slow:.2f} s"
        ratio = "—" if slow is None else f"{slow / fast:.0f}×"
        print(f"| {label} | {fast:.2f} s | {slow_text} | {ratio} | {remark} |")


if __name__ == "__main__":
    main()
