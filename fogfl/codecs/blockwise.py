"""Blockwise absmax quantizers: `int8` and `int4`.

Each coded tensor is cut into blocks of `BLOCK[codec]` consecutive values (the last block
of a tensor may be shorter; blocks never span two tensors). Each block has a scale, its
values travel as round(value / scale) in −L…L (`LEVELS[codec]`: 127 for int8, 7 for int4),
and a receiver reads value ≈ level × scale.

int8's scale is a power of two, 2^e with e the smallest integer (at least −127) at which
the block's largest magnitude is at most 127 × 2^e (OCP microscaling's E8M0 scale, as a
signed byte), and its blocks hold 256 values; the exponents travel after the levels in
the one tensor `__int8__`: 8.03 bits a value, 25.1% of float32. This is what it takes
for ECG5000's whole update (10,085 values, ~600 bytes of envelope metadata) to stay
within 26% of float32's: with a float32 scale per 128 values (8.25 bits) and a tensor
of its own for the scales it came to 26.8%. The scales' bytes went from 332 to 44, and
their tensor entry, 68 bytes of header, is gone. Scaling by a power of two is exact both
ways. The cost: a block's largest level lies in 64…127 instead of at 127, and a larger
block's absmax is larger. Measured (docs/benchmarks.md): a real ECG5000 update 2.9e-3 →
3.2e-3 (its Adam steps share an exponent: block size makes no difference there),
Gaussian deltas 6.5e-3 → 1.04e-2 (9.1e-3 of that at 128 values), all far below int4's
5e-2, which leaves the federation's accuracy unchanged.

int4 keeps float32 scales, absmax / 7, and blocks of 64 values (4.5 bits a value, 14.1%):
with 7 levels a power of two doubles its error (5.0e-2 → 0.10 on that update). Smaller
blocks follow the values' magnitudes more closely at more bytes; blocks never span two
tensors, so fogfl's small task models, with many short tensors, each add partial blocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fogfl.codecs.parts import Float32Array, ModelParts, Part
from fogfl.errors import FogflError, WireError
from fogfl.wire import TensorSpec

BLOCK = {"int8": 256, "int4": 64}
LEVELS = {"int8": 127, "int4": 7}
LEVELS_NAME = {"int8": "__int8__", "int4": "__int4__"}
SCALES_NAME = "__scales__"  # int4's float32 scales
# Codecs whose scales are powers of two, their exponents after the levels in one tensor.
POWER_OF_TWO = frozenset({"int8"})
# The largest exponent a receiver accepts: −128 (a level an encoder never writes, a
# receiver must read) × 2^120 = −2^127 stays finite, × 2^121 would not.
MAX_EXPONENT = 120
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Below this a block's 1 / scale would overflow float32: such a block is sent as zeros.
_SMALLEST_ABSMAX = 2.0**-120
# The smallest exponent an encoder writes, −127, covers every block of a smaller absmax
# (2^127, what such a block is multiplied by, is still a float32).
_SMALLEST_POWER_ABSMAX = np.float32(127 * 2.0**-127)
_LARGEST_POWER_ABSMAX = 127 * 2.0**MAX_EXPONENT
_CHUNK_ROWS = 2048

Int8Array = npt.NDArray[np.int8]


def num_blocks(codec: str, parts: ModelParts) -> int:
    block = BLOCK[codec]
    return sum(-(-p.size // block) for p in parts.parts)


def layout(codec: str, parts: ModelParts) -> list[TensorSpec]:
    n, blocks = parts.num_values, num_blocks(codec, parts)
    if codec in POWER_OF_TWO:
        return [TensorSpec(LEVELS_NAME[codec], (n + blocks,), "int8")]
    return [
        TensorSpec(LEVELS_NAME[codec], ((n + 1) // 2,), "uint8"),
        TensorSpec(SCALES_NAME, (blocks,), "float32"),
    ]


def encode(
    codec: str, values: Mapping[str, Float32Array], parts: ModelParts, keep_decoded: bool
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Float32Array] | None]:
    """The wire tensors and, when `keep_decoded`, the values a receiver will read."""
    block, n, blocks = BLOCK[codec], parts.num_values, num_blocks(codec, parts)
    wire: dict[str, npt.NDArray[Any]]
    if codec in POWER_OF_TWO:
        # One tensor: the levels, then the exponents, written in place.
        packed = np.empty(n + blocks, np.int8)
        levels, wire_scales = packed[:n], packed[n:]
        wire = {LEVELS_NAME[codec]: packed}
    else:
        # int4 packs pairs: an odd count is padded with a zero level.
        levels = np.zeros(n + n % 2, np.int8)
        wire_scales = np.empty(blocks, np.float32)
        wire = {SCALES_NAME: wire_scales}
    for part, first in _first_blocks(parts, block):
        for value_rows, level_rows, scale_rows in _rows(
            part, first, block, values[part.name], levels, wire_scales
        ):
            _quantize(codec, value_rows, level_rows, scale_rows)
    if codec not in POWER_OF_TWO:
        wire = {LEVELS_NAME[codec]: pack_int4(levels), **wire}
    decoded: dict[str, Float32Array] | None = None
    if keep_decoded:
        scales = scale_values(codec, wire_scales)
        decoded = {
            part.name: _dequantize(part, first, block, levels, scales)
            for part, first in _first_blocks(parts, block)
        }
    return wire, decoded


def decode(
    codec: str, tensors: Mapping[str, npt.NDArray[Any]], parts: ModelParts, sender: str
) -> dict[str, Float32Array]:
    """Each coded tensor's values as flat float32; WireError for a scale that is NaN,
    Inf, negative or so large that a level times it overflows (int8: an exponent over
    120)."""
    levels, wire_scales = _levels_and_scales(codec, tensors, parts)
    if codec in POWER_OF_TWO:
        acceptable = wire_scales <= MAX_EXPONENT
        limits = f"exponents lie in −128…{MAX_EXPONENT}"
    else:
        limit = _FLOAT32_MAX / (LEVELS[codec] + 1)
        acceptable = (wire_scales >= 0) & (wire_scales <= limit)
        limits = f"scales lie in [0, {limit:.4g}]"
    if not acceptable.all():
        first = int(np.argmin(acceptable))
        if not np.isfinite(wire_scales[first]):
            raise WireError(
                "not-finite", f"{codec} scale of block {first} from {sender} is NaN or Inf"
            )
        raise WireError(
            "bad-scale",
            f"{codec} scale of block {first} from {sender} is {wire_scales[first]:g}; {limits}",
        )
    scales = scale_values(codec, wire_scales)
    block = BLOCK[codec]
    return {
        part.name: _dequantize(part, first, block, levels, scales)
        for part, first in _first_blocks(parts, block)
    }


def delta_bound(codec: str, tensors: Mapping[str, npt.NDArray[Any]], parts: ModelParts) -> float:
    """An upper bound of any decoded value's magnitude, from checked wire tensors."""
    _, wire_scales = _levels_and_scales(codec, tensors, parts)
    scales = scale_values(codec, wire_scales)
    return float(scales.max()) * (LEVELS[codec] + 1) if scales.size else 0.0


