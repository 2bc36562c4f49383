"""Blockwise absmax quantizers: `int8` and `int4`.

Each coded tensor is cut into blocks of `BLOCK[codec]` consecutive values (the last block
of a tensor may be shorter; blocks never span two tensors). A block's scale is its
largest magnitude over `LEVELS[codec]` (127 for int8, 7 for int4), its values travel as
round(value / scale), and a receiver reads value ≈ level × scale.

Block sizes: 128 values for int8 (a float32 scale per 128 bytes: 8.25 bits a value,
25.8% of float32), 64 for int4 (4.5 bits a value, 14.1%). Smaller blocks follow the
values' magnitudes more closely at more bytes; these keep int8 within the 26% budget
for fogfl's small task models too, whose many short tensors each add a partial block.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fogfl.codecs.parts import Float32Array, ModelParts, Part
from fogfl.errors import FogflError, WireError
from fogfl.wire import TensorSpec

BLOCK = {"int8": 128, "int4": 64}
LEVELS = {"int8": 127, "int4": 7}
LEVELS_NAME = {"int8": "__int8__", "int4": "__int4__"}
SCALES_NAME = "__scales__"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Below this a block's 1 / scale would overflow float32: such a block is sent as zeros.
_SMALLEST_ABSMAX = 2.0**-120
_CHUNK_ROWS = 2048

Int8Array = npt.NDArray[np.int8]


def num_blocks(codec: str, parts: ModelParts) -> int:
    block = BLOCK[codec]
    return sum(-(-p.size // block) for p in parts.parts)


def layout(codec: str, parts: ModelParts) -> list[TensorSpec]:
    n = parts.num_values
    levels = (
        TensorSpec(LEVELS_NAME[codec], (n,), "int8")
        if codec == "int8"
        else TensorSpec(LEVELS_NAME[codec], ((n + 1) // 2,), "uint8")
    )
    return [levels, TensorSpec(SCALES_NAME, (num_blocks(codec, parts),), "float32")]


def max_scale(codec: str) -> float:
    """The largest scale a receiver accepts: the most negative level (−128 or −8, which
    an encoder never writes but a receiver must read) times it stays finite."""
    return _FLOAT32_MAX / (LEVELS[codec] + 1)


def encode(
    codec: str, values: Mapping[str, Float32Array], parts: ModelParts, keep_decoded: bool
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Float32Array] | None]:
    """The wire tensors and, when `keep_decoded`, the values a receiver will read."""
    block, top = BLOCK[codec], LEVELS[codec]
    # int4 packs pairs: an odd count is padded with a zero level.
    levels = np.zeros(parts.num_values + parts.num_values % 2 * (codec == "int4"), np.int8)
    scales = np.empty(num_blocks(codec, parts), dtype=np.float32)
    decoded: dict[str, Float32Array] | None = {} if keep_decoded else None
    for part, first in _first_blocks(parts, block):
        for value_rows, level_rows, scale_rows in _rows(
            part, first, block, values[part.name], levels, scales
        ):
            _quantize(value_rows, level_rows, scale_rows, top)
        if decoded is not None:
            decoded[part.name] = _dequantize(part, first, block, levels, scales)
    if not np.isfinite(scales).all():
        raise FogflError(f"cannot encode the model as {codec}: it holds NaN or Inf values")
    wire_levels: npt.NDArray[Any] = levels if codec == "int8" else pack_int4(levels)
    return {LEVELS_NAME[codec]: wire_levels, SCALES_NAME: scales}, decoded


def decode(
    codec: str, tensors: Mapping[str, npt.NDArray[Any]], parts: ModelParts, sender: str
) -> dict[str, Float32Array]:
    """Each coded tensor's values as flat float32; WireError for a scale that is NaN,
    Inf, negative or so large that a level times it overflows."""
    scales = tensors[SCALES_NAME]
    limit = max_scale(codec)
    acceptable = (scales >= 0) & (scales <= limit)
    if not acceptable.all():
        first = int(np.argmin(acceptable))
        if not np.isfinite(scales[first]):
            raise WireError(
                "not-finite", f"{codec} scale of block {first} from {sender} is NaN or Inf"
            )
        raise WireError(
            "bad-scale",
            f"{codec} scale of block {first} from {sender} is {float(scales[first]):g}; "
            f"scales lie in [0, {limit:.4g}]",
        )
    wire_levels = tensors[LEVELS_NAME[codec]]
    levels = wire_levels if codec == "int8" else unpack_int4(wire_levels)
    block = BLOCK[codec]
    return {
        part.name: _dequantize(part, first, block, levels, scales)
        for part, first in _first_blocks(parts, block)
    }


def pack_int4(levels: Int8Array) -> npt.NDArray[np.uint8]:
    """Two levels a byte: even positions in the low nibble, odd in the high, each as a
    4-bit two's complement; `levels` has even length."""
    low = levels[0::2] & np.int8(0x0F)
    high = levels[1::2] << np.int8(4)
    return (low | high).view(np.uint8)


