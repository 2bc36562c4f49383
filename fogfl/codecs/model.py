"""A whole model through a codec: encode, the wire layout a receiver expects, decode.

`encode_model` turns a model's tensors into the named tensors and string metadata of one
fogfl message; `wire_layout` says, from the schema and the message's metadata alone,
exactly which tensors (names, dtypes, shapes) that message must carry, so a receiver can
check a header before it builds a single array; `decode_model` turns them back into the
model's tensors. docs/protocol.md ("Codecs") specifies every byte.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fogfl.codecs import blockwise, casts, topk, zstd
from fogfl.codecs.parts import Float32Array, ModelParts, checked_tensors, flat
from fogfl.codecs.reference import ErrorFeedback, Reference
from fogfl.errors import FogflError, WireError
from fogfl.wire import ModelSchema, Tensors, TensorSpec, metadata_count

CODECS = ("float32", "float16", "bfloat16", "int8", "int4", "topk")
LOSSY_CODECS = frozenset(CODECS) - {"float32"}
COMPRESSIONS = ("none", "zstd")
DEFAULT_TOPK_FRACTION = 0.05
_DIGEST = re.compile(r"[0-9a-f]{32}")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class CodecHeader:
    """The codec fields of a message's metadata (docs/protocol.md, "Codecs")."""

    codec: str
    compression: str = "none"
    delta_from: str | None = None  # the reference's digest: the tensors are a delta
    topk_k: int | None = None
    compressed_bytes: int | None = None

    def metadata(self) -> dict[str, str]:
        """The fields as strings; `compression` only when not `none`, its default."""
        fields = {"codec": self.codec}
        if self.compression != "none":
            fields["compression"] = self.compression
        if self.delta_from is not None:
            fields["delta_from"] = self.delta_from
        if self.topk_k is not None:
            fields["topk_k"] = str(self.topk_k)
        if self.compressed_bytes is not None:
            fields["compressed_bytes"] = str(self.compressed_bytes)
        return fields

    @classmethod
    def read(cls, meta: Mapping[str, str], parts: ModelParts) -> CodecHeader:
        """The codec fields of `meta`, checked against the model; WireError otherwise."""
        codec = meta.get("codec", "")
        if codec not in CODECS:
            raise WireError("bad-codec", f"unknown codec {_shown(codec)}; expected one of {CODECS}")
        compression = meta.get("compression", "none")
        if compression not in COMPRESSIONS:
            raise WireError(
                "bad-codec",
                f"unknown compression {_shown(compression)}; expected one of {COMPRESSIONS}",
            )
        delta_from = meta.get("delta_from")
        if delta_from is not None and not _DIGEST.fullmatch(delta_from):
            raise WireError(
                "bad-codec", f"delta_from={_shown(delta_from)} is not 32 lowercase hex digits"
            )
        if delta_from is not None and codec == "float32":
            raise WireError("bad-codec", "a float32 message carries the model, never a delta")
        if delta_from is None and codec == "topk":
            raise WireError("bad-codec", "a topk message must be a delta (delta_from missing)")
        n = parts.num_values
        topk_k = metadata_count(meta, "topk_k") if codec == "topk" else None
        if topk_k is not None and topk_k > n:
            raise WireError("bad-codec", f"topk_k={topk_k} exceeds the model's {n} coded values")
        header = cls(codec, compression, delta_from, topk_k)
        if compression == "none":
            return header
        sent = metadata_count(meta, "compressed_bytes")
        raw = zstd.raw_bytes(codec_layout(header, parts))
        if not 0 < sent < raw:
            raise WireError(
                "bad-codec",
                f"compressed_bytes={sent}; a zstd frame of this model is 1 to {raw - 1} bytes "
                "(smaller than the tensors it holds)",
            )
        return cls(codec, compression, delta_from, topk_k, sent)


@dataclass
class Encoded:
    """One model as a message carries it: named tensors plus the codec's metadata."""

    tensors: dict[str, npt.NDArray[Any]]
    metadata: dict[str, str]

    @property
    def nbytes(self) -> int:
        """The tensors' bytes: what the message carries beyond its header."""
        return sum(int(array.nbytes) for array in self.tensors.values())


