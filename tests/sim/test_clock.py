"""The simulated clock: transfer times from the link model (chunk headers included), the fog
broker's close by the runtime's rule, and a simulated run whose rounds take the time its
links predict."""

from __future__ import annotations

import pytest

from fogfl.chunks import sent_bytes
from fogfl.links.model import BYTES_PER_MBIT, fixed_link
from fogfl.sim.clock import ClientTiming, SimulatedNetwork, close_edge_round
from fogfl.sim.hierarchy import simulate
from fogfl.sim.workers import ClientPool
from tests.sim.helpers import synthetic_config


def test_a_client_downloads_then_trains_then_uploads_on_its_link() -> None:
    network = SimulatedNetwork(
        {"a": fixed_link("a", uplink_mbit=1, downlink_mbit=4, latency_ms=50), "b": None}
    )
    timing = network.timing("a", 10.0, download_bytes=500_000, train_s=2.0, upload_bytes=250_000)
    assert timing.download_s == pytest.approx(500_000 / (4 * BYTES_PER_MBIT) + 0.05)
    assert timing.upload_s == pytest.approx(250_000 / (1 * BYTES_PER_MBIT) + 0.05)
    assert timing.arrival_s == pytest.approx(10.0 + 1.05 + 2.0 + 2.05)
    unshaped = network.timing("b", 10.0, 500_000, 2.0, 250_000)
    assert (unshaped.download_s, unshaped.upload_s, unshaped.arrival_s) == (0.0, 0.0, 12.0)


def arrivals(*seconds: float) -> list[ClientTiming]:
    return [ClientTiming(f"c{i}", 0.0, 0.0, s, 0.0) for i, s in enumerate(seconds)]


def test_the_fog_broker_closes_when_all_are_in_or_at_the_deadline_with_enough() -> None:
    everyone = close_edge_round(arrivals(3, 5, 4), 0.0, 3, deadline_s=60, min_updates=1)
    assert (everyone.closed_s, everyone.stragglers) == (5, 0)
    assert everyone.included == {"c0", "c1", "c2"}
    late = close_edge_round(arrivals(3, 90, 4), 0.0, 3, deadline_s=60, min_updates=1)
    assert (late.closed_s, late.stragglers, late.included) == (60, 1, {"c0", "c2"})
    # Past the deadline with too few updates, it closes as soon as there are enough.
    waiting = close_edge_round(arrivals(70, 90, 80), 0.0, 3, deadline_s=60, min_updates=2)
    assert (waiting.closed_s, waiting.stragglers, waiting.included) == (80, 1, {"c0", "c2"})
    # The deadline counts from the edge round's opening.
    opened_late = close_edge_round(
        [ClientTiming("c0", 100, 0, 3, 0), ClientTiming("c1", 100, 0, 70, 0)], 100, 2, 60, 1
    )
    assert (opened_late.closed_s, opened_late.included) == (160, {"c0"})


def test_a_simulated_round_takes_the_slowest_clients_transfers_and_drops_stragglers(
    pool: ClientPool,
) -> None:
    base = {"federation.regions": ["north"], "federation.rounds": 2}
    plain = simulate(synthetic_config(**base), pool)
    assert all(r.stragglers == 0 and r.upload_s_max == 0.0 for r in plain.records[1:])

    # North-02's link is so slow that its update misses a 5 s deadline.
    links = {"default": {"rate_mbit": 1}, "clients": {"north-02": {"rate_mbit": 0.005}}}
    config = synthetic_config(**base, **{"links": links, "fog.deadline_s": 5})
    run = simulate(config, pool)
    first = run.records[1]
    update_bytes = (first.bytes_edge - first.bytes_down) / first.clients
    global_bytes = first.bytes_down / first.clients
    assert first.clients == 1 and first.stragglers == 1 and first.late_updates == 1
    assert first.upload_s_max == pytest.approx(update_bytes / BYTES_PER_MBIT, rel=0.01)
    assert first.download_s_max == pytest.approx(global_bytes / BYTES_PER_MBIT, rel=0.01)
    # The fog broker closed at the deadline; the round lasted until then.
    assert run.sim_seconds[0] == pytest.approx(5.0)
    # Only north-01's update made it, in both rounds: north-02's link never catches up.
    assert [record.clients for record in run.records[1:]] == [1, 1]
    assert run.final_tensors().keys() == plain.final_tensors().keys()


def test_a_chunked_message_takes_its_chunk_headers_time_on_the_link(pool: ClientPool) -> None:
    """Over `wire.chunk_bytes` a message travels as chunks, and a link carries their headers
    too: the simulated transfers and wire bytes count them, the payload bytes do not."""
    base = {
        "federation.regions": ["north"],
        "federation.rounds": 1,
        "task.options.megabytes": 0.04,  # ~10 chunks of 4 kB
        "links": {"default": {"rate_mbit": 1}},
    }
    whole = simulate(synthetic_config(**base), pool).records[1]
    chunked = simulate(synthetic_config(**base, **{"wire.chunk_bytes": 4096}), pool).records[1]
    clients = whole.clients
    model = whole.bytes_down // clients
    update = (whole.bytes_edge - whole.bytes_down) // clients  # the clients' updates
    assert (chunked.bytes_edge, chunked.bytes_down) == (whole.bytes_edge, whole.bytes_down)
    assert (whole.wire_bytes_down, whole.wire_bytes_up) == (model * clients, update * clients)
    model_sent, update_sent = sent_bytes(model, 4096), sent_bytes(update, 4096)
    assert update_sent > 1.05 * update
    assert chunked.wire_bytes_down == model_sent * clients
    assert chunked.wire_bytes_up == pytest.approx(update_sent * clients, abs=clients)
    assert chunked.download_s_max == pytest.approx(model_sent / BYTES_PER_MBIT, rel=1e-3)
    assert chunked.upload_s_max == pytest.approx(update_sent / BYTES_PER_MBIT, rel=1e-3)
    assert whole.upload_s_max == pytest.approx(update / BYTES_PER_MBIT, rel=1e-3)