def unpack_int4(packed: npt.NDArray[np.uint8]) -> Int8Array:
    """The levels of `pack_int4`, sign-extended, both nibbles of every byte."""
    signed = packed.view(np.int8)
    levels = np.empty(2 * signed.size, dtype=np.int8)
    levels[0::2] = (signed << np.int8(4)) >> np.int8(4)
    levels[1::2] = signed >> np.int8(4)
    return levels


def _first_blocks(parts: ModelParts, block: int) -> Iterator[tuple[Part, int]]:
    """Each coded tensor with the index of its first block."""
    first = 0
    for part in parts.parts:
        yield part, first
        first += -(-part.size // block)


def _rows(
    part: Part,
    first: int,
    block: int,
    values: Float32Array,
    levels: Int8Array,
    scales: Float32Array,
) -> Iterator[tuple[Float32Array, Int8Array, Float32Array]]:
    """One tensor's values, levels and scales as rows of whole blocks (in chunks of at
    most _CHUNK_ROWS rows, which stay in cache through every step), then its shorter last
    block, if it has one."""
    whole, rest = divmod(part.size, block)
    own_levels = levels[part.offset : part.end]
    for row in range(0, whole, _CHUNK_ROWS):
        rows = min(_CHUNK_ROWS, whole - row)
        begin, end = row * block, (row + rows) * block
        yield (
            values[begin:end].reshape(rows, block),
            own_levels[begin:end].reshape(rows, block),
            scales[first + row : first + row + rows],
        )
    if rest:
        cut = whole * block
        yield (
            values[cut:].reshape(1, rest),
            own_levels[cut:].reshape(1, rest),
            scales[first + whole : first + whole + 1],
        )


def _quantize(values: Float32Array, levels: Int8Array, scales: Float32Array, top: int) -> None:
    """Quantize rows of values into `levels` and `scales` (one scale a row)."""
    absmax = _row_absmax(values)
    kept = absmax >= _SMALLEST_ABSMAX
    np.divide(absmax, np.float32(top), out=scales)
    scales[absmax < _SMALLEST_ABSMAX] = 0.0  # not NaN: encode() refuses a NaN scale
    inverse = np.divide(np.float32(top), absmax, out=np.zeros_like(absmax), where=kept)
    scaled = np.multiply(values, inverse[:, None])
    np.rint(scaled, out=levels, casting="unsafe")


def _row_absmax(values: Float32Array) -> Float32Array:
    """max |value| of each row. Rows of a power-of-two width fold in halves: elementwise
    maxima of wide slices are several times faster in numpy than a reduction along short
    rows."""
    width = values.shape[1]
    if width & (width - 1):
        return np.maximum(values.max(axis=1), -values.min(axis=1))
    folded = np.abs(values)
    while width > 1:
        width //= 2
        np.maximum(folded[:, :width], folded[:, width : 2 * width], out=folded[:, :width])
    return folded[:, 0].copy()


def _dequantize(
    part: Part, first: int, block: int, levels: Int8Array, scales: Float32Array
) -> Float32Array:
    """level × scale (a float32 product) for every value of one coded tensor."""
    out = np.empty(part.size, dtype=np.float32)
    for out_rows, level_rows, scale_rows in _rows(part, first, block, out, levels, scales):
        np.multiply(level_rows, scale_rows[:, None], out=out_rows)
    return out
