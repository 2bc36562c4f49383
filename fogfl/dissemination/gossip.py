"""Synchronous push gossip, vectorised over nodes and over updates spreading at once.

In every round each node that knows an update at the start of the round pushes it to
`fanout` distinct neighbours chosen uniformly at random (all of them if it has fewer), and
keeps doing so every round ("infect forever"). Nodes a push reaches know the update from
the next round on, so an update travels at most one hop per round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from fogfl.dissemination.graphs import IntArray, Topology


def gossip_rounds(n_nodes: int, alpha: float) -> int:
    """Rounds a gossip run lasts: α·ln N, rounded to the nearest integer, at least 1."""
    return max(1, math.floor(alpha * math.log(max(n_nodes, 2)) + 0.5))


def sample_neighbours(
    topology: Topology, nodes: IntArray, fanout: int, rng: np.random.Generator
) -> tuple[IntArray, NDArray[np.bool_]]:
    """For each node, `fanout` distinct uniformly chosen neighbours.

    Returns (targets, valid), both shaped (len(nodes), fanout); a node with fewer than
    `fanout` neighbours gets all of them and `valid` is False in its unused slots.
    """
    degree = topology.degree(nodes)
    picks = np.zeros((nodes.size, fanout), dtype=np.int64)
    for slot in range(fanout):
        # Draw among the positions not picked yet, then step over the picked ones in
        # ascending order to turn the rank into a position.
        rank = rng.integers(0, np.maximum(degree - slot, 1))
        for taken in np.sort(picks[:, :slot], axis=1).T:
            rank += rank >= taken
        picks[:, slot] = rank
    valid = np.arange(fanout) < degree[:, None]
    targets = np.full(picks.shape, -1, dtype=np.int64)
    senders = np.broadcast_to(nodes[:, None], picks.shape)
    targets[valid] = topology.neighbour(senders[valid], picks[valid])
    return targets, valid


class PushGossip:
    """The state of one or more updates spreading by push gossip over the same nodes.

    Update u starts at node `sources[u]`. `informed[u, v]` says whether node v knows
    update u; `sends[v]` counts the pushes node v made (over all updates) and
    `messages[u]` the pushes that carried update u.
    """

    def __init__(
        self,
        n_nodes: int,
        sources: Sequence[int] | IntArray,
        fanout: int,
        rng: np.random.Generator,
        record_pushes: bool = False,
    ) -> None:
        source_nodes = np.asarray(sources, dtype=np.int64)
        self.fanout = fanout
        self.rng = rng
        self.informed = np.zeros((source_nodes.size, n_nodes), dtype=bool)
        self.informed[np.arange(source_nodes.size), source_nodes] = True
        self.sends = np.zeros(n_nodes, dtype=np.int64)
        self.messages = np.zeros(source_nodes.size, dtype=np.int64)
        self.rounds_done = 0
        self.last_new_round = np.zeros(source_nodes.size, dtype=np.int64)
        self.record_pushes = record_pushes
        self._push_senders: list[IntArray] = []
        self._push_receivers: list[IntArray] = []

    @property
    def coverage(self) -> IntArray:
        """Nodes that know each update (the source included)."""
        return self.informed.sum(axis=1, dtype=np.int64)

    def step(self, topology: Topology) -> IntArray:
        """Play one round on `topology`; returns the nodes newly informed per update."""
        before = self.coverage
        updates, senders = np.nonzero(self.informed)
        self.rounds_done += 1
        if senders.size:
            targets, valid = sample_neighbours(topology, senders, self.fanout, self.rng)
            pushes = valid.sum(axis=1)
            self.sends += np.bincount(senders, weights=pushes, minlength=self.sends.size).astype(
                np.int64
            )
            self.messages += np.bincount(
                updates, weights=pushes, minlength=self.messages.size
            ).astype(np.int64)
            pushed_update = np.broadcast_to(updates[:, None], targets.shape)[valid]
            self.informed[pushed_update, targets[valid]] = True
            if self.record_pushes:
                self._push_senders.append(np.broadcast_to(senders[:, None], targets.shape)[valid])
                self._push_receivers.append(targets[valid])
        newly = self.coverage - before
        self.last_new_round[newly > 0] = self.rounds_done
        return newly

    def run(self, topology: Topology, rounds: int) -> IntArray:
        """Play `rounds` rounds; returns coverage per update after each, shape (rounds, U)."""
        history = np.zeros((rounds, self.informed.shape[0]), dtype=np.int64)
        for index in range(rounds):
            self.step(topology)
            history[index] = self.coverage
        return history

    def pushes(self) -> tuple[IntArray, IntArray]:
        """Sender and receiver of every push so far (needs `record_pushes=True`)."""
        if not self._push_senders:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty.copy()
        return np.concatenate(self._push_senders), np.concatenate(self._push_receivers)
