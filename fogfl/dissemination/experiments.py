"""The five model experiments of the dissemination study, each a function from the study's
parameters to an `ExperimentResult` (the CSV rows, a summary for summary.json, and the
highlights for the terminal).

Every trial draws from its own random stream, derived from (seed, experiment, indices), so
the same seed gives the same numbers whichever experiments run and in whatever order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fogfl.dissemination.gossip import PushGossip, gossip_rounds
from fogfl.dissemination.graphs import CompleteGraph, SparseGraph, erdos_renyi, erdos_renyi_edges
from fogfl.dissemination.models import (
    EventCost,
    broker_covered,
    coap_observe_event,
    coap_request_response_event,
    fog_covered,
    fog_event,
    gini,
    mqtt_event,
    region_of,
    region_sizes,
)
from fogfl.errors import ConfigError

Row = dict[str, float | int | str]
Advance = Callable[[int], None]

# Share of nodes that must know both updates for the partition to count as merged.
MERGED_SHARE = 0.95


@dataclass(frozen=True)
class StudyParams:
    """Every knob of the study; the defaults follow the seed notebook."""

    nodes: int = 200
    trials: int = 25
    seed: int = 1234
    message_bytes: int = 50
    request_bytes: int = 16
    alpha: float = 1.5
    fanout: int = 3
    edge_prob: float = 0.05
    load_nodes: tuple[int, ...] = (10, 25, 50, 100, 200, 400, 800, 1600, 3200, 6400, 10000)
    failure_rates: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    link_failure: float = 0.1
    broker_failure: float | None = None  # None: the broker fails like any node
    partition_rounds: int = 6
    merge_rounds: int = 12
    healing_links: int = 3
    publishers: int = 25
    fog_brokers: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)

    def __post_init__(self) -> None:
        problems = []
        if self.nodes < 2:
            problems.append(f"--nodes is {self.nodes}; the study needs at least 2 nodes")
        if self.trials < 1:
            problems.append(f"--trials is {self.trials}; run at least 1 trial")
        for name in ("edge_prob", "link_failure", "broker_failure"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                problems.append(f"--{_flag(name)} is {value}; a probability is between 0 and 1")
        if any(not 0.0 <= rate <= 1.0 for rate in self.failure_rates) or not self.failure_rates:
            problems.append(f"--failure-rates {self.failure_rates}: give rates between 0 and 1")
        if self.fanout < 1 or self.alpha <= 0:
            problems.append("--fanout must be at least 1 and --alpha greater than 0")
        if self.message_bytes < 0 or self.request_bytes < 0:
            problems.append("message sizes cannot be negative")
        if not self.load_nodes or min(self.load_nodes) < 2:
            problems.append(f"--load-nodes {self.load_nodes}: give sizes of at least 2 nodes")
        if not 1 <= self.publishers <= self.nodes:
            problems.append(f"--publishers is {self.publishers}; pick 1 to --nodes ({self.nodes})")
        if not self.fog_brokers or not all(1 <= b <= self.nodes for b in self.fog_brokers):
            problems.append(f"--fog-brokers {self.fog_brokers}: each must be 1 to --nodes")
        if self.partition_rounds < 0 or self.merge_rounds < 0 or self.healing_links < 0:
            problems.append("round and link counts of the partition experiment cannot be negative")
        if problems:
            raise ConfigError("; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExperimentResult:
    name: str
    rows: list[Row]
    summary: dict[str, Any]
    highlights: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    run: Callable[[StudyParams, Advance], ExperimentResult]
    steps: Callable[[StudyParams], int]


def trial_rng(seed: int, experiment: str, *indices: int) -> np.random.Generator:
    """The random stream of one trial of one experiment."""
    key = (EXPERIMENT_KEYS[experiment], *indices)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def spread(values: ArrayLike) -> tuple[float, float, float]:
    """Mean, 10th and 90th percentile, leaving out NaN (trials with nothing to measure)."""
    measured = _measured(values)
    if measured.size == 0:
        return float("nan"), float("nan"), float("nan")
    p10, p90 = np.percentile(measured, [10, 90])
    return float(measured.mean()), float(p10), float(p90)


def median(values: ArrayLike) -> float:
    measured = _measured(values)
    return float(np.median(measured)) if measured.size else float("nan")


def _measured(values: ArrayLike) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[~np.isnan(array)]


# --- 1. load ---------------------------------------------------------------------------


def run_load(params: StudyParams, advance: Advance) -> ExperimentResult:
    """Messages, bytes and redundancy of one event against N, per protocol."""
    rows: list[Row] = []
    for index, n_nodes in enumerate(params.load_nodes):
        rows.extend(_closed_form_load(params, n_nodes))
        rng = trial_rng(params.seed, "load", index)
        rounds = gossip_rounds(n_nodes, params.alpha)
        # All trials run at once: they share the complete graph, each is its own update.
        gossip = PushGossip(n_nodes, rng.integers(0, n_nodes, params.trials), params.fanout, rng)
        gossip.run(CompleteGraph(n_nodes), rounds)
        reached = gossip.coverage - 1
        messages = spread(gossip.messages)
        rows.append(
            {
                "nodes": n_nodes,
                "protocol": "gossip",
                "messages": messages[0],
                "messages_p10": messages[1],
                "messages_p90": messages[2],
                "bytes": messages[0] * params.message_bytes,
                "redundancy": float(np.mean(gossip.messages / np.maximum(reached, 1))),
                "coverage": float(np.mean(gossip.coverage / n_nodes)),
                "rounds": rounds,
            }
        )
        advance(params.trials)
    at = _nearest(params.load_nodes, params.nodes)
    chosen = {str(row["protocol"]): row for row in rows if row["nodes"] == at}
    largest = max(params.load_nodes)
    gossip_at_largest = next(
        row for row in rows if row["nodes"] == largest and row["protocol"] == "gossip"
    )
    summary = {
        "at_nodes": at,
        "messages": {protocol: row["messages"] for protocol, row in chosen.items()},
        "bytes": {protocol: row["bytes"] for protocol, row in chosen.items()},
        "redundancy": {protocol: row["redundancy"] for protocol, row in chosen.items()},
        "gossip_redundancy_at_largest": {
            "nodes": largest,
            "value": gossip_at_largest["redundancy"],
        },
    }
    highlights = [
        (
            f"messages per event, N={at}",
            " · ".join(f"{p} {_count(row['messages'])}" for p, row in chosen.items()),
        ),
        (
            f"gossip copies per node reached, N={at} / N={largest}",
            f"{float(chosen['gossip']['redundancy']):.1f} / "
            f"{float(gossip_at_largest['redundancy']):.1f}",
        ),
    ]
    return ExperimentResult("load", rows, summary, highlights)


def _closed_form_load(params: StudyParams, n_nodes: int) -> list[Row]:
    costs: dict[str, EventCost] = {
        "mqtt": mqtt_event(n_nodes),
        "coap": coap_request_response_event(n_nodes),
        "coap-observe": coap_observe_event(n_nodes),
    }
    return [
        {
            "nodes": n_nodes,
            "protocol": protocol,
            "messages": cost.messages,
            "messages_p10": cost.messages,
            "messages_p90": cost.messages,
            "bytes": cost.bytes(params.message_bytes, params.request_bytes),
            "redundancy": cost.payload_copies / (n_nodes - 1),
            "coverage": 1.0,
            "rounds": "",
        }
        for protocol, cost in costs.items()
    ]


# --- 2. failure ------------------------------------------------------------------------


def run_failure(params: StudyParams, advance: Advance) -> ExperimentResult:
    """Coverage of alive nodes when nodes, links and the broker fail."""
    rows: list[Row] = []
    # Per rate and protocol, every trial's coverage: MQTT's is bimodal (the broker is up or
    # not), which a mean hides; the plot shows them all.
    per_trial: dict[str, dict[str, list[float]]] = {}
    rounds = gossip_rounds(params.nodes, params.alpha)
    for rate_index, rate in enumerate(params.failure_rates):
        broker_failure = rate if params.broker_failure is None else params.broker_failure
        trials = [
            _failure_trial(params, rounds, rate, broker_failure, rate_index, trial)
            for trial in _advancing(range(params.trials), advance)
        ]
        columns = {key: [t[key] for t in trials] for key in trials[0]}
        row: Row = {"failure_rate": rate, "broker_failure": broker_failure}
        row["alive_mean"] = float(np.mean(columns["alive"]))
        for protocol in ("gossip", "mqtt", "coap"):
            mean, p10, p90 = spread(columns[protocol])
            row[f"{protocol}_coverage_mean"] = mean
            row[f"{protocol}_coverage_p10"] = p10
            row[f"{protocol}_coverage_p90"] = p90
        per_trial[str(rate)] = {p: list(columns[p]) for p in ("gossip", "mqtt", "coap")}
        row["gossip_rounds_to_last_median"] = median(columns["rounds_to_last"])
        row["gossip_messages_mean"] = spread(columns["gossip_messages"])[0]
        rows.append(row)
    worst = rows[-1]
    summary = {
        "rounds": rounds,
        "coverage_mean": {
            str(row["failure_rate"]): {
                p: row[f"{p}_coverage_mean"] for p in ("gossip", "mqtt", "coap")
            }
            for row in rows
        },
        "coverage_per_trial": per_trial,
    }
    highlights = [
        (
            f"coverage at node failure {worst['failure_rate']:g} (mean, p10)",
            " · ".join(
                f"{p} {worst[f'{p}_coverage_mean']:.2f} ({worst[f'{p}_coverage_p10']:.2f})"
                for p in ("gossip", "mqtt", "coap")
            ),
        )
    ]
    return ExperimentResult("failure", rows, summary, highlights)


def _failure_trial(
    params: StudyParams,
    rounds: int,
    rate: float,
    broker_failure: float,
    rate_index: int,
    trial: int,
) -> dict[str, float]:
    rng = trial_rng(params.seed, "failure", rate_index, trial)
    alive = int(rng.binomial(params.nodes, 1.0 - rate))
    if alive == 0:
        nothing = float("nan")
        return dict.fromkeys(
            ("gossip", "mqtt", "coap", "rounds_to_last", "gossip_messages"), nothing
        ) | {"alive": 0.0}
    # Only alive nodes and working links matter, and the alive part of G(N, p) with links
    # failing independently is itself G(alive, p·(1−q)): draw that directly.
    graph = erdos_renyi(alive, params.edge_prob * (1.0 - params.link_failure), rng)
    publisher = int(rng.integers(alive))
    gossip = PushGossip(alive, [publisher], params.fanout, rng)
    gossip.run(graph, rounds)
    up = 1.0 - params.link_failure
    broker_up = bool(rng.random() >= broker_failure)
    publisher_link_up = bool(rng.random() < up)
    mqtt = broker_covered(broker_up, publisher_link_up, int(rng.binomial(alive - 1, up)))
    # CoAP has no broker: each node's own path to the publisher decides.
    coap = 1 + int(rng.binomial(alive - 1, up))
    return {
        "alive": float(alive),
        "gossip": float(gossip.coverage[0]) / alive,
        "mqtt": mqtt / alive,
        "coap": coap / alive,
        "rounds_to_last": float(gossip.last_new_round[0]),
        "gossip_messages": float(gossip.messages[0]),
    }


# --- 3. partition ----------------------------------------------------------------------


def run_partition(params: StudyParams, advance: Advance) -> ExperimentResult:
    """Two halves gossip update A and update B apart, then a few links join them."""
    total_rounds = params.partition_rounds + params.merge_rounds
    # known[trial, round, (A, B, both)]: share of all nodes that know the update(s)
    known = np.zeros((params.trials, total_rounds + 1, 3))
    for trial in _advancing(range(params.trials), advance):
        known[trial] = _partition_trial(params, trial)
    rows: list[Row] = []
    for round_index in range(total_rounds + 1):
        row: Row = {
            "round": round_index,
            "phase": "partitioned" if round_index <= params.partition_rounds else "healed",
        }
        for column, label in enumerate(("a", "b", "both")):
            mean, p10, p90 = spread(known[:, round_index, column])
            row[f"{label}_mean"] = mean
            row[f"{label}_p10"] = p10
            row[f"{label}_p90"] = p90
        rows.append(row)
    merged = known[:, params.partition_rounds :, 2] >= MERGED_SHARE
    reached = merged.any(axis=1)
    rounds_to_merge = np.where(reached, merged.argmax(axis=1), np.nan)
    summary = {
        "healing_links": params.healing_links,
        "merged_share": MERGED_SHARE,
        "trials_merged": int(reached.sum()),
        "rounds_after_healing_to_merge_median": (
            median(rounds_to_merge) if reached.any() else None
        ),
        "both_known_at_end_mean": float(known[:, -1, 2].mean()),
    }
    merge_median = summary["rounds_after_healing_to_merge_median"]
    highlights = [
        (
            f"rounds after {params.healing_links} healing links until "
            f"{MERGED_SHARE:.0%} know both (median)",
            f"{merge_median:g} ({reached.sum()}/{params.trials} trials got there)"
            if merge_median is not None
            else f"never within {params.merge_rounds} rounds",
        ),
        ("share knowing both at the end (mean)", f"{summary['both_known_at_end_mean']:.3f}"),
    ]
    return ExperimentResult("partition", rows, summary, highlights)


def _partition_trial(params: StudyParams, trial: int) -> np.ndarray:
    rng = trial_rng(params.seed, "partition", trial)
    n_nodes = params.nodes
    half = n_nodes // 2
    other = n_nodes - half
    a_first, a_second = erdos_renyi_edges(half, params.edge_prob, rng)
    b_first, b_second = erdos_renyi_edges(other, params.edge_prob, rng)
    first = np.concatenate([a_first, b_first + half])
    second = np.concatenate([a_second, b_second + half])
    split = SparseGraph.from_edges(n_nodes, first, second)
    cross = rng.choice(half * other, size=min(params.healing_links, half * other), replace=False)
    healed = SparseGraph.from_edges(
        n_nodes,
        np.concatenate([first, cross // other]),
        np.concatenate([second, half + cross % other]),
    )
    sources = [int(rng.integers(half)), half + int(rng.integers(other))]
    gossip = PushGossip(n_nodes, sources, params.fanout, rng)
    known = np.zeros((params.partition_rounds + params.merge_rounds + 1, 3))
    for round_index in range(known.shape[0]):
        if round_index:
            gossip.step(split if round_index <= params.partition_rounds else healed)
        known[round_index, :2] = gossip.coverage / n_nodes
        known[round_index, 2] = (gossip.informed[0] & gossip.informed[1]).sum() / n_nodes
    return known


# --- 4. balance ------------------------------------------------------------------------


def run_balance(params: StudyParams, advance: Advance) -> ExperimentResult:
    """Per-node send counts when many nodes publish one event each."""
    rows: list[Row] = []
    ginis: dict[str, list[float]] = {"gossip": [], "mqtt": [], "coap": []}
    busiest: dict[str, list[float]] = {"gossip": [], "mqtt": [], "coap": []}
    for trial in _advancing(range(params.trials), advance):
        loads = _balance_trial(params, trial)
        for protocol, sends in loads.items():
            ginis[protocol].append(gini(sends))
            busiest[protocol].append(float(sends.max() / max(sends.sum(), 1)))
        for node in range(params.nodes):
            rows.append(
                {
                    "trial": trial,
                    "entity": node,
                    "gossip_sends": int(loads["gossip"][node]),
                    "mqtt_sends": int(loads["mqtt"][node]),
                    "coap_sends": int(loads["coap"][node]),
                }
            )
        rows.append(
            {
                "trial": trial,
                "entity": "broker",
                "gossip_sends": "",
                "mqtt_sends": int(loads["mqtt"][-1]),
                "coap_sends": "",
            }
        )
    summary: dict[str, Any] = {"publishers": params.publishers}
    for protocol in ginis:
        mean, p10, p90 = spread(ginis[protocol])
        summary[protocol] = {
            "gini_mean": mean,
            "gini_p10": p10,
            "gini_p90": p90,
            "busiest_share_mean": float(np.mean(busiest[protocol])),
        }
    highlights = [
        (
            f"Gini of sends, {params.publishers} publishers (busiest's share)",
            " · ".join(
                f"{p} {summary[p]['gini_mean']:.2f} ({summary[p]['busiest_share_mean']:.0%})"
                for p in ginis
            ),
        )
    ]
    return ExperimentResult("balance", rows, summary, highlights)


def _balance_trial(params: StudyParams, trial: int) -> dict[str, np.ndarray]:
    """Sends per entity: gossip and CoAP over the N nodes, MQTT over the N nodes then the
    broker (a machine of its own)."""
    rng = trial_rng(params.seed, "balance", trial)
    n_nodes = params.nodes
    graph = erdos_renyi(n_nodes, params.edge_prob, rng)
    publishers = rng.choice(n_nodes, size=params.publishers, replace=False)
    gossip = PushGossip(n_nodes, publishers, params.fanout, rng)
    gossip.run(graph, gossip_rounds(n_nodes, params.alpha))
    is_publisher = np.zeros(n_nodes, dtype=np.int64)
    is_publisher[publishers] = 1
    mqtt = np.append(is_publisher, params.publishers * (n_nodes - 1))
    # CoAP: every node GETs each event it did not publish; a publisher answers N−1 GETs.
    coap = (params.publishers - is_publisher) + is_publisher * (n_nodes - 1)
    return {"gossip": gossip.sends, "mqtt": mqtt, "coap": coap}


# --- 5. fog ----------------------------------------------------------------------------


def run_fog(params: StudyParams, advance: Advance) -> ExperimentResult:
    """fogfl's hierarchy (B fog brokers bridged to a cloud broker) beside one cloud broker
    and gossip: messages and bytes per tier, busiest broker, coverage when a broker fails."""
    n_nodes = params.nodes
    trials = [_fog_trial(params, trial) for trial in _advancing(range(params.trials), advance)]
    rows: list[Row] = []
    for b_index, n_fog in enumerate(params.fog_brokers):
        fog = fog_event(region_sizes(n_nodes, n_fog))
        flat = mqtt_event(n_nodes)
        gossip_backhaul = float(np.mean([t.gossip_backhaul[b_index] for t in trials]))
        gossip_messages = float(np.mean([t.gossip_messages for t in trials]))
        gossip_coverage = [t.gossip_coverage for t in trials]
        flat_failed = [1.0 / n_nodes] * len(trials)
        protocols = {
            "mqtt-flat": _FogFigures(
                0.0,
                float(flat.messages),
                float(n_nodes - 1),
                [[t.flat_coverage for t in trials], flat_failed, flat_failed],
            ),
            "mqtt-fog": _FogFigures(
                float(fog.edge_messages),
                float(fog.backhaul_messages),
                float(fog.busiest_broker_sends),
                [[t.fog_coverage[b_index][s] for t in trials] for s in range(3)],
            ),
            # No broker to fail: gossip's coverage is the same in every scenario.
            "gossip": _FogFigures(
                gossip_messages - gossip_backhaul,
                gossip_backhaul,
                float(np.mean([t.gossip_busiest for t in trials])),
                [gossip_coverage, gossip_coverage, gossip_coverage],
            ),
        }
        for protocol, figures in protocols.items():
            row: Row = {
                "fog_brokers": n_fog,
                "protocol": protocol,
                "edge_messages": figures.edge_messages,
                "backhaul_messages": figures.backhaul_messages,
                "edge_bytes": figures.edge_messages * params.message_bytes,
                "backhaul_bytes": figures.backhaul_messages * params.message_bytes,
                "busiest_sends": figures.busiest_sends,
            }
            for label, values in zip(FOG_SCENARIOS, figures.coverage, strict=True):
                mean, p10, p90 = spread(values)
                row[f"{label}_mean"] = mean
                row[f"{label}_p10"] = p10
                row[f"{label}_p90"] = p90
            rows.append(row)
    headline_b = params.fog_brokers[len(params.fog_brokers) // 2]
    chosen = {str(r["protocol"]): r for r in rows if r["fog_brokers"] == headline_b}
    summary = {"headline_fog_brokers": headline_b, "at_headline": chosen}
    highlights = [
        (
            f"busiest sender per event, B={headline_b} fog brokers",
            " · ".join(f"{p} {float(r['busiest_sends']):,.0f}" for p, r in chosen.items()),
        ),
        (
            "backhaul bytes per event",
            " · ".join(f"{p} {float(r['backhaul_bytes']):,.0f}" for p, r in chosen.items()),
        ),
        (
            "coverage when one broker fails (mean)",
            " · ".join(f"{p} {float(r['one_broker_failed_mean']):.2f}" for p, r in chosen.items()),
        ),
    ]
    return ExperimentResult("fog", rows, summary, highlights)


# Coverage columns of fog.csv: nothing fails / one broker fails / the cloud broker fails.
FOG_SCENARIOS = ("coverage", "one_broker_failed", "cloud_failed")


@dataclass
class _FogFigures:
    """One protocol's row of fog.csv for one B."""

    edge_messages: float
    backhaul_messages: float
    busiest_sends: float
    coverage: list[list[float]]  # per FOG_SCENARIOS, per trial


