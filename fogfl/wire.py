"""The wire envelope: every fogfl message is a safetensors file with string metadata.

The tensors are the model's, keyed by state-dict name; the metadata tags the message
(protocol, kind, run, round, sender, region, num_examples, codec) and carries JSON fields
(metrics, contributors, config, schema). `docs/protocol.md` is the specification; this
module is its reference implementation. Decoding never trusts the sender: every field,
offset, shape, dtype and value is checked, and any fault raises `WireError`.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save as safetensors_save

from fogfl import PROTOCOL_VERSION
from fogfl.errors import WireError

Kind = Literal["update", "partial", "global", "round", "evaluation", "region"]
Codec = Literal["float32", "float16"]
KINDS: tuple[str, ...] = get_args(Kind)
CODECS: tuple[str, ...] = get_args(Codec)
Tensors = dict[str, npt.NDArray[Any]]

_HEADER_LENGTH = struct.Struct("<Q")
_MAX_HEADER_BYTES = 16 * 1024 * 1024
_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and numpy dtype of one model tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ModelSchema:
    """The model's tensors in state-dict order: what every message must carry."""

    tensors: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, tensors: Mapping[str, npt.NDArray[Any]]) -> ModelSchema:
        return cls(tuple(TensorSpec(n, tuple(a.shape), str(a.dtype)) for n, a in tensors.items()))

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.tensors]

    @property
    def num_values(self) -> int:
        return sum(math.prod(spec.shape) for spec in self.tensors)

    def to_json(self) -> str:
        return json.dumps([[s.name, list(s.shape), s.dtype] for s in self.tensors])

    @classmethod
    def from_json(cls, text: str) -> ModelSchema:
        try:
            rows = json.loads(text)
            return cls(
                tuple(TensorSpec(str(n), tuple(int(d) for d in s), str(t)) for n, s, t in rows)
            )
        except (ValueError, TypeError) as exc:
            raise WireError("bad-schema", f"model schema is not a valid list: {exc}") from None

    def check(self, tensors: Mapping[str, npt.NDArray[Any]], what: str) -> None:
        """Raise WireError unless `tensors` has exactly this schema's names and shapes."""
        if len(tensors) != len(self.tensors) or set(tensors) != set(self.names):
            missing = sorted(set(self.names) - set(tensors))
            unknown = sorted(set(tensors) - set(self.names))
            raise WireError(
                "wrong-tensors",
                f"{what} has {len(tensors)} tensors, the model has {len(self.tensors)}"
                f" (missing {missing[:3]}, unknown {unknown[:3]}); is it running another task?",
            )
        for spec in self.tensors:
            shape = tuple(tensors[spec.name].shape)
            if shape != spec.shape:
                raise WireError(
                    "wrong-shape",
                    f"{what}: tensor {spec.name} has shape {list(shape)}, the model has "
                    f"{list(spec.shape)}; is it running another model?",
                )

    def ordered(self, tensors: Mapping[str, npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        return [tensors[name] for name in self.names]

    def named(self, arrays: Iterable[npt.NDArray[Any]]) -> Tensors:
        """Arrays in this schema's order, keyed by name and cast to its dtypes (strategies
        such as FedAdam compute in float64)."""
        arrays = list(arrays)
        if len(arrays) != len(self.tensors):
            raise WireError(
                "wrong-tensors", f"got {len(arrays)} arrays, the model has {len(self.tensors)}"
            )
        return {
            spec.name: np.asarray(array, dtype=spec.dtype)
            for spec, array in zip(self.tensors, arrays, strict=True)
        }


@dataclass
class Envelope:
    """One fogfl message: who sent what for which run and round, with the tensors.

    Kind-specific fields: `metrics` (update, partial, evaluation), `contributors` and
    `stats` (partial), `config` and `schema` (global, round), `final` (global, round, partial),
    `edge_round` (update, region: which of the round's edge rounds, from 1).
    """

    kind: Kind
    run_id: str
    round: int
    sender: str
    region: str = ""
    num_examples: int = 0
    edge_round: int = 1
    tensors: Tensors = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    contributors: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    final: bool = False
    schema: ModelSchema | None = None
    codec: Codec = "float32"
    sent_at: float = 0.0
    payload_bytes: int = 0


def encode(message: Envelope, codec: Codec | None = None) -> bytes:
    """Serialise `message` as safetensors bytes; float32 tensors are cast per `codec`."""
    chosen = codec or message.codec
    if chosen not in CODECS:
        raise WireError("bad-codec", f"unknown codec {chosen!r}; use one of {CODECS}")
    metadata = {
        "fogfl": PROTOCOL_VERSION,
        "kind": message.kind,
        "run_id": message.run_id,
        "round": str(message.round),
        "edge_round": str(message.edge_round),
        "sender": message.sender,
        "region": message.region,
        "num_examples": str(message.num_examples),
        "codec": chosen,
        "sent_at": repr(message.sent_at or time.time()),
        "final": "true" if message.final else "false",
        "metrics": json.dumps(message.metrics),
        "contributors": json.dumps(message.contributors),
        "config": json.dumps(message.config),
        "stats": json.dumps(message.stats),
    }
    if message.schema is not None:
        metadata["schema"] = message.schema.to_json()
    tensors = {name: _to_codec(array, chosen) for name, array in message.tensors.items()}
    return safetensors_save(tensors, metadata=metadata)


def read_metadata(payload: bytes | bytearray | memoryview) -> dict[str, str]:
    """The string metadata of a payload, without touching its tensors (for monitors)."""
    header, _ = _read_header(payload, max_bytes=len(payload))
    return cast(dict[str, str], header.get("__metadata__", {}))


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    kinds: Iterable[str],
    max_bytes: int,
    schema: ModelSchema | None = None,
    run_id: str | None = None,
) -> Envelope:
    """Parse and validate a payload, or raise WireError with the reason.

    Checks the size limit, header structure, protocol version, kind (one of `kinds`), run id
    (when given), identifiers, counts, JSON fields, tensor offsets and dtypes, the tensors
    against `schema` (when given; float16 codec tensors come back as the schema's dtype),
    and that every float value is finite. Tensors are zero-copy views into `payload`.
    """
    header, data_start = _read_header(payload, max_bytes=max_bytes)
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WireError("malformed", "payload has no fogfl metadata; not a fogfl message")
    version = meta.get("fogfl")
    if version != PROTOCOL_VERSION:
        raise WireError(
            "bad-version",
            f"protocol version {version!r}, this fogfl speaks {PROTOCOL_VERSION!r}; "
            "upgrade the sender or this role",
        )
    kind = meta.get("kind", "")
    allowed = set(kinds)
    if kind not in allowed:
        raise WireError("wrong-kind", f"message of kind {kind!r} where {sorted(allowed)} belong")
    message_run = _identifier(meta, "run_id")
    if run_id is not None and message_run != run_id:
        raise WireError("other-run", f"message is from run {message_run!r}, not {run_id!r}")
    codec = meta.get("codec", "")
    if codec not in CODECS:
        raise WireError("bad-codec", f"unknown codec {codec!r}; expected one of {CODECS}")
    message = Envelope(
        kind=cast(Kind, kind),
        run_id=message_run,
        round=_count(meta, "round"),
        edge_round=_count(meta, "edge_round") if "edge_round" in meta else 1,
        sender=_identifier(meta, "sender"),
        region=_identifier(meta, "region", allow_empty=True),
        num_examples=_count(meta, "num_examples"),
        metrics=_metrics(meta),
        contributors=_string_list(meta, "contributors"),
        stats=_json_object(meta, "stats"),
        config=_json_object(meta, "config"),
        final=meta.get("final") == "true",
        schema=ModelSchema.from_json(meta["schema"]) if "schema" in meta else None,
        codec=cast(Codec, codec),
        sent_at=_float(meta, "sent_at"),
        payload_bytes=len(payload),
    )
    message.tensors = _tensors(header, payload, data_start)
    if schema is not None:
        schema.check(message.tensors, f"{kind} from {message.sender}")
        message.tensors = {
            spec.name: _from_codec(message.tensors[spec.name], spec.dtype)
            for spec in schema.tensors
        }
    for name, array in message.tensors.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise WireError("not-finite", f"tensor {name} from {message.sender} holds NaN or Inf")
    return message


def _to_codec(array: npt.NDArray[Any], codec: str) -> npt.NDArray[Any]:
    if codec == "float16" and array.dtype == np.float32:
        array = array.astype(np.float16)
    return np.ascontiguousarray(array)


def _from_codec(array: npt.NDArray[Any], dtype: str) -> npt.NDArray[Any]:
    if str(array.dtype) == dtype:
        return array
    if array.dtype == np.float16 and dtype == "float32":
        return array.astype(np.float32)
    raise WireError("wrong-dtype", f"tensor of dtype {array.dtype} where the model has {dtype}")


def _read_header(
    payload: bytes | bytearray | memoryview, *, max_bytes: int
) -> tuple[dict[str, Any], int]:
    size = len(payload)
    if size > max_bytes:
        raise WireError("oversized", f"payload of {size} bytes exceeds the limit of {max_bytes}")
    if size < _HEADER_LENGTH.size:
        raise WireError("malformed", f"payload of {size} bytes is too short for safetensors")
    (header_length,) = _HEADER_LENGTH.unpack_from(payload, 0)
    data_start = _HEADER_LENGTH.size + header_length
    if header_length > _MAX_HEADER_BYTES or data_start > size:
        raise WireError("malformed", f"safetensors header length {header_length} is impossible")
    try:
        header = json.loads(bytes(payload[_HEADER_LENGTH.size : data_start]))
    except (UnicodeDecodeError, ValueError):
        raise WireError("malformed", "safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise WireError("malformed", "safetensors header is not a JSON object")
    return header, data_start


def _tensors(
    header: dict[str, Any], payload: bytes | bytearray | memoryview, data_start: int
) -> Tensors:
    data_size = len(payload) - data_start
    tensors: Tensors = {}
    for name, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WireError("malformed", f"tensor {name!r} has a malformed header entry") from None
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= data_size:
            raise WireError("malformed", f"tensor {name!r} lies outside the payload")
        count = math.prod(shape)
        if (end - begin) != count * dtype.itemsize:
            raise WireError(
                "malformed",
                f"tensor {name!r} spans {end - begin} bytes, its shape {list(shape)} needs "
                f"{count * dtype.itemsize}",
            )
        array = np.frombuffer(payload, dtype=dtype, count=count, offset=data_start + begin)
        tensors[name] = array.reshape(shape)
    return tensors


def _identifier(meta: dict[str, str], key: str, allow_empty: bool = False) -> str:
    value = meta.get(key, "")
    if (not value and not allow_empty) or len(value) > 128 or not set(value) <= _ID_CHARS:
        raise WireError(
            "bad-field", f"metadata {key}={value[:40]!r} must be 1-128 letters, digits, _ . -"
        )
    return value


def _count(meta: dict[str, str], key: str) -> int:
    text = meta.get(key, "")
    if not text.isdigit() or len(text) > 18:
        raise WireError("bad-field", f"metadata {key}={text[:40]!r} is not a non-negative integer")
    return int(text)


def _float(meta: dict[str, str], key: str) -> float:
    try:
        value = float(meta.get(key, "0"))
    except ValueError:
        raise WireError("bad-field", f"metadata {key} is not a number") from None
    return value if math.isfinite(value) else 0.0


def _json_field(meta: dict[str, str], key: str, default: str) -> Any:
    try:
        return json.loads(meta.get(key, default))
    except ValueError:
        raise WireError("bad-field", f"metadata {key} is not valid JSON") from None


def _metrics(meta: dict[str, str]) -> dict[str, float]:
    raw = _json_field(meta, "metrics", "{}")
    if not isinstance(raw, dict):
        raise WireError("bad-field", "metadata metrics must be a JSON object")
    metrics: dict[str, float] = {}
    for name, value in raw.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise WireError("bad-field", f"metric {name!r}={value!r} is not a finite number")
        metrics[str(name)] = float(value)
    return metrics


def _string_list(meta: dict[str, str], key: str) -> list[str]:
    raw = _json_field(meta, key, "[]")
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise WireError("bad-field", f"metadata {key} must be a JSON list of strings")
    return raw


def _json_object(meta: dict[str, str], key: str) -> dict[str, Any]:
    raw = _json_field(meta, key, "{}")
    if not isinstance(raw, dict):
        raise WireError("bad-field", f"metadata {key} must be a JSON object")
    return raw