def codec_layout(header: CodecHeader, parts: ModelParts) -> list[TensorSpec]:
    """The tensors a message of this codec carries before compression, in stream order:
    the codec's own tensors, then the verbatim ones (schema order)."""
    codec = header.codec
    if codec in casts.WIRE_DTYPES:
        coded = casts.layout(codec, parts)
    elif codec in blockwise.BLOCK:
        coded = blockwise.layout(codec, parts)
    else:
        coded = topk.layout(header.topk_k or 0)
    layout = coded + list(parts.verbatim)
    if len({spec.name for spec in layout}) != len(layout):
        raise WireError(
            "bad-codec",
            f"the model names a tensor like one of the {codec} codec's own "
            f"({sorted(s.name for s in coded)}); send it with float32, float16 or bfloat16",
        )
    return layout


def wire_layout(schema: ModelSchema, meta: Mapping[str, str]) -> ModelSchema:
    """Exactly the tensors a message with this metadata must carry, as a schema to check
    its header against; WireError when the codec fields are wrong for the model."""
    parts = ModelParts.of(schema)
    header = CodecHeader.read(meta, parts)
    if header.compressed_bytes is not None:
        return ModelSchema((TensorSpec(zstd.ZSTD_NAME, (header.compressed_bytes,), "uint8"),))
    return ModelSchema(tuple(codec_layout(header, parts)))


def encode_model(
    tensors: Mapping[str, npt.NDArray[Any]],
    schema: ModelSchema,
    codec: str = "float32",
    *,
    compression: str = "none",
    reference: Reference | None = None,
    feedback: ErrorFeedback | None = None,
    topk_fraction: float = DEFAULT_TOPK_FRACTION,
) -> Encoded:
    """The model `tensors` as a message carries them under `codec`.

    With a `reference` (the model training started from), a lossy codec sends the delta
    from it; `float32` always sends the model itself, so FedAvg stays exact. With
    `feedback`, the client's kept compression error is added to the delta first and the
    new error kept. `compression="zstd"` compresses the result, unless that is no smaller.
    """
    if codec not in CODECS:
        raise FogflError(f"unknown codec {codec!r}; use one of {', '.join(CODECS)}")
    if compression not in COMPRESSIONS:
        raise FogflError(f"unknown compression {compression!r}; use one of {COMPRESSIONS}")
    if isinstance(topk_fraction, bool) or not (
        isinstance(topk_fraction, float | int) and 0 < topk_fraction <= 1
    ):
        raise FogflError(f"topk_fraction must lie in (0, 1], got {topk_fraction!r}")
    model = checked_tensors(tensors, schema, "model to encode")
    parts = ModelParts.of(schema)
    delta = codec in LOSSY_CODECS and reference is not None
    if codec == "topk" and reference is None:
        raise FogflError("topk sends a delta: give the reference model training started from")
    if feedback is not None and codec in LOSSY_CODECS and reference is None:
        raise FogflError("error feedback corrects deltas: give the reference model as well")
    if reference is not None and reference.schema != schema:
        raise FogflError("the reference model has another schema than the model to encode")
    keep_decoded = feedback is not None and delta
    residuals = feedback.residuals(parts) if feedback is not None and delta else {}
    values: dict[str, Float32Array] = {}
    for part in parts.parts:
        value = flat(model[part.name])
        if delta and reference is not None:
            value = value - reference.coded(part.name)
            if part.name in residuals:
                value += residuals[part.name]
        values[part.name] = value
    header = CodecHeader(
        codec,
        delta_from=reference.digest if delta and reference is not None else None,
        topk_k=topk.count(topk_fraction, parts.num_values) if codec == "topk" else None,
    )
    # NaN, Inf or float16 overflow end in a FogflError below, not in numpy's warnings.
    with np.errstate(invalid="ignore", over="ignore"):
        if codec in casts.WIRE_DTYPES:
            coded, decoded = casts.encode(codec, values, parts, keep_decoded)
        elif codec in blockwise.BLOCK:
            coded, decoded = blockwise.encode(codec, values, parts, keep_decoded)
        else:
            coded, decoded = topk.encode(values, parts, header.topk_k or 0)
    if keep_decoded and feedback is not None and decoded is not None:
        feedback.keep(
            parts,
            {name: np.subtract(value, decoded[name], out=value) for name, value in values.items()},
        )
    wire = {**coded, **{spec.name: model[spec.name] for spec in parts.verbatim}}
    if compression == "zstd":
        frame = zstd.compress(wire, codec_layout(header, parts))
        if frame is not None:
            header = CodecHeader(
                codec, "zstd", header.delta_from, header.topk_k, compressed_bytes=frame.size
            )
            wire = {zstd.ZSTD_NAME: frame}
    return Encoded(wire, header.metadata())


