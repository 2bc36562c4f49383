"""The link proxy on real loopback sockets: bytes arrive intact and in order under jitter,
the rate holds the sender back, a stall pauses delivery, a reset closes the connection and
refuses new ones until it ends, and the counters say what moved."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

import pytest

from fogfl.links.model import LinkModel, Outage, fixed_link
from fogfl.links.proxy import LinkClock, LinkProxy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _with_proxy(
    model: LinkModel | None, upstream: Handler, body: Callable[[LinkProxy], Awaitable[None]]
) -> None:
    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    proxy = LinkProxy(
        "north-01", model, "127.0.0.1", server.sockets[0].getsockname()[1], LinkClock()
    )
    await proxy.start()
    try:
        await asyncio.wait_for(body(proxy), timeout=30)
    finally:
        await proxy.stop()
        server.close()
        await server.wait_closed()


def test_bytes_arrive_intact_in_order_both_ways_and_are_counted() -> None:
    up, down = os.urandom(3_000_000), os.urandom(1_000_000)
    received = bytearray()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(down)  # the broker's side talks at the same time
        await writer.drain()
        writer.write_eof()
        received.extend(await reader.read())
        writer.close()

    async def body(proxy: LinkProxy) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(up)
        await writer.drain()
        writer.write_eof()
        got = await reader.read()
        writer.close()
        assert got == down
        for _ in range(100):  # the upstream side finishes reading a moment later
            if len(received) == len(up):
                break
            await asyncio.sleep(0.02)
        assert bytes(received) == up
        assert proxy.counters.uplink_bytes == len(up)
        assert proxy.counters.downlink_bytes == len(down)
        assert proxy.counters.connections == 1

    # Jitter far above the spacing of chunks: reordering would show at once.
    model = fixed_link("north-01", 80, 80, latency_ms=10, jitter_ms=30)
    asyncio.run(_with_proxy(model, upstream, body))


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()
    writer.close()


def test_a_transfer_takes_at_least_its_bytes_over_the_rate() -> None:
    async def body(proxy: LinkProxy) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = proxy.clock.now()
        writer.write(os.urandom(400_000))
        writer.write_eof()
        await reader.read()  # the upstream closes once it has everything
        # 400 kB at 1 MB/s cannot take less than 0.4 s, however fast the machine.
        assert proxy.clock.now() - started >= 0.38
        assert proxy.counters.uplink_bytes == 400_000
        writer.close()

    asyncio.run(_with_proxy(fixed_link("north-01", 8, 8), _sink, body))


def test_a_stall_holds_every_byte_until_it_ends() -> None:
    arrivals: list[tuple[float, bytes]] = []
    clock_box: list[LinkClock] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            arrivals.append((clock_box[0].now(), data))
        writer.close()

    async def body(proxy: LinkProxy) -> None:
        clock_box.append(proxy.clock)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"before")
        await proxy.clock.sleep_until(0.6)
        assert proxy.state() == "stalled"
        writer.write(b"during")
        await proxy.clock.sleep_until(1.3)
        assert proxy.state() == "up"
        writer.write_eof()
        await reader.read()
        writer.close()
        assert b"".join(data for _, data in arrivals) == b"beforeduring"
        during = [t for t, data in arrivals if b"during" in data]
        assert during and during[0] >= 1.2  # not before the stall ends

    model = fixed_link("north-01", 100, 100, outages=[Outage(0.4, 0.8, "stall")])
    asyncio.run(_with_proxy(model, upstream, body))


def test_a_reset_closes_the_connection_refuses_new_ones_and_a_reconnect_works() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.read()
        except ConnectionResetError:
            return b"<reset>"

    async def body(proxy: LinkProxy) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        # The reset at 0.5 s ends the connection without any word from the broker.
        assert await read_until_closed(reader) in (b"", b"<reset>")
        assert proxy.clock.now() >= 0.45
        writer.close()
        assert proxy.state() == "down"
        refused_reader, refused_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await read_until_closed(refused_reader) in (b"", b"<reset>")
        refused_writer.close()
        await proxy.clock.sleep_until(2.0)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"again")
        assert await reader.readexactly(5) == b"again"
        writer.close()
        assert proxy.counters.resets == 1
        assert proxy.counters.refused == 1
        assert proxy.counters.connections == 2
        assert proxy.counters.uplink_bytes == 9

    model = fixed_link("north-01", 10, 10, outages=[Outage(0.5, 1.5, "reset")])
    asyncio.run(_with_proxy(model, echo, body))


def test_an_unshaped_proxy_forwards_and_counts() -> None:
    payload = os.urandom(2_000_000)
    received = bytearray()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    async def body(proxy: LinkProxy) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(payload)
        writer.write_eof()
        assert await reader.read() == b"ok"
        writer.close()
        assert bytes(received) == payload
        assert (proxy.counters.uplink_bytes, proxy.counters.downlink_bytes) == (len(payload), 2)
        assert proxy.snapshot()["rate_mbit"] == {"uplink": None, "downlink": None}

    asyncio.run(_with_proxy(None, upstream, body))


def test_an_unreachable_broker_closes_the_clients_connection() -> None:
    async def body(proxy: LinkProxy) -> None:
        proxy.upstream = ("127.0.0.1", 1)  # nothing listens on port 1
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
        writer.close()
        assert proxy.counters.connections == 0

    asyncio.run(_with_proxy(fixed_link("north-01", 10, 10), _sink, body))


@pytest.mark.parametrize("mbit", [2.0])
def test_snapshot_reports_state_and_rate(mbit: float) -> None:
    async def body(proxy: LinkProxy) -> None:
        snap = proxy.snapshot()
        assert snap["state"] == "up"
        assert snap["rate_mbit"] == {"uplink": mbit, "downlink": 3 * mbit}
        assert snap["port"] == proxy.port

    asyncio.run(_with_proxy(fixed_link("north-01", mbit, 3 * mbit), _sink, body))


def test_connections_of_one_link_share_its_rate() -> None:
    async def body(proxy: LinkProxy) -> None:
        async def send(nbytes: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(bytes(nbytes))
            writer.write_eof()
            await reader.read()
            writer.close()

        started = proxy.clock.now()
        await asyncio.gather(send(200_000), send(200_000))
        # A fog site's connections together get the link's 1 MB/s, not 1 MB/s each.
        assert proxy.clock.now() - started >= 0.38
        assert proxy.counters.uplink_bytes == 400_000

    asyncio.run(_with_proxy(fixed_link("north-01", 8, 8), _sink, body))
