"""The graphs gossip runs on, behind one small interface: how many neighbours a node has,
and which node is its k-th neighbour.

`SparseGraph` holds an undirected graph as CSR adjacency (scipy.sparse); Erdős–Rényi graphs
are drawn edge by edge with geometric skips, so the cost is proportional to the number of
edges, not to N². `CompleteGraph` is uniform peer sampling over all N nodes, with no
adjacency stored at all.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]


class Topology(Protocol):
    """Who may push to whom."""

    @property
    def n_nodes(self) -> int: ...

    def degree(self, nodes: IntArray) -> IntArray:
        """Number of neighbours of each node in `nodes`."""
        ...

    def neighbour(self, nodes: IntArray, position: IntArray) -> IntArray:
        """The `position`-th neighbour (0 ≤ position < degree) of each node, elementwise."""
        ...


class CompleteGraph:
    """Every node can reach every other node (uniform peer sampling)."""

    def __init__(self, n_nodes: int) -> None:
        self._n = n_nodes

    @property
    def n_nodes(self) -> int:
        return self._n

    def degree(self, nodes: IntArray) -> IntArray:
        return np.full(np.shape(nodes), self._n - 1, dtype=np.int64)

    def neighbour(self, nodes: IntArray, position: IntArray) -> IntArray:
        # Neighbours of u are 0..n-1 without u itself.
        return position + (position >= nodes)


class SparseGraph:
    """An undirected simple graph stored as symmetric CSR adjacency."""

    def __init__(self, n_nodes: int, indptr: IntArray, indices: NDArray[np.integer[Any]]) -> None:
        self._n = n_nodes
        self.indptr = indptr
        self.indices = indices

    @classmethod
    def from_edges(cls, n_nodes: int, first: IntArray, second: IntArray) -> SparseGraph:
        """The graph with edges first[k]–second[k]; each edge listed once, no self-loops."""
        import scipy.sparse

        # Lower-triangle entries first: with edges sorted by (first, second), as Erdős–Rényi
        # draws are, every row's columns then come out sorted and scipy need not sort them.
        rows = np.concatenate([second, first])
        cols = np.concatenate([first, second])
        ones = np.ones(rows.size, dtype=np.int8)
        adjacency = scipy.sparse.csr_array((ones, (rows, cols)), shape=(n_nodes, n_nodes))
        return cls(n_nodes, adjacency.indptr.astype(np.int64), adjacency.indices)

    @property
    def n_nodes(self) -> int:
        return self._n

    @property
    def n_edges(self) -> int:
        return int(self.indices.size // 2)

    def degree(self, nodes: IntArray) -> IntArray:
        return self.indptr[nodes + 1] - self.indptr[nodes]

    def neighbour(self, nodes: IntArray, position: IntArray) -> IntArray:
        return self.indices[self.indptr[nodes] + position].astype(np.int64)

    def neighbours_of(self, node: int) -> IntArray:
        return self.indices[self.indptr[node] : self.indptr[node + 1]].astype(np.int64)


def erdos_renyi_edges(
    n_nodes: int, edge_prob: float, rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    """The edges (i < j) of a G(n, p) graph: each of the n(n−1)/2 pairs present with
    probability `edge_prob`, independently."""
    pairs = n_nodes * (n_nodes - 1) // 2
    if pairs == 0 or edge_prob <= 0.0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    if edge_prob >= 1.0:
        first, second = np.triu_indices(n_nodes, k=1)
        return first.astype(np.int64), second.astype(np.int64)
    # Gaps between present pairs (in row-major order over i < j) are geometric, so drawing
    # the gaps visits only the pairs that are present.
    expected = pairs * edge_prob
    chunk = int(expected + 6.0 * np.sqrt(expected) + 16)
    positions: list[IntArray] = []
    last = -1
    while last < pairs:
        found = last + np.cumsum(rng.geometric(edge_prob, chunk))
        positions.append(found)
        last = int(found[-1])
    pair_index = np.concatenate(positions)
    pair_index = pair_index[pair_index < pairs]
    rows = np.arange(n_nodes, dtype=np.int64)
    row_start = rows * n_nodes - rows * (rows + 1) // 2  # pairs (a, b) with a < row
    per_row = np.diff(np.searchsorted(pair_index, np.append(row_start, pairs)))
    first = np.repeat(rows, per_row)
    second = pair_index - row_start[first] + first + 1
    return first, second


def erdos_renyi(n_nodes: int, edge_prob: float, rng: np.random.Generator) -> SparseGraph:
    """A G(n, p) random graph."""
    return SparseGraph.from_edges(n_nodes, *erdos_renyi_edges(n_nodes, edge_prob, rng))