@dataclass
class _FogTrial:
    flat_coverage: float
    fog_coverage: list[tuple[float, float, float]]  # per B, per FOG_SCENARIOS
    gossip_coverage: float
    gossip_messages: float
    gossip_busiest: float
    gossip_backhaul: list[float]  # per B: pushes between regions


def _fog_trial(params: StudyParams, trial: int) -> _FogTrial:
    rng = trial_rng(params.seed, "fog", trial)
    n_nodes = params.nodes
    nodes = np.arange(n_nodes, dtype=np.int64)
    publisher = int(rng.integers(n_nodes))
    up = 1.0 - params.link_failure
    link_up = rng.random(n_nodes) < up  # each node's link to its broker
    receivers_up = link_up.copy()
    receivers_up[publisher] = False
    flat = broker_covered(True, bool(link_up[publisher]), int(receivers_up.sum()))

    graph = erdos_renyi(n_nodes, params.edge_prob * up, rng)
    gossip = PushGossip(n_nodes, [publisher], params.fanout, rng, record_pushes=True)
    gossip.run(graph, gossip_rounds(n_nodes, params.alpha))
    senders, receivers = gossip.pushes()

    fog_coverage: list[tuple[float, float, float]] = []
    backhaul: list[float] = []
    for n_fog in params.fog_brokers:
        region = region_of(nodes, n_nodes, n_fog)
        home = int(region[publisher])
        receivers_link_up = np.bincount(region[receivers_up], minlength=n_fog).astype(np.int64)
        bridge_up = rng.random(n_fog) < up
        all_up = np.ones(n_fog, dtype=bool)
        one_failed = all_up.copy()
        one_failed[rng.integers(n_fog)] = False
        link = bool(link_up[publisher])
        fog_coverage.append(
            (
                fog_covered(home, link, receivers_link_up, all_up, bridge_up, True) / n_nodes,
                fog_covered(home, link, receivers_link_up, one_failed, bridge_up, True) / n_nodes,
                fog_covered(home, link, receivers_link_up, all_up, bridge_up, False) / n_nodes,
            )
        )
        backhaul.append(float(np.count_nonzero(region[senders] != region[receivers])))
    return _FogTrial(
        flat_coverage=flat / n_nodes,
        fog_coverage=fog_coverage,
        gossip_coverage=float(gossip.coverage[0]) / n_nodes,
        gossip_messages=float(gossip.messages[0]),
        gossip_busiest=float(gossip.sends.max()),
        gossip_backhaul=backhaul,
    )