def decode_model(
    tensors: Mapping[str, npt.NDArray[Any]],
    meta: Mapping[str, str],
    schema: ModelSchema,
    *,
    reference: Reference | None = None,
    sender: str = "the sender",
) -> Tensors:
    """The model's tensors (the schema's names, shapes and dtypes) from a message's tensors
    and metadata; WireError with the reason for anything that does not fit. A delta needs
    the `reference` its `delta_from` names. Float32 tensors come back as they arrived."""
    parts = ModelParts.of(schema)
    header = CodecHeader.read(meta, parts)
    _check(tensors, wire_layout(schema, meta), sender)
    layout = codec_layout(header, parts)
    if header.compressed_bytes is not None:
        tensors = zstd.decompress(tensors[zstd.ZSTD_NAME], layout, sender)
    codec = header.codec
    if codec in casts.WIRE_DTYPES:
        values = casts.decode(codec, tensors, parts, sender)
    elif codec in blockwise.BLOCK:
        values = blockwise.decode(codec, tensors, parts, sender)
    else:
        values = topk.decode(tensors, parts, sender)
    if header.delta_from is not None:
        _add_reference(values, header, tensors, parts, reference, schema, sender)
    model: Tensors = {}
    for spec in schema.tensors:
        if spec.dtype == "float32":
            model[spec.name] = values[spec.name].reshape(spec.shape)
        else:
            model[spec.name] = tensors[spec.name]
    return model


def _check(tensors: Mapping[str, npt.NDArray[Any]], layout: ModelSchema, sender: str) -> None:
    what = f"message from {sender}"
    expected = set(layout.names)
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))[:3]
        unknown = sorted(_shown(n) for n in set(tensors) - expected)[:3]
        raise WireError(
            "wrong-tensors",
            f"{what} carries {len(tensors)} tensors, its codec needs {len(expected)} "
            f"(missing {missing}, unknown {unknown})",
        )
    for spec in layout.tensors:
        array = tensors[spec.name]
        if str(array.dtype) != spec.dtype:
            raise WireError(
                "wrong-dtype", f"{what}: tensor {spec.name} is {array.dtype}, not {spec.dtype}"
            )
        if tuple(array.shape) != spec.shape:
            raise WireError(
                "wrong-shape",
                f"{what}: tensor {spec.name} has shape {list(array.shape)}, the model and codec "
                f"need {list(spec.shape)}",
            )


def _add_reference(
    values: dict[str, Float32Array],
    header: CodecHeader,
    tensors: Mapping[str, npt.NDArray[Any]],
    parts: ModelParts,
    reference: Reference | None,
    schema: ModelSchema,
    sender: str,
) -> None:
    """Turn decoded deltas into the model in place: value + reference (float32)."""
    if reference is None or reference.schema != schema or reference.digest != header.delta_from:
        held = "no reference" if reference is None else f"model {reference.digest[:12]}…"
        raise WireError(
            "wrong-reference",
            f"message from {sender} is a delta from model {(header.delta_from or '')[:12]}…, "
            f"this receiver holds {held}; was it trained from this round's model?",
        )
    overflow_possible = reference.absmax + _delta_bound(header.codec, tensors, parts) > _FLOAT32_MAX
    for part in parts.parts:
        value = values[part.name]
        with np.errstate(over="ignore"):
            np.add(value, reference.coded(part.name), out=value)
        if overflow_possible and not np.isfinite(value).all():
            raise WireError(
                "not-finite",
                f"tensor {part.name} from {sender} overflows once added to its reference",
            )


def _delta_bound(codec: str, tensors: Mapping[str, npt.NDArray[Any]], parts: ModelParts) -> float:
    """An upper bound of any decoded delta's magnitude, from the wire tensors alone."""
    if codec in blockwise.BLOCK:
        return blockwise.delta_bound(codec, tensors, parts)
    if codec == "topk":
        kept = tensors[topk.VALUES_NAME]
        return float(np.abs(kept).max()) if kept.size else 0.0
    if codec == "float16":
        return float(np.finfo(np.float16).max)
    return math.inf


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
