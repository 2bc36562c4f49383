"""The optional lossless stage: the codec's tensors as one zstd frame.

The bytes of every tensor the codec would send (its layout, in layout order, each in C
order, little-endian) are concatenated and compressed into a single zstd frame, sent as
the one tensor `__zstd__` (uint8). The frame must state its content size, which must be
exactly what the layout needs: a receiver knows that size from the schema before it
inflates anything, so no frame can make it allocate more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from fogfl.codecs.reference import little_endian_bytes
from fogfl.errors import WireError
from fogfl.wire import TensorSpec

ZSTD_NAME = "__zstd__"
LEVEL = 3  # zstd's default: most of the ratio of higher levels at several times the speed


def raw_bytes(layout: Sequence[TensorSpec]) -> int:
    """The bytes of the layout's tensors, uncompressed."""
    return sum(math.prod(spec.shape) * np.dtype(spec.dtype).itemsize for spec in layout)


def compress(
    tensors: Mapping[str, npt.NDArray[Any]], layout: Sequence[TensorSpec]
) -> npt.NDArray[np.uint8] | None:
    """One zstd frame of the layout's tensors, or None when it would not be smaller."""
    raw = raw_bytes(layout)
    if raw == 0:
        return None
    stream = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True).compressobj(size=raw)
    pieces = [stream.compress(little_endian_bytes(tensors[spec.name])) for spec in layout]
    pieces.append(stream.flush())
    frame = b"".join(pieces)
    if len(frame) >= raw:
        return None
    return np.frombuffer(frame, dtype=np.uint8)


def decompress(
    frame: npt.NDArray[np.uint8], layout: Sequence[TensorSpec], sender: str
) -> dict[str, npt.NDArray[Any]]:
    """The layout's tensors from one frame; WireError ``oversized`` for a frame stating
    more bytes than the layout needs, ``bad-compression`` for any other bad frame."""
    raw = raw_bytes(layout)
    what = f"zstd frame from {sender}"
    data_in = np.ascontiguousarray(frame).reshape(-1).data
    try:
        stated = zstandard.frame_content_size(data_in)
    except zstandard.ZstdError:
        raise WireError("bad-compression", f"{what} has no valid zstd frame header") from None
    if stated == -1:
        raise WireError("bad-compression", f"{what} does not state its content size")
    if stated > raw:
        raise WireError(
            "oversized", f"{what} inflates to {stated} bytes, the model's tensors need {raw}"
        )
    if stated != raw:
        raise WireError(
            "bad-compression", f"{what} inflates to {stated} bytes, the model's tensors need {raw}"
        )
    try:
        data = zstandard.ZstdDecompressor().decompress(
            data_in, max_output_size=raw, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise WireError("bad-compression", f"{what} does not inflate: {str(exc)[:120]}") from None
    if len(data) != raw:
        raise WireError(
            "bad-compression", f"{what} inflated to {len(data)} bytes, not the stated {raw}"
        )
    tensors: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for spec in layout:
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        count = math.prod(spec.shape)
        tensors[spec.name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(
            spec.shape
        )
        offset += count * dtype.itemsize
    return tensors