# --- registry --------------------------------------------------------------------------


def _advancing(items: range, advance: Advance) -> Any:
    for item in items:
        yield item
        advance(1)


def _nearest(options: Sequence[int], target: int) -> int:
    return min(options, key=lambda option: (abs(option - target), option))


def _count(value: float | int | str) -> str:
    return f"{float(value):,.0f}"


def _flag(name: str) -> str:
    return name.replace("_", "-")


EXPERIMENT_KEYS = {"load": 1, "failure": 2, "partition": 3, "balance": 4, "fog": 5}

EXPERIMENTS: dict[str, Experiment] = {
    experiment.name: experiment
    for experiment in (
        Experiment(
            "load",
            "messages, bytes and redundancy per event against N",
            run_load,
            lambda p: p.trials * len(p.load_nodes),
        ),
        Experiment(
            "failure",
            "coverage of alive nodes when nodes, links and the broker fail",
            run_failure,
            lambda p: p.trials * len(p.failure_rates),
        ),
        Experiment(
            "partition",
            "two halves gossip apart, then a few links heal the partition",
            run_partition,
            lambda p: p.trials,
        ),
        Experiment(
            "balance",
            "per-node send counts and their Gini coefficient, many publishers",
            run_balance,
            lambda p: p.trials,
        ),
        Experiment(
            "fog",
            "bridged fog brokers vs one cloud broker vs gossip",
            run_fog,
            lambda p: p.trials,
        ),
    )
}
