"""The link emulator: a userspace asyncio TCP proxy per link, between a client (or a fog
site) and its broker. Each direction is paced by the link model's rate over time, shared by
all of the link's connections; every chunk then arrives one one-way latency (with jitter)
later, never before the chunk sent ahead of it, so bytes keep their order. Stalls hold
every byte; a reset closes the link's connections (with a TCP RST) and refuses new ones
until it ends. Bytes are counted per direction as they are delivered."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import socket
import struct
from dataclasses import asdict, dataclass
from typing import Any

from fogfl.links.model import BYTES_PER_MBIT, DirectionName, LinkModel

logger = logging.getLogger("fogfl.links")

# Credit a link may bank while idle (a token bucket's depth, in seconds at the current rate):
# enough to absorb the event loop waking a little late, too little to matter for a transfer.
BURST_S = 0.01
# Chunks carry about this many seconds of the current rate, within [MIN, MAX] bytes.
CHUNK_S = 0.02
MIN_CHUNK = 1460
MAX_CHUNK = 64 * 1024


@dataclass
class LinkCounters:
    """What a proxy did: bytes delivered each way, connections accepted, refused during a
    reset, and closed by one."""

    uplink_bytes: int = 0
    downlink_bytes: int = 0
    connections: int = 0
    refused: int = 0
    resets: int = 0

    def add(self, direction: DirectionName, nbytes: int) -> None:
        if direction == "uplink":
            self.uplink_bytes += nbytes
        else:
            self.downlink_bytes += nbytes


class LinkClock:
    """The links' shared time: seconds since `origin` on the event loop's monotonic clock."""

    def __init__(self, origin: float | None = None) -> None:
        self.origin = asyncio.get_running_loop().time() if origin is None else origin

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.origin

    async def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        await asyncio.sleep(delay if delay > 0 else 0)


def _reset_socket(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, as a dropped connection looks to its peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    """One client connection through a proxy: two paced pumps, one per direction."""

    def __init__(
        self,
        proxy: LinkProxy,
        number: int,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.number = number
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        pumps = [
            self._pump("uplink", self.client[0], self.upstream[1]),
            self._pump("downlink", self.upstream[0], self.client[1]),
        ]
        self.tasks = [asyncio.ensure_future(p) for p in pumps]
        try:
            results = await asyncio.gather(*self.tasks, return_exceptions=True)
            if any(isinstance(r, BaseException) for r in results):
                self.abort()
        finally:
            for _, writer in (self.client, self.upstream):
                writer.close()

    def abort(self) -> None:
        for task in self.tasks:
            task.cancel()
        for _, writer in (self.client, self.upstream):
            _reset_socket(writer)

    async def _pump(
        self, direction: DirectionName, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        if self.proxy.model is None:
            await self._forward(direction, source, sink)
            return
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        delivery = asyncio.ensure_future(self._deliver(direction, queue, sink))
        try:
            await self._pace(direction, source, queue)
            await delivery
        except BaseException:
            delivery.cancel()
            raise

    async def _pace(
        self,
        direction: DirectionName,
        source: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes | None]],
    ) -> None:
        """Read what the link can carry, stamp each chunk with its arrival time."""
        model, clock = self.proxy.model, self.proxy.clock
        assert model is not None
        seed = f"{self.proxy.seed}:{self.proxy.name}:{self.number}:{direction}"
        rng = random.Random(hashlib.sha256(seed.encode()).digest())
        last_arrival = -math.inf
        while True:
            spec = model.direction(direction)
            rate = spec.rate.rate_at(clock.now())
            data = await source.read(int(min(MAX_CHUNK, max(MIN_CHUNK, rate * CHUNK_S))))
            now = clock.now()
            if not data:
                queue.put_nowait((max(last_arrival, now + spec.latency_s), None))
                return
            # One link, however many connections: they take turns on its rate.
            busy_until = self.proxy.busy_until[direction]
            sent = model.serialized_by(direction, len(data), max(busy_until, now - BURST_S))
            self.proxy.busy_until[direction] = sent
            delay = spec.latency_s
            if spec.jitter_s > 0:
                delay = max(0.0, rng.gauss(spec.latency_s, spec.jitter_s))
            arrival = max(sent + delay, last_arrival)
            outage = model.outage_at(arrival)
            if outage is not None:
                arrival = outage.end_s
            last_arrival = arrival
            queue.put_nowait((arrival, data))
            # Read no further than the link has carried, so the sender feels its rate.
            await clock.sleep_until(sent)

    async def _forward(
        self, direction: DirectionName, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        """An unshaped link: bytes as fast as both ends take them, counted."""
        while data := await source.read(MAX_CHUNK):
            sink.write(data)
            await sink.drain()
            self.proxy.counters.add(direction, len(data))
        if sink.can_write_eof():
            sink.write_eof()

    async def _deliver(
        self,
        direction: DirectionName,
        queue: asyncio.Queue[tuple[float, bytes | None]],
        sink: asyncio.StreamWriter,
    ) -> None:
        clock = self.proxy.clock
        while True:
            arrival, data = await queue.get()
            await clock.sleep_until(arrival)
            if data is None:
                if sink.can_write_eof():
                    sink.write_eof()
                return
            sink.write(data)
            await sink.drain()
            self.proxy.counters.add(direction, len(data))


class LinkProxy:
    """One emulated link: listens on `listen_host:listen_port` (0: a free port) and forwards
    every connection to `upstream_host:upstream_port` through the link model (None: unshaped,
    counted only)."""

    def __init__(
        self,
        name: str,
        model: LinkModel | None,
        upstream_host: str,
        upstream_port: int,
        clock: LinkClock,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.model = model
        self.upstream = (upstream_host, upstream_port)
        self.clock = clock
        self.listen = (listen_host, listen_port)
        self.seed = seed
        self.counters = LinkCounters()
        # When each direction has carried everything handed to it so far (link time).
        self.busy_until: dict[DirectionName, float] = {"uplink": -math.inf, "downlink": -math.inf}
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._resets: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"link {self.name} is not listening")
        return self._port

    async def start(self) -> int:
        """Listen; the port it listens on."""
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self._port = int(self._server.sockets[0].getsockname()[1])
        if self.model is not None and any(o.kind == "reset" for o in self.model.outages):
            self._resets = asyncio.ensure_future(self._reset_when_due())
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._resets is not None:
            self._resets.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def state(self) -> str:
        """up, stalled or down (in a reset) right now."""
        window = self.model.outage_at(self.clock.now()) if self.model is not None else None
        if window is None:
            return "up"
        return "down" if window.kind == "reset" else "stalled"

    def snapshot(self) -> dict[str, Any]:
        """The counters, the state and the current rates, for the counters file."""
        now = self.clock.now()
        rates: dict[str, float | None] = {"uplink": None, "downlink": None}
        if self.model is not None:
            for direction in ("uplink", "downlink"):
                rate = self.model.direction(direction).rate.rate_at(now)
                rates[direction] = round(rate / BYTES_PER_MBIT, 6)
        return {
            **asdict(self.counters),
            "open_connections": len(self._connections),
            "state": self.state(),
            "rate_mbit": rates,
            "port": self._port,
        }

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # stop() ends connections this way; asyncio would log a cancelled handler
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.state() == "down":
            self.counters.refused += 1
            _reset_socket(writer)
            return
        try:
            upstream = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            logger.warning(
                "link %s: cannot reach %s:%d (%s); closing the client's connection",
                self.name,
                *self.upstream,
                exc.strerror or exc,
            )
            _reset_socket(writer)
            return
        self.counters.connections += 1
        for _, stream_writer in ((reader, writer), upstream):
            sock = stream_writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(self, self.counters.connections, (reader, writer), upstream)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    async def _reset_when_due(self) -> None:
        assert self.model is not None
        handled = -math.inf
        while True:
            due = self.model.next_outage_start(max(self.clock.now(), handled), "reset")
            if math.isinf(due):
                return
            await self.clock.sleep_until(due)
            handled = due
            hit = list(self._connections)
            for connection in hit:
                connection.abort()
            self.counters.resets += len(hit)
            if hit:
                logger.info("link %s: reset %d connection(s)", self.name, len(hit))
