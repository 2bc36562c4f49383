"""Chunked transfers without MQTT: the chunk format, and reassembly in any order, with
duplicates, missing chunks, hostile chunks and a bounded memory."""

from __future__ import annotations

import contextlib
import hashlib
import random

import numpy as np
import pytest
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from fogfl import chunks
from fogfl.chunks import ChunkLimits, Reassembler
from fogfl.config import WireSettings
from fogfl.errors import WireError

PAYLOAD = bytes(random.Random(9).randbytes(10_000))
STRIDE = 4096
LIMITS = ChunkLimits(max_payload_bytes=50_000, max_transfers=4, buffer_bytes=60_000, timeout_s=30)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pieces(payload: bytes = PAYLOAD, stride: int = STRIDE) -> list[chunks.Chunk]:
    found = [chunks.read_chunk(message) for message in chunks.split(payload, stride)]
    assert all(chunk is not None for chunk in found)
    return [chunk for chunk in found if chunk is not None]


def forged(**changes: object) -> bytes:
    """Chunk 0 of PAYLOAD with metadata fields or its data changed."""
    data = np.frombuffer(PAYLOAD[:STRIDE], dtype=np.uint8)
    meta = {
        "fogfl": "1",
        "kind": "chunk",
        "transfer": "ab" * 16,
        "index": "0",
        "count": "3",
        "chunk_bytes": str(STRIDE),
        "total_bytes": str(len(PAYLOAD)),
        "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
        "chunk_sha256": hashlib.sha256(data).hexdigest(),
    }
    tensors = {"data": data}
    for key, value in changes.items():
        if key == "tensors":
            tensors = value  # type: ignore[assignment]
        else:
            meta[key] = str(value)
    return safetensors_save(tensors, metadata=meta)


def test_a_chunk_is_a_readable_safetensors_file() -> None:
    messages = list(chunks.split(PAYLOAD, STRIDE))
    assert len(messages) == 3
    tensors = safetensors_load(messages[2])
    assert list(tensors) == ["data"] and tensors["data"].dtype == np.uint8
    assert tensors["data"].tobytes() == PAYLOAD[2 * STRIDE :]
    last = pieces()[2]
    assert (last.index, last.count, last.total_bytes, last.offset) == (2, 3, 10_000, 8192)
    assert last.sha256 == hashlib.sha256(PAYLOAD).hexdigest()


@pytest.mark.parametrize(
    ("total", "stride"),
    [(10_000, 4096), (8192, 4096), (8193, 4096), (4096, 4096), (12_345, 10), (5, 4), (50, 1)],
)
def test_sent_bytes_are_what_the_chunks_come_to(total: int, stride: int) -> None:
    """What a link carries for a message: its chunks, headers and all (the index grows a
    decimal at 10 and 1,000 chunks here), or the payload itself when it fits one."""
    payload = random.Random(total).randbytes(total)
    sent = sum(map(len, chunks.split(payload, stride))) if total > stride else total
    assert chunks.sent_bytes(total, stride) == sent


def test_topics_of_chunks() -> None:
    assert chunks.chunk_topic("fl/global_model", 7) == "fl/global_model/chunk/7"
    assert chunks.located("fl/global_model/chunk/7") == ("fl/global_model", 7)
    assert chunks.located("fl/updates/north/north-01") is None
    assert chunks.located("fl/global_model/chunk/07") is None
    assert chunks.chunk_filter("fl/updates/north/+") == "fl/updates/north/+/chunk/+"
    assert chunks.chunk_filter("fl/#") is None


def test_chunks_in_any_order_make_the_payload_once() -> None:
    reassembler: Reassembler[int] = Reassembler(LIMITS)
    first, second, third = pieces()
    assert reassembler.add("t", third, 3) == []
    assert reassembler.add("t", first, 1) == []
    assert reassembler.add("t", first, 11) == []  # a duplicate: ignored, its receipt kept
    [step] = reassembler.add("t", second, 2)
    assert step.payload == PAYLOAD and step.error is None
    assert sorted(step.receipts) == [1, 2, 3, 11]
    assert reassembler.held_bytes == 0 and reassembler.transfers == 0
    # A late copy of a chunk of the finished transfer is let go, never a second payload.
    [late] = reassembler.add("t", second, 22)
    assert late.payload is None and late.error is None and late.receipts == [22]


