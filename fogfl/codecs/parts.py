"""Which of a model's tensors a codec codes, and where each sits in the model vector.

A codec codes the model's float32 tensors; every other tensor (integer counters, float64
buffers) travels verbatim. The coded tensors, flattened in C order and concatenated in
schema order, form the model vector: blockwise quantizers and top-k address values by
their position in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fogfl.errors import FogflError
from fogfl.wire import ModelSchema, TensorSpec

Float32Array = npt.NDArray[np.float32]
CODED_DTYPE = "float32"


@dataclass(frozen=True)
class Part:
    """One coded tensor: its name, shape, and its values' offset in the model vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class ModelParts:
    """A schema split into the coded tensors (`parts`) and the verbatim ones."""

    parts: tuple[Part, ...]
    verbatim: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, schema: ModelSchema) -> ModelParts:
        parts: list[Part] = []
        verbatim: list[TensorSpec] = []
        offset = 0
        for spec in schema.tensors:
            if spec.dtype == CODED_DTYPE:
                size = int(np.prod(spec.shape, dtype=np.int64))
                parts.append(Part(spec.name, spec.shape, offset, size))
                offset += size
            else:
                verbatim.append(spec)
        return cls(tuple(parts), tuple(verbatim))

    @property
    def num_values(self) -> int:
        """n, the length of the model vector."""
        return self.parts[-1].end if self.parts else 0


def checked_tensors(
    tensors: Mapping[str, npt.NDArray[Any]], schema: ModelSchema, what: str
) -> dict[str, npt.NDArray[Any]]:
    """`tensors` as C-contiguous arrays of the schema's dtypes, or FogflError naming what
    differs (an encoder's input comes from this process, so it is a bug, not a bad message)."""
    names = set(tensors)
    if names != set(schema.names):
        missing = sorted(set(schema.names) - names)[:3]
        unknown = sorted(names - set(schema.names))[:3]
        raise FogflError(
            f"{what} has {len(names)} tensors, the model {len(schema.tensors)} "
            f"(missing {missing}, unknown {unknown}); encode the model the schema describes"
        )
    checked = {}
    for spec in schema.tensors:
        array = tensors[spec.name]
        if tuple(array.shape) != spec.shape or str(array.dtype) != spec.dtype:
            raise FogflError(
                f"{what}: tensor {spec.name} is {array.dtype}{list(array.shape)}, the model's "
                f"is {spec.dtype}{list(spec.shape)}"
            )
        checked[spec.name] = array if array.flags.c_contiguous else array.copy(order="C")
    return checked


def flat(array: npt.NDArray[Any]) -> Float32Array:
    """A 1-D float32 view of a C-contiguous array (a copy only when it must cast)."""
    return np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