def scale_values(codec: str, wire_scales: npt.NDArray[Any]) -> Float32Array:
    """The blocks' scales as float32: 2^e for a power-of-two codec's exponents e (exact,
    subnormal ones included), the float32 scales themselves otherwise."""
    if codec not in POWER_OF_TWO:
        return np.asarray(wire_scales, dtype=np.float32)
    return np.ldexp(np.ones(wire_scales.size, np.float32), wire_scales.astype(np.int32))


def _levels_and_scales(
    codec: str, tensors: Mapping[str, npt.NDArray[Any]], parts: ModelParts
) -> tuple[Int8Array, npt.NDArray[Any]]:
    """The levels of the model vector and the blocks' scales as they travel."""
    if codec in POWER_OF_TWO:
        packed = tensors[LEVELS_NAME[codec]]
        return packed[: parts.num_values], packed[parts.num_values :]
    return unpack_int4(tensors[LEVELS_NAME[codec]]), tensors[SCALES_NAME]


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
    scales: npt.NDArray[Any],
) -> Iterator[tuple[Float32Array, Int8Array, npt.NDArray[Any]]]:
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


def _quantize(
    codec: str, values: Float32Array, levels: Int8Array, scales: npt.NDArray[Any]
) -> None:
    """Quantize rows of values into `levels` and `scales` (one scale a row), or raise
    FogflError for values no scale can carry."""
    absmax = _row_absmax(values)
    if not np.isfinite(absmax).all():
        raise FogflError(f"cannot encode the model as {codec}: it holds NaN or Inf values")
    if codec in POWER_OF_TWO:
        inverse = _power_of_two_scales(codec, absmax, scales)
    else:
        top = np.float32(LEVELS[codec])
        kept = absmax >= _SMALLEST_ABSMAX
        np.divide(absmax, top, out=scales)
        scales[~kept] = 0.0
        inverse = np.divide(top, absmax, out=np.zeros_like(absmax), where=kept)
    scaled = np.multiply(values, inverse[:, None])
    np.rint(scaled, out=levels, casting="unsafe")


def _power_of_two_scales(codec: str, absmax: Float32Array, exponents: Int8Array) -> Float32Array:
    """Write each row's exponent e into `exponents`, e the smallest integer (at least
    −127) with absmax ≤ 127 × 2^e; return 2^-e, which the row is multiplied by."""
    if float(absmax.max()) > _LARGEST_POWER_ABSMAX:
        raise FogflError(
            f"cannot encode the model as {codec}: it holds values beyond "
            f"±{_LARGEST_POWER_ABSMAX:.3g}; send it as bfloat16 or float32"
        )
    # absmax = mantissa × 2^k with mantissa in [0.5, 1): 127 × 2^(k − 7) covers it unless
    # mantissa × 128 > 127, when 2^(k − 6) is needed.
    mantissa, k = np.frexp(np.maximum(absmax, _SMALLEST_POWER_ABSMAX))
    e = k - 7 + (mantissa > np.float32(127 / 128))
    exponents[:] = e
    return np.ldexp(np.ones(absmax.size, np.float32), -e)


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
