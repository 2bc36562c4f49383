"""The graphs gossip runs on: Erdős–Rényi draws are simple graphs of the right density."""

from __future__ import annotations

import numpy as np

from fogfl.dissemination.graphs import CompleteGraph, SparseGraph, erdos_renyi, erdos_renyi_edges


def test_erdos_renyi_edges_are_distinct_pairs_in_range() -> None:
    first, second = erdos_renyi_edges(300, 0.05, np.random.default_rng(1))
    assert np.all(first < second) and first.min() >= 0 and second.max() < 300
    assert len(set(zip(first.tolist(), second.tolist(), strict=True))) == first.size


def test_erdos_renyi_density_matches_the_edge_probability() -> None:
    n, p = 400, 0.05
    pairs = n * (n - 1) // 2
    counts = [erdos_renyi_edges(n, p, np.random.default_rng(seed))[0].size for seed in range(20)]
    # The mean of 20 draws lies well within 4 standard errors of n(n−1)/2·p.
    standard_error = np.sqrt(pairs * p * (1 - p) / 20)
    assert abs(np.mean(counts) - pairs * p) < 4 * standard_error


def test_erdos_renyi_extremes() -> None:
    rng = np.random.default_rng(0)
    assert erdos_renyi(10, 0.0, rng).n_edges == 0
    assert erdos_renyi(10, 1.0, rng).n_edges == 45
    assert erdos_renyi(1, 0.5, rng).n_edges == 0


def test_sparse_graph_is_symmetric_with_the_given_edges() -> None:
    graph = SparseGraph.from_edges(4, np.array([0, 1, 1]), np.array([1, 2, 3]))
    nodes = np.arange(4)
    assert graph.degree(nodes).tolist() == [1, 3, 1, 1]
    assert sorted(graph.neighbours_of(1).tolist()) == [0, 2, 3]
    assert graph.neighbours_of(3).tolist() == [1]


def test_complete_graph_neighbours_skip_the_node_itself() -> None:
    graph = CompleteGraph(4)
    node = np.full(3, 2)
    assert graph.degree(node).tolist() == [3, 3, 3]
    assert graph.neighbour(node, np.arange(3)).tolist() == [0, 1, 3]
