"""The simulated clock: how long each client's round takes over its emulated link, and when
the fog broker closes it, computed (never slept) from the same link model and traces the
runtime's emulator paces real bytes with (`fogfl.links`).

A client's edge round starts when its fog broker sends the start model (the global model,
or the region model under edge rounds): it downloads it, trains (the seconds its training
really took in the simulation's worker), and uploads its update; a transfer is the bytes
the message travels as, its chunks with their headers when it is over `wire.chunk_bytes`
(`fogfl.chunks.sent_bytes`), as the runtime's links carry it. The fog broker closes the
edge round by the runtime's rule: once every expected update is in, or at `fog.deadline_s`
once at least `fog.min_updates` are; updates arriving later are stragglers and are left
out. A region is done when its partial has reached the Flower server: after its last edge
round closed, and after the fit that asks for it has come down to its bridge, the partial
goes up; both cross the fog site's cloud link (`links.cloud`), as float32 arrays, as
Flower carries them, and take no time without one. A round ends when its slowest region is
done. Link time 0 is the start of round 1; it runs on across rounds, so a trace is
replayed where the run has got to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fogfl.chunks import sent_bytes
from fogfl.config import FogflConfig, WireSettings
from fogfl.links.model import LinkModel


@dataclass(frozen=True)
class ClientTiming:
    """One client's edge round on the simulated clock (link time, seconds)."""

    client_id: str
    start_s: float
    download_s: float
    train_s: float
    upload_s: float

    @property
    def arrival_s(self) -> float:
        return self.start_s + self.download_s + self.train_s + self.upload_s


@dataclass(frozen=True)
class EdgeRoundClose:
    """When the fog broker closed an edge round, and which updates it had by then."""

    closed_s: float
    included: frozenset[str]
    stragglers: int


class SimulatedNetwork:
    """Every client's link (None: unshaped, transfers take no time), carrying messages
    chunked as senders of `chunk_bytes` chunk them."""

    def __init__(
        self,
        links: Mapping[str, LinkModel | None],
        chunk_bytes: int = WireSettings().chunk_bytes,
        cloud: Mapping[str, LinkModel | None] | None = None,
    ) -> None:
        self.links = dict(links)
        self.chunk_bytes = chunk_bytes
        self.cloud = dict(cloud or {})  # each fog site's link to the Flower server

    @classmethod
    def of(cls, config: FogflConfig) -> SimulatedNetwork:
        settings, seed = config.links, config.federation.seed
        cloud = {}
        for region in config.federation.regions:
            entry = settings.cloud_entry_for(region)
            name = settings.cloud_link_name(region)
            cloud[region] = entry.build(name, seed) if entry is not None else None
        return cls(
            {
                client_id: settings.link_for(region, client_id, seed)
                for region, members in config.federation.client_ids().items()
                for client_id in members
            },
            config.wire.chunk_bytes,
            cloud,
        )

    def region_done(
        self, region: str, round_start_s: float, closed_s: float, model_bytes: int
    ) -> float:
        """When the region's partial reaches the Flower server: the fit's global model
        (`model_bytes`) comes down its cloud link from the round's start, the partial goes
        up once both that and the region's last edge round (closed at `closed_s`) are done."""
        link = self.cloud.get(region)
        if link is None:
            return closed_s
        fit_in = round_start_s + link.transfer_time(model_bytes, round_start_s, "downlink")
        ready = max(closed_s, fit_in)
        return ready + link.transfer_time(model_bytes, ready, "uplink")

    @property
    def cloud_emulated(self) -> bool:
        return any(link is not None for link in self.cloud.values())

    def timing(
        self, client_id: str, start_s: float, download_bytes: int, train_s: float, upload_bytes: int
    ) -> ClientTiming:
        """The client's edge round from `start_s`: download, train, upload (of messages of
        these payload bytes), one after the other, each on the link as it is then."""
        link = self.links.get(client_id)
        if link is None:
            return ClientTiming(client_id, start_s, 0.0, train_s, 0.0)
        download_s = self.download_time(client_id, start_s, download_bytes)
        upload_start = start_s + download_s + train_s
        upload_s = link.transfer_time(self.sent_bytes(upload_bytes), upload_start, "uplink")
        return ClientTiming(client_id, start_s, download_s, train_s, upload_s)

    def download_time(self, client_id: str, start_s: float, download_bytes: int) -> float:
        """Seconds the client's download of the start model takes from `start_s` (what it
        knows before it trains; 0 on an unshaped link)."""
        link = self.links.get(client_id)
        if link is None:
            return 0.0
        return link.transfer_time(self.sent_bytes(download_bytes), start_s, "downlink")

    @property
    def emulated(self) -> bool:
        """Whether any link is shaped: then, as in the runtime, every client's is counted."""
        return any(link is not None for link in self.links.values())

    def sent_bytes(self, payload_bytes: int) -> int:
        """The bytes a link carries for a message of `payload_bytes` (MQTT framing aside)."""
        return sent_bytes(payload_bytes, self.chunk_bytes)


def close_edge_round(
    timings: Sequence[ClientTiming],
    start_s: float,
    expected: int,
    deadline_s: float,
    min_updates: int,
) -> EdgeRoundClose:
    """The fog broker's close: when all `expected` updates are in, or once the deadline has
    passed with at least min(`min_updates`, `expected`) of them."""
    arrivals = sorted(t.arrival_s for t in timings)
    all_in = arrivals[expected - 1] if 0 < expected <= len(arrivals) else math.inf
    needed = min(min_updates, expected)
    enough = arrivals[needed - 1] if 0 < needed <= len(arrivals) else math.inf
    if needed <= 0:
        enough = start_s
    closed = min(all_in, max(start_s + deadline_s, enough))
    if not math.isfinite(closed):
        closed = arrivals[-1] if arrivals else start_s  # the runtime would wait for ever
    included = frozenset(t.client_id for t in timings if t.arrival_s <= closed)
    return EdgeRoundClose(closed, included, max(0, expected - len(included)))
