"""Hostile chunks never reach a role as anything but a rejection: a session fed mangled,
forged, oversized and stray chunks among the real ones (without a broker) hands the role
the real message once, whole, records every other with its reason, and holds no more than
its limits allow."""

from __future__ import annotations

import hashlib
import logging
import random

import numpy as np
from safetensors.numpy import save as safetensors_save

from fogfl import chunks
from fogfl.config import MqttSettings, WireSettings
from fogfl.mqtt import MqttSession, Received

TOPIC = "fl/updates/north/north-01"
WIRE = WireSettings(
    chunk_bytes=4096, max_payload_bytes=64 * 1024, chunk_buffer_bytes=128 * 1024, chunk_transfers=4
)
REASONS = {
    "bad-chunk",
    "bad-version",
    "chunk-checksum",
    "chunk-mismatch",
    "chunk-limit",
    "oversized",
}


def forged_chunk(total: int, index: int = 0, stride: int = 4096) -> bytes:
    """A well-formed chunk of a transfer that claims `total` bytes."""
    data = np.zeros(min(stride, total - index * stride), np.uint8)
    meta = {
        "fogfl": "1",
        "kind": "chunk",
        "transfer": random.Random(total).randbytes(16).hex(),
        "index": str(index),
        "count": str(chunks.chunk_count(total, stride)),
        "chunk_bytes": str(stride),
        "total_bytes": str(total),
        "sha256": "0" * 64,
        "chunk_sha256": hashlib.sha256(data).hexdigest(),
    }
    return safetensors_save({"data": data}, metadata=meta)


def test_a_session_fed_hostile_chunks_hands_over_only_the_real_message() -> None:
    rng = random.Random(11)
    session = MqttSession(
        MqttSettings(), "hostile-chunks", logging.getLogger("test"), persistent=False, wire=WIRE
    )
    payload = rng.randbytes(10 * 4096 + 7)
    real = list(chunks.split(payload, WIRE.chunk_bytes))
    stream: list[tuple[str, bytes]] = []
    for index, chunk in enumerate(real):
        for _ in range(30):  # mangled copies of the real chunks, on the real topics
            damaged = bytearray(chunk)
            for _ in range(rng.randint(1, 6)):
                damaged[rng.randrange(min(len(damaged), 800))] = rng.randrange(256)
            stream.append((chunks.chunk_topic(TOPIC, index), bytes(damaged)))
        stream.append((chunks.chunk_topic(TOPIC, (index + 1) % len(real)), chunk))  # misplaced
    stream += [(chunks.chunk_topic(TOPIC, 0), forged_chunk(total)) for total in (10**12, 60_000)]
    stream += [
        (chunks.chunk_topic(f"fl/updates/north/x{n}", 0), forged_chunk(50_000 + n))
        for n in range(6)
    ]
    rng.shuffle(stream)
    # The real transfer opens first (whoever comes first holds the buffer); the rest of its
    # chunks come after the junk.
    stream.insert(0, (chunks.chunk_topic(TOPIC, 0), real[0]))
    stream += [(chunks.chunk_topic(TOPIC, index), chunk) for index, chunk in enumerate(real)]
    for topic, data in stream:
        session._inbox.put(Received(topic, data, False))
    handed_over = []
    while (message := session.receive(timeout=0)) is not None:
        handed_over.append(message)
        assert session._reassembler.held_bytes <= WIRE.chunk_buffer_bytes
    whole = [m for m in handed_over if m.topic == TOPIC]
    assert [bytes(m.payload) for m in whole] == [payload]
    # Whatever else came out is a message the role rejects itself: never a chunk's remains.
    assert all(
        not m.parts and chunks.read_chunk(m.payload) is None
        for m in handed_over
        if m.topic != TOPIC
    )
    counts = session.rejections.counts
    assert set(counts) <= REASONS and {"bad-chunk", "chunk-limit", "oversized"} <= set(counts)
