"""Top-k sparsification: the k largest-magnitude entries of the model vector.

They travel as their positions in the model vector (`__indices__`, int32, strictly
increasing; every model fogfl accepts has fewer than 2³¹ coded values) and their float32
values (`__values__`); every other entry reads as zero. Top-k codes deltas only: the
entries it drops are small changes, not zero weights. With error feedback the dropped
entries are sent in later rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fogfl.codecs.parts import Float32Array, ModelParts
from fogfl.errors import FogflError, WireError
from fogfl.wire import TensorSpec

INDICES_NAME = "__indices__"
VALUES_NAME = "__values__"
MAX_CODED_VALUES = 2**31 - 1


def count(fraction: float, num_values: int) -> int:
    """k for a fraction of n values: ⌈fraction · n⌉, at least 1 of a non-empty model."""
    return min(num_values, max(1 if num_values else 0, math.ceil(fraction * num_values)))


def layout(k: int) -> list[TensorSpec]:
    return [TensorSpec(INDICES_NAME, (k,), "int32"), TensorSpec(VALUES_NAME, (k,), "float32")]


def encode(
    values: Mapping[str, Float32Array], parts: ModelParts, k: int
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Float32Array]]:
    """The wire tensors and the values a receiver will read (zero but for the k sent)."""
    n = parts.num_values
    if n > MAX_CODED_VALUES:
        raise FogflError(f"top-k addresses at most {MAX_CODED_VALUES} values, the model has {n}")
    vector = (
        np.concatenate([values[p.name] for p in parts.parts])
        if parts.parts
        else np.zeros(0, np.float32)
    )
    if k < n:
        indices = np.argpartition(np.abs(vector), n - k)[n - k :]
        indices.sort()
    else:
        indices = np.arange(n)
    kept = vector[indices]
    if not np.isfinite(kept).all():
        raise FogflError("cannot encode the model as topk: it holds NaN or Inf values")
    wire_indices = indices.astype(np.int32)
    return {INDICES_NAME: wire_indices, VALUES_NAME: kept}, _scatter(wire_indices, kept, parts)


def decode(
    tensors: Mapping[str, npt.NDArray[Any]], parts: ModelParts, sender: str
) -> dict[str, Float32Array]:
    """Each coded tensor's values as flat float32; WireError ``bad-index`` unless the
    indices are strictly increasing positions in the model vector."""
    indices, kept = tensors[INDICES_NAME], tensors[VALUES_NAME]
    n = parts.num_values
    if indices.size:
        wide = indices.astype(np.int64)
        falls = np.flatnonzero(np.diff(wide) <= 0)
        if wide[0] < 0 or falls.size or wide[-1] >= n:
            at = 0 if wide[0] < 0 else int(falls[0]) + 1 if falls.size else wide.size - 1
            raise WireError(
                "bad-index",
                f"topk indices from {sender} must rise strictly within [0, {n}); "
                f"index {int(wide[at])} at position {at} does not",
            )
    if not np.isfinite(kept).all():
        raise WireError("not-finite", f"topk values from {sender} hold NaN or Inf")
    return _scatter(indices, kept, parts)


def _scatter(
    indices: npt.NDArray[np.int32], kept: Float32Array, parts: ModelParts
) -> dict[str, Float32Array]:
    vector = np.zeros(parts.num_values, dtype=np.float32)
    vector[indices] = kept
    return {p.name: vector[p.offset : p.end] for p in parts.parts}
