"""Chunked transfers: a payload larger than `wire.chunk_bytes` travels as numbered,
checksummed chunks on subtopics of its topic, and the receiver puts it back together.

A chunk is itself a readable safetensors file: metadata of kind ``chunk`` (transfer id,
index, count, sizes, the SHA-256 of the whole payload and of the chunk) and one uint8
tensor ``data``, the payload's bytes from ``index × chunk_bytes``. Chunk ``i`` of a message
on topic ``T`` goes to ``T/chunk/<i>``, with the message's retain flag, so the broker's ACL
decides who may send it and a late subscriber finds every index of a retained message.
`docs/protocol.md` ("Chunked transfers") is the specification.

`split` makes the chunks, `sent_bytes` says how many bytes they come to (what a link
carries); `read_chunk` reads one, totally: a WireError with the reason for a chunk that is
wrong, None for a payload that is not a chunk at all. `Reassembler` puts transfers
together in any order, ignores duplicates, holds at most `wire.chunk_transfers` transfers
and `wire.chunk_buffer_bytes` bytes, and drops a transfer that has had no chunk for
`wire.chunk_timeout_s`. It never touches MQTT: it hands back the receipts of the
chunks it is done with, for the session to acknowledge.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from safetensors.numpy import save as safetensors_save

from fogfl import PROTOCOL_VERSION
from fogfl.errors import WireError

KIND = "chunk"
SEGMENT = "chunk"  # chunk i of topic T travels on T/chunk/i
TENSOR = "data"
MAX_HEADER_BYTES = 4096  # a chunk's whole safetensors header; real ones need about 600
MAX_CHUNK_BYTES = 268_435_455 - 65_536  # MQTT's message limit, less room for the header
_HEADER_LENGTH = struct.Struct("<Q")
_COUNT_TEXT = re.compile(r"0|[1-9][0-9]{0,15}")
_INDEX_TEXT = re.compile(r"0|[1-9][0-9]{0,8}")
_TRANSFER_TEXT = re.compile(r"[0-9a-f]{32}")
_SHA256_TEXT = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("transfer", "index", "count", "chunk_bytes", "total_bytes", "sha256", "chunk_sha256")
_REMEMBERED = 4096  # finished transfer ids kept, so that their late copies are ignored

Receipt = TypeVar("Receipt")


@dataclass(frozen=True)
class Chunk:
    """One chunk as read: where its `data` belongs in which transfer."""

    transfer: str
    index: int
    count: int
    chunk_bytes: int
    total_bytes: int
    sha256: str
    chunk_sha256: str
    data: memoryview

    @property
    def offset(self) -> int:
        return self.index * self.chunk_bytes

    @property
    def shape(self) -> tuple[int, int, int, str]:
        """What every chunk of one transfer must agree on."""
        return (self.count, self.chunk_bytes, self.total_bytes, self.sha256)


def chunk_topic(topic: str, index: int) -> str:
    """The topic chunk `index` of a message on `topic` travels on."""
    return f"{topic}/{SEGMENT}/{index}"


def chunk_filter(topic_filter: str) -> str | None:
    """The filter that brings the chunks of the messages `topic_filter` brings; None when it
    already does (a filter ending in ``#``)."""
    return None if topic_filter.endswith("#") else f"{topic_filter}/{SEGMENT}/+"


def located(topic: str) -> tuple[str, int] | None:
    """(the message's topic, the chunk's index) for a topic of the form ``T/chunk/<i>``."""
    parts = topic.rsplit("/", 2)
    if len(parts) != 3 or not parts[0] or parts[1] != SEGMENT:
        return None
    if not _INDEX_TEXT.fullmatch(parts[2]):
        return None
    return parts[0], int(parts[2])


def chunk_count(total_bytes: int, chunk_bytes: int) -> int:
    return max(1, math.ceil(total_bytes / chunk_bytes))


def split(payload: bytes | bytearray | memoryview, chunk_bytes: int) -> Iterator[bytes]:
    """The chunk messages of `payload` in index order, one at a time (each copies at most
    `chunk_bytes` of it), under a fresh random transfer id."""
    if not 1 <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be 1 to {MAX_CHUNK_BYTES}, not {chunk_bytes}")
    view = memoryview(payload).cast("B")
    total = len(view)
    count = chunk_count(total, chunk_bytes)
    common = _common_metadata(
        secrets.token_hex(16), count, chunk_bytes, total, hashlib.sha256(view).hexdigest()
    )
    for index in range(count):
        data = view[index * chunk_bytes : (index + 1) * chunk_bytes]
        metadata = {
            **common,
            "index": str(index),
            "chunk_sha256": hashlib.sha256(data).hexdigest(),
        }
        yield safetensors_save({TENSOR: np.frombuffer(data, dtype=np.uint8)}, metadata=metadata)


def sent_bytes(total_bytes: int, chunk_bytes: int) -> int:
    """The bytes a payload of `total_bytes` travels as, in MQTT messages: itself when it is
    at most `chunk_bytes`, else the chunks `split` makes of it, each its header and its
    piece. From the sizes alone (ids and checksums have fixed lengths): one header for each
    count of the index's decimals, and the last chunk's."""
    if total_bytes <= chunk_bytes:
        return total_bytes
    count = chunk_count(total_bytes, chunk_bytes)
    common = _common_metadata("0" * 32, count, chunk_bytes, total_bytes, "0" * 64)
    headers, first = 0, 0
    while first < count - 1:
        end = min(count - 1, 10 ** len(str(first)))  # the full chunks with as many decimals
        headers += (end - first) * _header_bytes(common, first, chunk_bytes)
        first = end
    last = total_bytes - (count - 1) * chunk_bytes
    return total_bytes + headers + _header_bytes(common, count - 1, last)


def _common_metadata(
    transfer: str, count: int, chunk_bytes: int, total_bytes: int, sha256: str
) -> dict[str, str]:
    """The metadata every chunk of one transfer carries."""
    return {
        "fogfl": PROTOCOL_VERSION,
        "kind": KIND,
        "transfer": transfer,
        "count": str(count),
        "chunk_bytes": str(chunk_bytes),
        "total_bytes": str(total_bytes),
        "sha256": sha256,
    }


def _header_bytes(common: dict[str, str], index: int, piece_bytes: int) -> int:
    """The length prefix and padded header of chunk `index`, a piece of `piece_bytes`: the
    header of a one-byte piece, whose length shows twice (shape and offsets) as "1"."""
    metadata = {**common, "index": str(index), "chunk_sha256": "0" * 64}
    one = safetensors_save({TENSOR: np.zeros(1, np.uint8)}, metadata=metadata)
    (length,) = _HEADER_LENGTH.unpack_from(one)
    text = len(one[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length].rstrip(b" "))
    text += 2 * (len(str(piece_bytes)) - 1)
    return _HEADER_LENGTH.size + -(-text // 8) * 8  # padded to a multiple of 8 bytes


def read_chunk(payload: bytes | bytearray | memoryview) -> Chunk | None:
    """The chunk `payload` holds; None when it is no chunk (no readable header of at most
    MAX_HEADER_BYTES, or metadata of another kind), WireError when it claims to be one and
    is wrong: ``bad-version``, ``bad-chunk`` (a field of the wrong form, sizes that do not
    add up, a header beyond the one tensor), ``chunk-checksum`` (data that does not match
    its ``chunk_sha256``)."""
    header, data = _header(payload)
    if header is None:
        return None
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        return None
    if meta.get("fogfl") != PROTOCOL_VERSION:
        raise WireError(
            "bad-version",
            f"chunk of protocol version {_shown(meta.get('fogfl'))}, this fogfl speaks "
            f"{PROTOCOL_VERSION!r}; upgrade the sender or this role",
        )
    if not all(isinstance(meta.get(key), str) for key in _FIELDS):
        missing = [key for key in _FIELDS if not isinstance(meta.get(key), str)]
        raise WireError("bad-chunk", f"chunk metadata lacks {missing} (or holds non-strings)")
    transfer = _text(meta, "transfer", _TRANSFER_TEXT, "32 lowercase hex digits")
    sha256 = _text(meta, "sha256", _SHA256_TEXT, "64 lowercase hex digits")
    chunk_sha256 = _text(meta, "chunk_sha256", _SHA256_TEXT, "64 lowercase hex digits")
    index, count, stride, total = (
        int(_text(meta, key, _COUNT_TEXT, "a decimal count"))
        for key in ("index", "count", "chunk_bytes", "total_bytes")
    )
    if not 1 <= stride <= MAX_CHUNK_BYTES or total < 1:
        raise WireError(
            "bad-chunk",
            f"chunk_bytes {stride} must be 1 to {MAX_CHUNK_BYTES}, total_bytes {total} at least 1",
        )
    if count != chunk_count(total, stride) or index >= count:
        raise WireError(
            "bad-chunk",
            f"chunk {index} of {count}: {total} bytes in chunks of {stride} make "
            f"{chunk_count(total, stride)} chunks, numbered from 0",
        )
    expected = min(stride, total - index * stride)
    entry = header.get(TENSOR)
    if set(header) != {"__metadata__", TENSOR} or entry != {
        "dtype": "U8",
        "shape": [expected],
        "data_offsets": [0, expected],
    }:
        raise WireError(
            "bad-chunk",
            f"chunk {index} of {count} must hold exactly one tensor {TENSOR!r} of dtype U8, "
            f"shape [{expected}] and data_offsets [0, {expected}]",
        )
    if len(data) != expected:
        raise WireError(
            "bad-chunk", f"chunk {index} of {count} carries {len(data)} data bytes, not {expected}"
        )
    if hashlib.sha256(data).hexdigest() != chunk_sha256:
        raise WireError(
            "chunk-checksum",
            f"chunk {index} of {count} of transfer {transfer}: its data does not match its "
            "chunk_sha256 (damaged on the way?)",
        )
    return Chunk(transfer, index, count, stride, total, sha256, chunk_sha256, data)


@dataclass(frozen=True)
class ChunkLimits:
    """What one receiver holds at most (`wire.chunk_*`, `wire.max_payload_bytes`)."""

    max_payload_bytes: int
    max_transfers: int
    buffer_bytes: int
    timeout_s: float


@dataclass
class Step(Generic[Receipt]):
    """What one event did: a reassembled `payload` (on `topic`) or none; the `receipts` of
    the chunks now done with (those of the payload, or of chunks dropped or ignored);
    `error` when something was rejected; `note` says why chunks were dropped without error."""

    topic: str
    payload: bytearray | None = None
    receipts: list[Receipt] = field(default_factory=list)
    error: WireError | None = None
    note: str = ""


@dataclass
class _Transfer(Generic[Receipt]):
    topic: str
    transfer: str
    shape: tuple[int, int, int, str]
    buffer: bytearray
    last_arrival: float
    retained: bool
    arrived: dict[int, str] = field(default_factory=dict)  # index → chunk_sha256
    receipts: list[Receipt] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.shape[0]

    @property
    def received_bytes(self) -> int:
        stride, total = self.shape[1], self.shape[2]
        return sum(min(stride, total - index * stride) for index in self.arrived)


class Reassembler(Generic[Receipt]):
    """Puts chunked transfers back together, within `limits`.

    Transfers are told apart by topic and transfer id, so chunks on one topic (which the
    broker's ACL lets only its owner write) never reach a transfer of another. A transfer's
    buffer (its `total_bytes`) is reserved by its first chunk and counts against
    `buffer_bytes` until it completes or is dropped. Later copies of a dropped transfer's
    chunks are let go; so are those of a completed one with `remember_completed`, and
    without it (a receiver that acknowledges a message only once it is handled, whose
    unacknowledged chunks all come again after a reconnect) they make the message again.
    """

    def __init__(
        self,
        limits: ChunkLimits,
        clock: Callable[[], float] = time.monotonic,
        *,
        remember_completed: bool = True,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.remember_completed = remember_completed
        self.held_bytes = 0
        self._transfers: dict[tuple[str, str], _Transfer[Receipt]] = {}
        self._finished: OrderedDict[tuple[str, str], None] = OrderedDict()

    @property
    def transfers(self) -> int:
        return len(self._transfers)

    def add(
        self, topic: str, chunk: Chunk, receipt: Receipt, *, retained: bool = False
    ) -> list[Step[Receipt]]:
        """Take one chunk that arrived on `topic`'s chunk subtopic; the steps it caused."""
        key = (topic, chunk.transfer)
        what = f"transfer {chunk.transfer} on {topic}"
        if key in self._finished:
            return [Step(topic, receipts=[receipt], note=f"{what} is over; a late copy")]
        current = self._transfers.get(key)
        if current is None:
            refusal = self._refusal(chunk, what)
            if refusal is not None:
                self._finish(key)
                return [Step(topic, receipts=[receipt], error=refusal)]
            current = _Transfer(
                topic,
                chunk.transfer,
                chunk.shape,
                bytearray(chunk.total_bytes),
                self.clock(),
                retained,
            )
            self._transfers[key] = current
            self.held_bytes += chunk.total_bytes
        elif chunk.shape != current.shape:
            return _mismatch(
                topic,
                receipt,
                f"chunk {chunk.index} of {what} says {_described(chunk.shape)}, its "
                f"transfer {_described(current.shape)}",
            )
        current.last_arrival = self.clock()
        current.retained = current.retained and retained
        current.receipts.append(receipt)
        earlier = current.arrived.get(chunk.index)
        if earlier is not None:
            if earlier == chunk.chunk_sha256:
                return []  # a duplicate: its receipt waits with the others
            current.receipts.pop()
            return _mismatch(
                topic, receipt, f"chunk {chunk.index} of {what} arrived again with other data"
            )
        current.buffer[chunk.offset : chunk.offset + len(chunk.data)] = chunk.data
        current.arrived[chunk.index] = chunk.chunk_sha256
        if len(current.arrived) < current.count:
            return []
        intact = hashlib.sha256(current.buffer).hexdigest() == current.shape[3]
        self._drop(key, remember=self.remember_completed or not intact)
        steps: list[Step[Receipt]] = []
        if not intact:
            steps.append(
                Step(
                    topic,
                    receipts=current.receipts,
                    error=WireError(
                        "chunk-checksum",
                        f"{what}: the {current.shape[2]} reassembled bytes do not match its "
                        "sha256; dropped",
                    ),
                )
            )
        else:
            steps.append(Step(topic, payload=current.buffer, receipts=current.receipts))
        if current.retained:
            steps += self._superseded(topic)
        return steps

    def expire(self) -> list[Step[Receipt]]:
        """Drop every transfer that has had no chunk for `timeout_s`."""
        now = self.clock()
        steps: list[Step[Receipt]] = []
        for key, transfer in list(self._transfers.items()):
            if now - transfer.last_arrival < self.limits.timeout_s:
                continue
            self._drop(key)
            steps.append(
                Step(
                    transfer.topic,
                    receipts=transfer.receipts,
                    error=WireError(
                        "chunk-timeout",
                        f"transfer {transfer.transfer} on {transfer.topic}: "
                        f"{len(transfer.arrived)} of {transfer.count} chunks "
                        f"({transfer.received_bytes:,} of {transfer.shape[2]:,} bytes), then "
                        f"none for {self.limits.timeout_s:g} s (wire.chunk_timeout_s); dropped",
                    ),
                )
            )
        return steps

    def seconds_to_expiry(self) -> float | None:
        """How long until the next transfer would expire; None without transfers."""
        if not self._transfers:
            return None
        oldest = min(transfer.last_arrival for transfer in self._transfers.values())
        return max(0.0, oldest + self.limits.timeout_s - self.clock())

    def _refusal(self, chunk: Chunk, what: str) -> WireError | None:
        limits = self.limits
        if chunk.total_bytes > limits.max_payload_bytes:
            return WireError(
                "oversized",
                f"{what} announces {chunk.total_bytes:,} bytes, over the limit of "
                f"{limits.max_payload_bytes:,} (wire.max_payload_bytes)",
            )
        if len(self._transfers) >= limits.max_transfers:
            return WireError(
                "chunk-limit",
                f"{what}: {len(self._transfers)} transfers are being reassembled already, the "
                f"most wire.chunk_transfers allows; dropped",
            )
        if self.held_bytes + chunk.total_bytes > limits.buffer_bytes:
            return WireError(
                "chunk-limit",
                f"{what} needs {chunk.total_bytes:,} bytes; with {self.held_bytes:,} held for "
                f"other transfers that is over wire.chunk_buffer_bytes "
                f"({limits.buffer_bytes:,}); dropped",
            )
        return None

    def _superseded(self, topic: str) -> list[Step[Receipt]]:
        """A retained message on `topic` came whole: any other transfer on it made of
        retained chunks is a leftover of an older message whose indices were overwritten,
        and can never complete."""
        steps: list[Step[Receipt]] = []
        for key, transfer in list(self._transfers.items()):
            if transfer.topic == topic and transfer.retained:
                self._drop(key)
                steps.append(
                    Step(
                        topic,
                        receipts=transfer.receipts,
                        note=f"retained chunks of an older transfer {transfer.transfer}",
                    )
                )
        return steps

    def _drop(self, key: tuple[str, str], remember: bool = True) -> None:
        transfer = self._transfers.pop(key)
        self.held_bytes -= transfer.shape[2]
        if remember:
            self._finish(key)

    def _finish(self, key: tuple[str, str]) -> None:
        self._finished[key] = None
        self._finished.move_to_end(key)
        while len(self._finished) > _REMEMBERED:
            self._finished.popitem(last=False)


def _header(payload: bytes | bytearray | memoryview) -> tuple[dict[str, Any] | None, memoryview]:
    """The parsed safetensors header and the data after it; (None, …) when unreadable."""
    view = memoryview(payload).cast("B")
    if len(view) < _HEADER_LENGTH.size:
        return None, view
    (length,) = _HEADER_LENGTH.unpack_from(view, 0)
    start = _HEADER_LENGTH.size + length
    if length > MAX_HEADER_BYTES or start > len(view):
        return None, view
    try:
        # At most 4 KiB: too small for nesting or numbers to cost anything to parse.
        header = json.loads(bytes(view[_HEADER_LENGTH.size : start]).decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None, view
    return (header if isinstance(header, dict) else None), view[start:]


def _text(meta: dict[str, Any], key: str, form: re.Pattern[str], wanted: str) -> str:
    value = meta[key]
    if not form.fullmatch(value):
        raise WireError("bad-chunk", f"chunk metadata {key}={_shown(value)} is not {wanted}")
    return str(value)


def _mismatch(topic: str, receipt: Receipt, reason: str) -> list[Step[Receipt]]:
    """A chunk that does not fit its transfer: acknowledged alone, rejected."""
    return [Step(topic, receipts=[receipt], error=WireError("chunk-mismatch", reason))]


def _described(shape: tuple[int, int, int, str]) -> str:
    count, stride, total, sha256 = shape
    return f"{count} chunks of {stride} bytes, {total} in all, sha256 {sha256[:12]}…"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
