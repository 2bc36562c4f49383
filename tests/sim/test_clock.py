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
from tests.sim.helpers import assert_same_model, synthetic_config


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


def test_a_fog_site_is_done_when_its_partial_crossed_its_cloud_link() -> None:
    network = SimulatedNetwork({}, cloud={"north": fixed_link("cloud-north", 2, 8), "south": None})
    model = 1_000_000  # 0.5 s down at 8 Mbit/s once the fit is asked, 2 s up at 2 Mbit/s
    # The partial is ready at 3 s, after the fit came down (0.5 s): it goes up then.
    assert network.region_done("north", 0.0, 3.0, model) == pytest.approx(3.0 + 4.0)
    # A region that closes before the fit came down waits for it.
    assert network.region_done("north", 0.0, 0.1, model) == pytest.approx(1.0 + 4.0)
    assert network.region_done("south", 0.0, 3.0, model) == 3.0  # no cloud link
    assert network.cloud_emulated and not SimulatedNetwork({}).cloud_emulated


def test_a_simulated_round_waits_for_the_slowest_fog_sites_cloud_link(pool: ClientPool) -> None:
    base = {
        "federation.regions": ["north", "south"],
        "federation.rounds": 1,
        "task.options.megabytes": 0.04,  # 0.16 s each way at 2 Mbit/s
    }
    plain = simulate(synthetic_config(**base), pool)
    assert plain.sim_seconds[0] < 0.1 and plain.records[1].cloud_wire_bytes_up is None
    links = {"cloud": {"rate_mbit": 8}, "cloud_regions": {"south": {"rate_mbit": 2}}}
    run = simulate(synthetic_config(**base, links=links), pool)
    arrays = 4 * sum(a.size for a in run.final_tensors().values())
    # South's fit comes down at 2 Mbit/s while its clients train (unshaped, in far less
    # than 0.16 s), then its partial goes up at 2 Mbit/s.
    assert run.sim_seconds[0] == pytest.approx(2 * arrays / (2 * BYTES_PER_MBIT))
    row = run.records[1]
    assert (row.cloud_wire_bytes_up, row.cloud_wire_bytes_down) == (2 * arrays, 2 * arrays)
    assert row.wire_bytes_up is None  # the clients' links are not emulated
    assert_same_model(run.final_tensors(), plain.final_tensors())
