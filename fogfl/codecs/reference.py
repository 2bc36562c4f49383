"""The reference of a delta, and a client's error feedback.

A lossy update travels as a delta from the model the client started training from (the
round's global model; under edge rounds, the region model), exactly as the receiver
decoded that model. The delta's metadata names the reference by digest, so a receiver
holding another model rejects the update instead of adding it to the wrong weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from fogfl.codecs.parts import Float32Array, ModelParts, checked_tensors, flat
from fogfl.wire import ModelSchema

DIGEST_BYTES = 16  # BLAKE2b-128: 32 hexadecimal characters in the metadata


class Reference:
    """A model that deltas are taken from; `digest` identifies it on the wire."""

    def __init__(self, tensors: Mapping[str, npt.NDArray[Any]], schema: ModelSchema) -> None:
        self.schema = schema
        self.tensors = checked_tensors(tensors, schema, "reference model")
        self.parts = ModelParts.of(schema)

    @cached_property
    def digest(self) -> str:
        """BLAKE2b-128 of every tensor's little-endian bytes, in schema order, as hex."""
        hasher = hashlib.blake2b(digest_size=DIGEST_BYTES)
        for name in self.schema.names:
            hasher.update(little_endian_bytes(self.tensors[name]))
        return hasher.hexdigest()

    @cached_property
    def absmax(self) -> float:
        """The largest magnitude among the coded values (bounds what a delta can add)."""
        return max(
            (float(np.max(np.abs(self.coded(p.name)))) for p in self.parts.parts if p.size),
            default=0.0,
        )

    def coded(self, name: str) -> Float32Array:
        """A coded tensor's values as a flat float32 view."""
        return flat(self.tensors[name])


def little_endian_bytes(array: npt.NDArray[Any]) -> memoryview:
    """The bytes of an array as the wire carries them: C order, little-endian."""
    wire_order = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return wire_order.view(np.uint8).reshape(-1).data


class ErrorFeedback:
    """A client's compression error so far: added to its next update before coding, so
    what one round's codec dropped is sent in a later round instead of being lost.

    Kept per coded tensor; a residual for another model (other tensor names or shapes)
    is dropped, and the client starts again from zero.
    """

    def __init__(self) -> None:
        self._residual: dict[str, Float32Array] = {}
        self._parts: ModelParts | None = None

    def residuals(self, parts: ModelParts) -> dict[str, Float32Array]:
        """The residual of each coded tensor of this model (none before its first round)."""
        return self._residual if self._parts == parts else {}

    def keep(self, parts: ModelParts, residual: dict[str, Float32Array]) -> None:
        """Remember this round's compression error (sent minus received) per tensor."""
        self._parts = parts
        self._residual = residual

    def reset(self) -> None:
        self._residual = {}
        self._parts = None

    @property
    def norm(self) -> float:
        """‖residual‖₂ over the whole model vector (0 before the first lossy round)."""
        return float(
            np.sqrt(sum(float(np.dot(r.astype(np.float64), r)) for r in self._residual.values()))
        )