def test_a_receiver_that_acks_late_gets_a_redelivered_message_again() -> None:
    # Its chunks were never acknowledged, so after a reconnect all of them come again.
    reassembler: Reassembler[int] = Reassembler(LIMITS, remember_completed=False)
    sent = pieces()
    for copy in (0, 10):
        steps = [step for n, c in enumerate(sent) for step in reassembler.add("t", c, n + copy)]
        assert [s.payload for s in steps] == [PAYLOAD]


def test_the_same_transfer_on_another_topic_is_another_transfer() -> None:
    reassembler: Reassembler[int] = Reassembler(LIMITS)
    first, second, third = pieces()
    reassembler.add("fl/updates/north/a", first, 1)
    reassembler.add("fl/updates/north/b", second, 2)
    assert reassembler.add("fl/updates/north/a", third, 3) == []
    assert reassembler.transfers == 2


def test_a_transfer_missing_a_chunk_is_dropped_after_the_timeout() -> None:
    clock = Clock()
    reassembler: Reassembler[int] = Reassembler(LIMITS, clock)
    first, second, third = pieces()
    reassembler.add("t", first, 1)
    clock.now = 20.0
    reassembler.add("t", third, 3)
    clock.now = 49.0  # 29 s after the last chunk: still waiting
    assert reassembler.expire() == []
    assert reassembler.seconds_to_expiry() == pytest.approx(1.0)
    clock.now = 50.0
    [step] = reassembler.expire()
    assert step.error is not None and step.error.reason == "chunk-timeout"
    assert "2 of 3 chunks" in str(step.error) and sorted(step.receipts) == [1, 3]
    assert reassembler.held_bytes == 0 and reassembler.seconds_to_expiry() is None
    [late] = reassembler.add("t", second, 2)
    assert late.payload is None and late.error is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"fogfl": "2"}, "bad-version"),
        ({"transfer": "not-hex"}, "bad-chunk"),
        ({"index": "3"}, "bad-chunk"),
        ({"index": "-1"}, "bad-chunk"),
        ({"count": "2"}, "bad-chunk"),
        ({"count": "99999999999999999"}, "bad-chunk"),
        ({"chunk_bytes": "0"}, "bad-chunk"),
        ({"total_bytes": "0"}, "bad-chunk"),
        ({"sha256": "00"}, "bad-chunk"),
        ({"chunk_sha256": "0" * 64}, "chunk-checksum"),
        ({"tensors": {"data": np.zeros(STRIDE - 1, np.uint8)}}, "bad-chunk"),
        ({"tensors": {"data": np.zeros(STRIDE // 4, np.float32)}}, "bad-chunk"),
        (
            {"tensors": {"data": np.zeros(STRIDE, np.uint8), "more": np.zeros(1, np.uint8)}},
            "bad-chunk",
        ),
    ],
)
def test_a_wrong_chunk_is_rejected_with_its_reason(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(WireError) as caught:
        chunks.read_chunk(forged(**changes))
    assert caught.value.reason == reason


def test_what_is_no_chunk_is_left_to_the_role() -> None:
    assert chunks.read_chunk(forged(kind="global")) is None
    assert chunks.read_chunk(b"") is None
    assert chunks.read_chunk(b"\xff" * 8 + b"{}") is None
    assert chunks.read_chunk(forged()[:20]) is None


def test_mangled_chunks_end_in_none_or_a_wire_error() -> None:
    rng = random.Random(3)
    valid = forged()
    for _ in range(2000):
        damaged = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(min(len(damaged), 700))] = rng.randrange(256)
        with contextlib.suppress(WireError):
            chunks.read_chunk(bytes(damaged[: rng.randint(0, len(damaged))]))


def test_a_chunk_that_disagrees_with_its_transfer_is_rejected() -> None:
    reassembler: Reassembler[int] = Reassembler(LIMITS)
    first, second, third = pieces()
    reassembler.add("t", first, 1)
    other = pieces(PAYLOAD + b"x")[1]
    [step] = reassembler.add("t", chunks.Chunk(**{**vars(other), "transfer": first.transfer}), 9)
    assert step.error is not None and step.error.reason == "chunk-mismatch" and step.receipts == [9]
    changed = bytes(first.data[:-1]) + b"\x00"
    twin = chunks.Chunk(
        **{
            **vars(first),
            "data": memoryview(changed),
            "chunk_sha256": hashlib.sha256(changed).hexdigest(),
        }
    )
    [step] = reassembler.add("t", twin, 10)
    assert step.error is not None and step.error.reason == "chunk-mismatch"
    # The transfer itself is unharmed.
    reassembler.add("t", second, 2)
    [done] = reassembler.add("t", third, 3)
    assert done.payload == PAYLOAD and sorted(done.receipts) == [1, 2, 3]


def test_a_payload_that_does_not_match_its_checksum_is_dropped() -> None:
    reassembler: Reassembler[int] = Reassembler(LIMITS)
    liar = [chunks.Chunk(**{**vars(c), "sha256": "0" * 64}) for c in pieces()]
    assert reassembler.add("t", liar[0], 1) == reassembler.add("t", liar[1], 2) == []
    [step] = reassembler.add("t", liar[2], 3)
    assert step.payload is None and step.error is not None
    assert step.error.reason == "chunk-checksum" and sorted(step.receipts) == [1, 2, 3]
    assert reassembler.held_bytes == 0


def test_memory_is_bounded_in_bytes_and_transfers() -> None:
    reassembler: Reassembler[int] = Reassembler(LIMITS)
    big = bytes(30_000)
    reassembler.add("a", pieces(big)[0], 1)
    assert reassembler.add("b", pieces(big)[0], 2) == []  # 60,000 held: the whole buffer
    [refused] = reassembler.add("c", pieces(big)[0], 3)
    assert refused.error is not None and refused.error.reason == "chunk-limit"
    assert reassembler.held_bytes <= LIMITS.buffer_bytes
    [oversized] = reassembler.add("d", pieces(bytes(50_001))[0], 4)
    assert oversized.error is not None and oversized.error.reason == "oversized"
    few: Reassembler[int] = Reassembler(
        ChunkLimits(max_payload_bytes=50_000, max_transfers=1, buffer_bytes=60_000, timeout_s=30)
    )
    few.add("a", pieces()[0], 1)
    second = pieces()
    [refused] = few.add("b", second[0], 2)
    assert refused.error is not None and refused.error.reason == "chunk-limit"
    # Later chunks of a refused transfer are let go without another rejection.
    [quiet] = few.add("b", second[1], 3)
    assert quiet.error is None and quiet.receipts == [3]


def test_a_whole_retained_message_drops_older_retained_leftovers_on_its_topic() -> None:
    reassembler: Reassembler[int] = Reassembler(LIMITS)
    stale = pieces(bytes(12_000))  # an older message of 3 chunks; index 2 was never overwritten
    reassembler.add("fl/global_model", stale[2], 1, retained=True)
    live = pieces(bytes(12_000))[0]
    reassembler.add("fl/global_model", live, 7)  # a live transfer is never a leftover
    new = pieces(bytes(8000))
    reassembler.add("fl/global_model", new[0], 2, retained=True)
    steps = reassembler.add("fl/global_model", new[1], 3, retained=True)
    assert [s.payload is not None for s in steps] == [True, False]
    assert steps[1].receipts == [1] and steps[1].error is None
    assert reassembler.transfers == 1


def test_the_buffer_must_hold_the_largest_message() -> None:
    with pytest.raises(ValueError, match="chunk_buffer_bytes"):
        WireSettings(max_payload_bytes=2 * 1024**3, chunk_buffer_bytes=1024**3)
    assert WireSettings(max_payload_bytes=400_000_000).max_payload_bytes == 400_000_000
