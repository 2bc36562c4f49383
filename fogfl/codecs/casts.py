"""Codecs that cast each value: `float32` (exact), `float16` and `bfloat16`.

Each coded tensor travels under its own name and shape: as float32 (`F32`), as IEEE
half precision (`F16`), or as bfloat16 bit patterns (`U16`: the upper 16 bits of the
float32 value, rounded to nearest, ties to even). numpy has no bfloat16, so the
rounding is done on the float32 bits.

numpy's float16 casts run at ~0.5 GB/s on these machines; a process that has loaded torch
(clients and the server train or build the model) casts large tensors with torch's
F16C-vectorised conversion instead, ~3 GB/s. Both round to nearest, ties to even, and give
the same bits for every finite value (NaN and Inf are refused before or after either).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fogfl.codecs.parts import Float32Array, ModelParts
from fogfl.errors import FogflError, WireError
from fogfl.wire import TensorSpec

WIRE_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
_FLOAT16_EXPONENT = np.uint16(0x7C00)
_BFLOAT16_EXPONENT = np.uint16(0x7F80)
_MAGNITUDE = np.uint16(0x7FFF)
_TORCH_CAST_MIN = 1 << 14  # values: below this, torch's call costs more than it saves


def layout(codec: str, parts: ModelParts) -> list[TensorSpec]:
    return [TensorSpec(p.name, p.shape, WIRE_DTYPES[codec]) for p in parts.parts]


def encode(
    codec: str, values: Mapping[str, Float32Array], parts: ModelParts, keep_decoded: bool
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Float32Array] | None]:
    """The wire tensors and, when `keep_decoded`, the values a receiver will read."""
    tensors: dict[str, npt.NDArray[Any]] = {}
    decoded: dict[str, Float32Array] = {}
    for part in parts.parts:
        value = values[part.name]
        if codec == "float32":
            tensors[part.name], decoded[part.name] = value.reshape(part.shape), value
        elif codec == "float16":
            half = _cast(value, np.float16)
            if _overflows(half.view(np.uint16), _FLOAT16_EXPONENT):
                raise FogflError(
                    f"tensor {part.name} has values beyond float16's range (±65504), or NaN; "
                    "use bfloat16 or float32 for this model"
                )
            tensors[part.name] = half.reshape(part.shape)
            if keep_decoded:
                decoded[part.name] = _cast(half, np.float32)
        else:
            bits = to_bfloat16(value)
            if _overflows(bits, _BFLOAT16_EXPONENT):
                raise FogflError(f"tensor {part.name} holds NaN or Inf; it cannot be encoded")
            tensors[part.name] = bits.reshape(part.shape)
            if keep_decoded:
                decoded[part.name] = from_bfloat16(bits)
    return tensors, decoded if keep_decoded else None


def _cast(array: npt.NDArray[Any], dtype: type[np.floating[Any]]) -> npt.NDArray[Any]:
    """`array` as `dtype` (float16 ↔ float32), with torch's conversion where it is loaded."""
    torch = sys.modules.get("torch")
    if torch is None or array.size < _TORCH_CAST_MIN:
        return array.astype(dtype)
    target = torch.float16 if dtype is np.float16 else torch.float32
    with warnings.catch_warnings():
        # Wire tensors are read-only views of the payload; torch only reads them here.
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(np.ascontiguousarray(array))
    result: npt.NDArray[Any] = source.to(target).numpy()
    return result


def decode(
    codec: str, tensors: Mapping[str, npt.NDArray[Any]], parts: ModelParts, sender: str
) -> dict[str, Float32Array]:
    """Each coded tensor's values as flat float32; WireError ``not-finite`` on NaN or Inf."""
    values: dict[str, Float32Array] = {}
    for part in parts.parts:
        wire = tensors[part.name].reshape(-1)
        if codec == "float32":
            if not np.isfinite(wire).all():
                raise _not_finite(part.name, sender)
            values[part.name] = wire
        elif codec == "float16":
            if _overflows(wire.view(np.uint16), _FLOAT16_EXPONENT):
                raise _not_finite(part.name, sender)
            values[part.name] = _cast(wire, np.float32)
        else:
            if _overflows(wire, _BFLOAT16_EXPONENT):
                raise _not_finite(part.name, sender)
            values[part.name] = from_bfloat16(wire)
    return values


def to_bfloat16(values: Float32Array) -> npt.NDArray[np.uint16]:
    """bfloat16 bit patterns of finite float32 values, rounded to nearest, ties to even;
    a value that would round up past bfloat16's largest finite one is truncated to it."""
    bits = values.view(np.uint32)
    lowest_kept = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + lowest_kept) >> np.uint32(16)).astype(np.uint16)
    overflowed = (rounded & _MAGNITUDE) >= _BFLOAT16_EXPONENT
    if overflowed.any():
        rounded[overflowed] = (bits[overflowed] >> np.uint32(16)).astype(np.uint16)
    return rounded


def from_bfloat16(bits: npt.NDArray[np.uint16]) -> Float32Array:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _overflows(bits: npt.NDArray[np.uint16], exponent: np.uint16) -> bool:
    """Whether any 16-bit float pattern has an all-ones exponent (Inf or NaN)."""
    return bool(bits.size) and bool(np.max(bits & _MAGNITUDE) >= exponent)


def _not_finite(name: str, sender: str) -> WireError:
    return WireError("not-finite", f"tensor {name} from {sender} holds NaN or Inf")
