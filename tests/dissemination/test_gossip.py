"""Push gossip on small graphs whose coverage can be checked by hand."""

from __future__ import annotations

import numpy as np

from fogfl.dissemination.gossip import PushGossip, gossip_rounds, sample_neighbours
from fogfl.dissemination.graphs import CompleteGraph, SparseGraph


def path(n: int) -> SparseGraph:
    return SparseGraph.from_edges(n, np.arange(n - 1), np.arange(1, n))


def star(leaves: int) -> SparseGraph:
    return SparseGraph.from_edges(
        leaves + 1, np.zeros(leaves, dtype=np.int64), np.arange(1, leaves + 1)
    )


def test_an_update_travels_one_hop_per_round_on_a_path() -> None:
    # Degree ≤ 2 and fanout 2: every node pushes to all its neighbours, so nothing is random.
    gossip = PushGossip(6, [0], fanout=2, rng=np.random.default_rng(0))
    assert gossip.run(path(6), 7)[:, 0].tolist() == [2, 3, 4, 5, 6, 6, 6]
    assert gossip.last_new_round[0] == 5


def test_pushes_on_a_path_are_counted_per_sender() -> None:
    gossip = PushGossip(3, [0], fanout=2, rng=np.random.default_rng(0))
    gossip.run(path(3), 2)
    # Round 1: node 0 pushes once. Round 2: node 0 once, node 1 twice.
    assert gossip.sends.tolist() == [2, 2, 0]
    assert gossip.messages.tolist() == [4]


def test_star_from_a_leaf_reaches_everyone_in_two_rounds() -> None:
    gossip = PushGossip(6, [3], fanout=5, rng=np.random.default_rng(0))
    assert gossip.run(star(5), 2)[:, 0].tolist() == [2, 6]


def test_star_with_fanout_one_informs_one_leaf_per_round_at_most() -> None:
    gossip = PushGossip(11, [0], fanout=1, rng=np.random.default_rng(3))
    coverage = gossip.run(star(10), 4)[:, 0]
    assert coverage[0] == 2
    assert np.all(np.diff(coverage) <= 2)  # the centre and at most one informed leaf push


def test_gossip_never_crosses_between_components() -> None:
    two_triangles = SparseGraph.from_edges(
        6, np.array([0, 0, 1, 3, 3, 4]), np.array([1, 2, 2, 4, 5, 5])
    )
    gossip = PushGossip(6, [0, 5], fanout=3, rng=np.random.default_rng(0))
    gossip.run(two_triangles, 5)
    assert gossip.informed.astype(int).tolist() == [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]]


def test_isolated_source_sends_nothing() -> None:
    graph = SparseGraph.from_edges(3, np.array([1]), np.array([2]))
    gossip = PushGossip(3, [0], fanout=3, rng=np.random.default_rng(0))
    gossip.run(graph, 3)
    assert gossip.coverage.tolist() == [1] and gossip.messages.tolist() == [0]


def test_sampled_neighbours_are_distinct_neighbours() -> None:
    graph = star(7)
    nodes = np.zeros(500, dtype=np.int64)
    targets, valid = sample_neighbours(graph, nodes, 4, np.random.default_rng(5))
    assert valid.all()
    assert all(len(set(row)) == 4 for row in targets.tolist())
    assert set(targets.ravel().tolist()) == set(range(1, 8))
    # Each leaf is picked with probability 4/7.
    counts = np.bincount(targets.ravel(), minlength=8)[1:]
    assert np.all(np.abs(counts / 500 - 4 / 7) < 0.1)


def test_small_degree_fills_only_the_first_slots() -> None:
    targets, valid = sample_neighbours(path(3), np.array([0, 1]), 3, np.random.default_rng(0))
    assert valid.tolist() == [[True, False, False], [True, True, False]]
    assert targets[0, 0] == 1 and sorted(targets[1, :2].tolist()) == [0, 2]


def test_complete_graph_gossip_reaches_nearly_everyone_in_alpha_ln_n_rounds() -> None:
    n = 1000
    gossip = PushGossip(n, np.arange(20), fanout=3, rng=np.random.default_rng(2))
    gossip.run(CompleteGraph(n), gossip_rounds(n, 1.5))
    assert gossip.coverage.min() >= 0.99 * n


def test_gossip_rounds_is_alpha_ln_n_rounded() -> None:
    assert gossip_rounds(200, 1.5) == 8  # 1.5·ln 200 = 7.95
    assert gossip_rounds(10_000, 1.5) == 14  # 13.8
    assert gossip_rounds(2, 0.1) == 1
