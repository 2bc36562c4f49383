"""The model experiments: reproducible, and their numbers behave as a user would expect."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fogfl.dissemination.experiments import EXPERIMENTS, ExperimentResult, StudyParams
from fogfl.errors import ConfigError

SMALL = StudyParams(
    nodes=60,
    trials=4,
    load_nodes=(10, 60),
    failure_rates=(0.0, 0.5),
    publishers=5,
    fog_brokers=(1, 4),
    partition_rounds=3,
    merge_rounds=4,
)


def run(name: str, params: StudyParams = SMALL) -> ExperimentResult:
    steps: list[int] = []
    result = EXPERIMENTS[name].run(params, steps.append)
    assert sum(steps) == EXPERIMENTS[name].steps(params)  # the progress bar ends full
    return result


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_the_same_seed_gives_the_same_numbers(name: str) -> None:
    assert run(name).rows == run(name).rows


@pytest.mark.parametrize("name", ["failure", "partition", "balance", "fog"])
def test_another_seed_gives_other_numbers(name: str) -> None:
    assert run(name).rows != run(name, replace(SMALL, seed=SMALL.seed + 1)).rows


def test_coverage_does_not_rise_with_the_failure_rate_on_average() -> None:
    params = StudyParams(failure_rates=(0.0, 0.25, 0.5))  # N = 200, 25 trials
    rows = run("failure", params).rows
    for protocol in ("gossip", "mqtt"):
        means = [float(row[f"{protocol}_coverage_mean"]) for row in rows]
        assert means == sorted(means, reverse=True), (protocol, means)


def test_without_failures_every_protocol_reaches_every_node() -> None:
    params = replace(SMALL, nodes=100, failure_rates=(0.0,), link_failure=0.0, edge_prob=0.2)
    row = run("failure", params).rows[0]
    assert row["mqtt_coverage_mean"] == row["coap_coverage_mean"] == 1.0
    assert row["gossip_coverage_mean"] == 1.0


def test_a_broker_that_always_fails_reaches_only_the_publisher() -> None:
    params = replace(SMALL, failure_rates=(0.0, 0.3), broker_failure=1.0, link_failure=0.0)
    for row in run("failure", params).rows:
        assert row["mqtt_coverage_p90"] == pytest.approx(1.0 / row["alive_mean"], rel=0.2)
        assert float(row["mqtt_coverage_mean"]) < 0.05


def test_load_counts_follow_the_protocols() -> None:
    rows = {(row["nodes"], row["protocol"]): row for row in run("load").rows}
    assert rows[(60, "mqtt")]["messages"] == 60
    assert rows[(60, "coap")]["messages"] == 118
    assert rows[(60, "coap-observe")]["messages"] == 59
    gossip = rows[(60, "gossip")]
    # Every informed node pushes `fanout` copies per round: far more than one per node.
    assert float(gossip["messages"]) > 3 * 59 and float(gossip["redundancy"]) > 3


def test_without_healing_links_nobody_learns_both_updates() -> None:
    rows = run("partition", replace(SMALL, healing_links=0)).rows
    assert all(row["both_mean"] == 0.0 for row in rows)
    assert all(float(row["a_mean"]) <= 0.5 for row in rows)


def test_healed_partition_spreads_both_updates() -> None:
    params = replace(SMALL, edge_prob=0.2, healing_links=20, merge_rounds=10)
    final = run("partition", params).rows[-1]
    assert float(final["both_mean"]) > 0.9


def test_the_broker_carries_nearly_all_sends_and_gossip_spreads_them() -> None:
    summary = run("balance", replace(SMALL, edge_prob=0.2)).summary
    assert summary["mqtt"]["gini_mean"] > 0.9
    assert summary["gossip"]["gini_mean"] < 0.3


def test_one_failed_fog_broker_cuts_off_only_its_region() -> None:
    params = replace(SMALL, link_failure=0.0, fog_brokers=(1, 4), trials=40)
    rows = {(row["fog_brokers"], row["protocol"]): row for row in run("fog", params).rows}
    # One fog broker for everyone: its failure leaves only the publisher.
    assert rows[(1, "mqtt-fog")]["one_broker_failed_mean"] == pytest.approx(1 / 60)
    # Four: the publisher's region is cut off 1 time in 4, else 3 of 4 regions are reached.
    expected = 0.75 * 0.75 + 0.25 * (1 / 60)
    measured = float(rows[(4, "mqtt-fog")]["one_broker_failed_mean"])
    assert measured == pytest.approx(expected, abs=0.1)
    assert rows[(4, "mqtt-fog")]["backhaul_messages"] == 4
    assert rows[(4, "mqtt-flat")]["backhaul_messages"] == 60
    assert rows[(4, "mqtt-flat")]["one_broker_failed_mean"] == pytest.approx(1 / 60)


def test_invalid_parameters_are_reported_together() -> None:
    with pytest.raises(ConfigError) as error:
        StudyParams(edge_prob=1.5, fanout=0)
    assert "--edge-prob is 1.5" in str(error.value) and "--fanout" in str(error.value)


def test_no_alive_node_is_left_out_not_counted_as_zero() -> None:
    params = replace(SMALL, nodes=4, failure_rates=(1.0,), publishers=2, fog_brokers=(1,))
    row = run("failure", params).rows[0]
    assert np.isnan(float(row["gossip_coverage_mean"]))
