"""The wire envelope: every fogfl message is a safetensors file with string metadata.

The tensors are the model's, keyed by state-dict name; the metadata tags the message
(protocol, kind, run, round, sender, region, num_examples, codec) and carries JSON fields
(metrics, contributors, config, schema). `docs/protocol.md` is the specification; this
module is its reference implementation.

Decoding never trusts the sender and is total: every way a payload can be wrong ends in
`WireError` with a reason. It is also bounded: sizes, nesting depth and value counts are
checked on the raw bytes before any JSON is parsed, and the tensor entries are checked
against the schema before any array is built, so a hostile payload costs little time and
memory however it is made.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol, cast, get_args

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save as safetensors_save

from fogfl import PROTOCOL_VERSION
from fogfl.errors import WireError

if TYPE_CHECKING:
    from fogfl.codecs import ErrorFeedback, Reference

Kind = Literal["update", "partial", "global", "round", "evaluation", "region"]
# fogfl/codecs (docs/protocol.md, "Codecs"); float32 and float16 without a delta travel
# as they always did, so their bytes need no codec module.
Codec = Literal["float32", "float16", "bfloat16", "int8", "int4", "topk"]
KINDS: tuple[str, ...] = get_args(Kind)
CODECS: tuple[str, ...] = get_args(Codec)
Tensors = dict[str, npt.NDArray[Any]]

# The limits of what a receiver accepts (docs/protocol.md, "Validation").
MQTT_MAX_PAYLOAD = 268_435_455
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_METADATA_BYTES = 4 * 1024 * 1024  # beyond the tensor entries, when the schema is known
MAX_METADATA_ENTRIES = 64
MAX_METADATA_VALUES = 131_072  # JSON values in one metadata field
MAX_TENSORS = 10_000
MAX_DIMS = 16
MAX_DIM = MQTT_MAX_PAYLOAD  # no dimension is longer than the largest payload has bytes
MAX_NAME_CHARS = 512
MAX_ID_CHARS = 128
MAX_COUNT = 10**15  # counts stay exact as float64 (< 2**53)
# A client's num_examples: a region of 100,000 such clients (federation.clients_per_region
# allows no more) still sums within MAX_COUNT, so its partial stays readable.
MAX_CLIENT_EXAMPLES = 10**10
MAX_METRICS = 256
MAX_METRIC_NAME_CHARS = 128
MAX_METRIC = 1e15  # |value|; sums of value × num_examples stay far from overflow
MAX_JSON_DEPTH = 16
_MAX_INT_DIGITS = 18
_SCHEMA_VALUES = MAX_TENSORS * (4 + MAX_DIMS) + 1
# JSON values the metadata fields may hold together: metrics, stats, config, contributors
# and schema.
_MAX_STATS_VALUES = 4096
_MAX_METADATA_JSON_VALUES = (
    MAX_METRICS + 1 + _MAX_STATS_VALUES + 2 * MAX_METADATA_VALUES + _SCHEMA_VALUES
)

# Tensors carried by these kinds (docs/protocol.md): round and evaluation carry none.
_NO_TENSORS = frozenset({"round", "evaluation"})
_FROM_CLIENTS = frozenset({"update", "evaluation"})
# Kinds whose `final` is written even when false; an update or region model never is final.
_MAY_BE_FINAL = frozenset({"global", "round", "partial", "evaluation"})
_HEADER_LENGTH = struct.Struct("<Q")
_HEADER_DEPTH = 3  # header → tensor entry → shape
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),  # bfloat16 bit patterns (the bfloat16 codec)
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {code: dtype.name for code, dtype in _DTYPES.items()}
_FLOAT_CODES = frozenset({"F64", "F32", "F16"})
# What a message of these codecs carries is the model's own tensors (float16: its float32
# ones cast), checked against the schema alone.
_PLAIN_CODECS = frozenset({"float32", "float16"})
# A codec's layout (fogfl/codecs) has at most two tensors of its own beyond the model's,
# each of one dimension and a name of at most 12 characters (`__indices__`, `__scales__`).
_CODEC_TENSORS = 2
_CODEC_NAME_CHARS = 12
_SCHEMA_DTYPES = {dtype.name: dtype for dtype in _DTYPES.values()}
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_COUNT_TEXT = re.compile(r"[0-9]{1,16}")
_FLOAT_TEXT = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")
# A JSON string, or an unterminated one running to the end: possessive, so one pass is
# linear however the quotes and backslashes are arranged.
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
_INNERMOST_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STATS_COUNTS = ("updates_bytes", "region_bytes", "weight")


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

    @property
    def min_payload_bytes(self) -> int:
        """The tensor bytes of the smallest message carrying this model (float32 as
        float16, the smallest codec)."""
        return sum(
            math.prod(spec.shape) * (2 if spec.dtype == "float32" else _itemsize(spec.dtype))
            for spec in self.tensors
        )

    def to_json(self) -> str:
        return json.dumps([[s.name, list(s.shape), s.dtype] for s in self.tensors])

    @classmethod
    def from_json(cls, text: str, max_bytes: int = MQTT_MAX_PAYLOAD) -> ModelSchema:
        """Parse a schema, or raise WireError ``bad-schema``: 1 to MAX_TENSORS uniquely named
        tensors of known dtypes whose smallest message fits in `max_bytes`."""
        if not isinstance(text, str):
            raise WireError("bad-schema", "model schema is not text")
        rows = _load_json(
            text,
            "model schema",
            "bad-schema",
            max_depth=3,
            max_values=_SCHEMA_VALUES,
        )
        if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_TENSORS:
            raise WireError(
                "bad-schema", f"model schema must list 1 to {MAX_TENSORS} [name, shape, dtype]"
            )
        specs = []
        for row in rows:
            if not (isinstance(row, list) and len(row) == 3):
                raise WireError("bad-schema", "model schema rows must be [name, shape, dtype]")
            name, shape, dtype = row
            if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
                raise WireError(
                    "bad-schema", f"model schema tensor names must be 1-{MAX_NAME_CHARS} characters"
                )
            if dtype not in _SCHEMA_DTYPES:
                raise WireError(
                    "bad-schema", f"model schema: tensor {name[:40]!r} has unknown dtype {dtype!r}"
                )
            dims = _dims(shape)
            if dims is None:
                raise WireError(
                    "bad-schema",
                    f"model schema: tensor {name[:40]!r} has shape {_shown(shape)}; a shape is "
                    f"at most {MAX_DIMS} integers from 0 to {MAX_DIM}",
                )
            specs.append(TensorSpec(name, dims, dtype))
        schema = cls(tuple(specs))
        if len(set(schema.names)) != len(specs):
            raise WireError("bad-schema", "model schema names a tensor twice")
        if schema.min_payload_bytes > max_bytes:
            raise WireError(
                "bad-schema",
                f"the announced model needs at least {schema.min_payload_bytes} bytes per "
                f"message, more than the limit of {max_bytes}; is wire.max_payload_bytes right?",
            )
        return schema

    def check(self, tensors: Mapping[str, npt.NDArray[Any]], what: str) -> None:
        """Raise WireError unless `tensors` has exactly this schema's names and shapes."""
        self._check_names(tensors.keys(), what)
        for spec in self.tensors:
            self._check_shape(spec, tuple(tensors[spec.name].shape), what)

    def _check_names(self, names: Iterable[str], what: str) -> None:
        names = set(names)
        if len(names) != len(self.tensors) or names != set(self.names):
            missing = sorted(set(self.names) - names)
            unknown = sorted(names - set(self.names))
            raise WireError(
                "wrong-tensors",
                f"{what} has {len(names)} tensors, the model has {len(self.tensors)}"
                f" (missing {missing[:3]}, unknown {[n[:40] for n in unknown[:3]]}); is it "
                "running another task?",
            )

    @staticmethod
    def _check_shape(spec: TensorSpec, shape: tuple[int, ...], what: str) -> None:
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
    `stats` (partial), `config` and `schema` (global, round), `final` (global, round,
    partial, evaluation), `edge_round` (update, region: which of the round's edge rounds,
    from 1).
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


class Signer(Protocol):
    """Signs encoded payloads (`fogfl.security.signing.Signer`)."""

    @property
    def name(self) -> str: ...

    @property
    def placeholder(self) -> str: ...

    def seal(self, payload: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks a payload's signature against its metadata; raises WireError
    ``bad-signature`` (`fogfl.security.signing.TrustPolicy`)."""

    def __call__(
        self, payload: bytes | bytearray | memoryview, meta: Mapping[str, str]
    ) -> None: ...


def encode(
    message: Envelope,
    codec: Codec | None = None,
    signer: Signer | None = None,
    *,
    compression: str = "none",
    reference: Reference | None = None,
    feedback: ErrorFeedback | None = None,
    topk_fraction: float = 0.05,
) -> bytes:
    """Serialise `message` as safetensors bytes, its tensors in `codec` (docs/protocol.md,
    "Codecs"); signed by `signer` when given (docs/protocol.md, "Signatures").

    With a `reference` (the model an update was trained from) a lossy codec sends the delta
    from it, and `feedback` keeps and adds back what the codec dropped; `compression`
    ``zstd`` adds the lossless stage. float32 is never a delta.
    """
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
    }
    if message.final or message.kind in _MAY_BE_FINAL:
        metadata["final"] = "true" if message.final else "false"
    # The JSON fields travel only when they hold something: absent means empty, and the
    # kinds that do not carry one (an update's config, contributors, stats) save its bytes.
    for key, value in (
        ("metrics", message.metrics),
        ("contributors", message.contributors),
        ("config", message.config),
        ("stats", message.stats),
    ):
        if value:
            metadata[key] = json.dumps(value, separators=(",", ":"))
    if message.schema is not None:
        metadata["schema"] = message.schema.to_json()
    if signer is not None:
        metadata["signer"] = signer.name
        metadata["signature"] = signer.placeholder
    delta = reference is not None and chosen != "float32"
    if chosen in _PLAIN_CODECS and compression == "none" and not delta:
        tensors = {name: _to_codec(array, chosen) for name, array in message.tensors.items()}
    else:
        from fogfl import codecs

        encoded = codecs.encode_model(
            message.tensors,
            ModelSchema.of(message.tensors),
            chosen,
            compression=compression,
            reference=reference if delta else None,
            feedback=feedback if delta else None,
            topk_fraction=topk_fraction,
        )
        tensors, metadata = encoded.tensors, {**metadata, **encoded.metadata}
    payload = safetensors_save(tensors, metadata=metadata)
    return payload if signer is None else signer.seal(payload)


def read_metadata(payload: bytes | bytearray | memoryview) -> dict[str, str]:
    """The string metadata of a payload, without touching its tensors (for monitors).
    Empty when the payload has none; WireError when it is not safetensors or the
    metadata is not a map of strings to strings."""
    header, _ = _read_header(payload, max_bytes=len(payload), schema=None)
    return _string_map(header.get("__metadata__", {}))


def metadata_count(meta: Mapping[str, str], key: str) -> int:
    """A count from the metadata (round, num_examples, …): ASCII decimal digits, at most
    MAX_COUNT; WireError ``bad-field`` otherwise."""
    text = meta.get(key, "")
    if not isinstance(text, str) or not _COUNT_TEXT.fullmatch(text) or int(text) > MAX_COUNT:
        raise WireError(
            "bad-field",
            f"metadata {key}={_shown(text)} is not a decimal count from 0 to {MAX_COUNT}",
        )
    return int(text)


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    kinds: Iterable[str],
    max_bytes: int,
    schema: ModelSchema | None = None,
    run_id: str | None = None,
    verify: Verifier | None = None,
    reference: Reference | None = None,
) -> Envelope:
    """Parse and validate a payload, or raise WireError with the reason.

    Checks the size limits, header structure, protocol version, kind (one of `kinds`), run id
    (when given), identifiers, counts, JSON fields, the codec fields, tensor offsets and
    dtypes, and that every float value is finite; with `verify`, the signature (before any
    tensor is read). With a `schema`, the header's tensors must be exactly those the codec
    carries for that model (`codecs.wire_layout`), checked before any array is built, and
    the tensors come back decoded as the schema's (a delta needs the `reference` it names,
    ``wrong-reference`` otherwise); float32 tensors are zero-copy views into `payload`.
    Without a schema they come back as they travel.
    """
    header, data_start = _read_header(payload, max_bytes=max_bytes, schema=schema)
    meta = header.pop("__metadata__", None)
    if meta is None:
        raise WireError("malformed", "payload has no fogfl metadata; not a fogfl message")
    meta = _string_map(meta)
    version = meta.get("fogfl")
    if version != PROTOCOL_VERSION:
        raise WireError(
            "bad-version",
            f"protocol version {_shown(version)}, this fogfl speaks {PROTOCOL_VERSION!r}; "
            "upgrade the sender or this role",
        )
    kind = meta.get("kind", "")
    allowed = set(kinds)
    if kind not in allowed:
        raise WireError(
            "wrong-kind", f"message of kind {_shown(kind)} where {sorted(allowed)} belong"
        )
    message_run = _identifier(meta, "run_id")
    if run_id is not None and message_run != run_id:
        raise WireError("other-run", f"message is from run {message_run!r}, not {run_id!r}")
    if verify is not None:
        verify(payload, meta)
    codec = meta.get("codec", "")
    if codec not in CODECS:
        raise WireError("bad-codec", f"unknown codec {_shown(codec)}; expected one of {CODECS}")
    layout = None
    if schema is not None and kind not in _NO_TENSORS:
        from fogfl import codecs

        layout = codecs.wire_layout(schema, meta)
    message = Envelope(
        kind=cast(Kind, kind),
        run_id=message_run,
        round=metadata_count(meta, "round"),
        edge_round=metadata_count(meta, "edge_round") if "edge_round" in meta else 1,
        sender=_identifier(meta, "sender"),
        region=_identifier(meta, "region", allow_empty=True),
        num_examples=metadata_count(meta, "num_examples"),
        metrics=_metrics(meta),
        contributors=_contributors(meta),
        stats=_stats(meta),
        config=_json_object(meta, "config", MAX_METADATA_VALUES),
        final=_flag(meta, "final"),
        schema=ModelSchema.from_json(meta["schema"], max_bytes) if "schema" in meta else None,
        codec=cast(Codec, codec),
        sent_at=_sent_at(meta),
        payload_bytes=len(payload),
    )
    what = f"{kind} from {message.sender}"
    if kind in _FROM_CLIENTS and message.num_examples > MAX_CLIENT_EXAMPLES:
        raise WireError(
            "bad-field",
            f"{what} claims {message.num_examples} examples; a client has at most "
            f"{MAX_CLIENT_EXAMPLES}",
        )
    if kind in _NO_TENSORS and header:
        raise WireError("wrong-tensors", f"{what} carries {len(header)} tensors; it carries none")
    entries = _tensor_entries(
        header, len(payload) - data_start, schema if layout is None else layout, what
    )
    for name in entries if layout is None else layout.names:
        code, shape, begin = entries[name]
        array = np.frombuffer(
            payload, dtype=_DTYPES[code], count=math.prod(shape), offset=data_start + begin
        ).reshape(shape)
        # With a layout the codec checks what it decodes (below).
        if layout is None and code in _FLOAT_CODES and not np.isfinite(array).all():
            raise WireError("not-finite", f"tensor {name} from {message.sender} holds NaN or Inf")
        message.tensors[name] = array
    if layout is not None and schema is not None:
        from fogfl import codecs

        message.tensors = codecs.decode_model(
            message.tensors, meta, schema, reference=reference, sender=message.sender
        )
        for spec in schema.tensors:
            tensor = message.tensors[spec.name]
            # The codec checks the coded (float32) tensors; the verbatim ones are left.
            verbatim_float = spec.dtype != "float32" and tensor.dtype.kind == "f"
            if verbatim_float and not np.isfinite(tensor).all():
                raise WireError(
                    "not-finite", f"tensor {spec.name} from {message.sender} holds NaN or Inf"
                )
    return message


def _to_codec(array: npt.NDArray[Any], codec: str) -> npt.NDArray[Any]:
    if codec == "float16" and array.dtype == np.float32:
        array = array.astype(np.float16)
    return np.ascontiguousarray(array)


def _readable_as(code: str, spec_dtype: str) -> bool:
    """Whether a tensor of safetensors dtype `code` is one of the layout's `spec_dtype`."""
    return _DTYPE_NAMES[code] == spec_dtype


def _itemsize(dtype: str) -> int:
    return _SCHEMA_DTYPES[dtype].itemsize if dtype in _SCHEMA_DTYPES else 8


def _read_header(
    payload: bytes | bytearray | memoryview, *, max_bytes: int, schema: ModelSchema | None
) -> tuple[dict[str, Any], int]:
    """The parsed header and where the data starts. Before parsing, the header's size and
    shape are bounded by what a header of this model under any codec (or, without a
    schema, of MAX_TENSORS tensors) can hold: at most 64 metadata strings, and per tensor
    one object, two arrays, five strings and a few commas."""
    size = len(payload)
    if size > max_bytes:
        raise WireError("oversized", f"payload of {size} bytes exceeds the limit of {max_bytes}")
    if size < _HEADER_LENGTH.size:
        raise WireError("malformed", f"payload of {size} bytes is too short for safetensors")
    (header_length,) = _HEADER_LENGTH.unpack_from(payload, 0)
    data_start = _HEADER_LENGTH.size + header_length
    if data_start > size:
        raise WireError(
            "malformed", f"safetensors header length {header_length} exceeds the payload"
        )
    if schema is None:
        tensors, dims, name_bytes = MAX_TENSORS, MAX_DIMS, MAX_HEADER_BYTES
    else:
        tensors = len(schema.tensors) + _CODEC_TENSORS
        dims = max([1, *(len(spec.shape) for spec in schema.tensors)])
        # 12 bytes a character: a name may arrive as \uXXXX surrogate pairs.
        names = sum(len(spec.name) for spec in schema.tensors) + _CODEC_NAME_CHARS * _CODEC_TENSORS
        name_bytes = 12 * names
    limit = min(MAX_HEADER_BYTES, MAX_METADATA_BYTES + (256 + 24 * dims) * tensors + name_bytes)
    if header_length > limit:
        model = "" if schema is None else f" for a model of {len(schema.tensors)} tensors"
        raise WireError(
            "oversized",
            f"safetensors header of {header_length} bytes exceeds the limit of {limit}{model}",
        )
    text = bytes(payload[_HEADER_LENGTH.size : data_start])
    what = "safetensors header"
    # Counted anywhere, brackets and commas include those of the metadata's JSON fields,
    # which have bounds of their own: beyond both, the header is rejected before the
    # (costlier) count outside strings.
    most_commas = MAX_METADATA_ENTRIES + (4 + dims) * (tensors + 2)
    anywhere = text.count(b"{") + text.count(b"[") + text.count(b",")
    if anywhere > 3 * tensors + 2 + most_commas + _MAX_METADATA_JSON_VALUES:
        raise WireError(
            "malformed", f"{what} holds {anywhere} brackets and commas; not a fogfl header"
        )
    skeleton = _skeleton(
        text, what, "malformed", max_strings=2 * MAX_METADATA_ENTRIES + 5 * tensors + 8
    )
    objects, arrays, commas = skeleton.count(b"{"), skeleton.count(b"["), skeleton.count(b",")
    if objects > tensors + 2:
        raise WireError(
            "wrong-tensors" if schema is not None else "malformed",
            f"message has {objects - 2} tensor entries, the model has at most {tensors}; is the "
            "sender running another task?",
        )
    if arrays > 2 * tensors or commas > most_commas:
        raise WireError(
            "malformed",
            f"{what} has {arrays} arrays and {commas} commas, more than {objects - 2} tensor "
            "entries and their metadata can have",
        )
    header = _parse(text, skeleton, what, "malformed", max_depth=_HEADER_DEPTH)
    if not isinstance(header, dict):
        raise WireError("malformed", "safetensors header is not a JSON object")
    return header, data_start


def _load_json(text: str, what: str, reason: str, *, max_depth: int, max_values: int) -> Any:
    """`json.loads`, total and bounded: WireError(reason) unless `text` is standard JSON
    (no NaN or Infinity, no repeated keys, integers of at most 18 digits, finite floats)
    of at most `max_values` values nested at most `max_depth` deep, all counted before
    parsing."""
    data = text.encode("utf-8", "surrogatepass")
    skeleton = _skeleton(data, what, reason, max_strings=2 * max_values)
    values = skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{") + 1
    if values > max_values:
        raise WireError(reason, f"{what} holds more than {max_values} JSON values")
    return _parse(text, skeleton, what, reason, max_depth=max_depth)


def _skeleton(data: bytes, what: str, reason: str, *, max_strings: int) -> bytes:
    """`data` without its strings: the brackets, commas, numbers and literals outside them.
    The strings are counted first (unescaped quotes; at worst half as many as there are),
    which bounds the work of taking them out."""
    strings = (data.count(b'"') - data.count(b'\\"')) // 2
    if strings > max_strings:
        raise WireError(reason, f"{what} holds {strings} strings or more, over {max_strings}")
    return _JSON_STRING.sub(b"", data)


def _parse(text: str | bytes, skeleton: bytes, what: str, reason: str, *, max_depth: int) -> Any:
    """Parse JSON whose `skeleton` was counted, once its nesting is known to be at most
    `max_depth` (measured without recursion: each pass drops the innermost pairs)."""
    brackets = skeleton.translate(None, _NOT_BRACKETS)
    # A run of more openers than `max_depth` proves it at once.
    too_deep = re.search(rb"[\[{]{%d}" % (max_depth + 1), brackets) is not None
    for _ in range(0 if too_deep else max_depth):
        if not brackets:
            break
        brackets = _INNERMOST_PAIR.sub(b"", brackets)
    if too_deep or brackets:
        raise WireError(reason, f"{what} nests deeper than {max_depth} levels (or is unbalanced)")
    try:
        return _STRICT_JSON.decode(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WireError(reason, f"{what} is not valid JSON: {str(exc)[:200]}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("an object repeats a key")
    return found


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} overflows")
    return value


def _no_constant(text: str) -> NoReturn:
    raise ValueError(f"{text} is not a JSON number")


_STRICT_JSON = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_int=_bounded_int,
    parse_float=_finite_float,
    parse_constant=_no_constant,
)


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise WireError(
            "malformed", "safetensors metadata is not a map of strings; not a fogfl message"
        )
    if len(value) > MAX_METADATA_ENTRIES:
        raise WireError(
            "malformed", f"metadata has {len(value)} entries, more than {MAX_METADATA_ENTRIES}"
        )
    return value


def _dims(shape: object) -> tuple[int, ...] | None:
    """The shape as a tuple when it is a list of at most MAX_DIMS plain integers in
    [0, MAX_DIM] (not bools, floats or strings); None otherwise."""
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        return None
    if not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape):
        return None
    return tuple(shape)


def _tensor_entries(
    header: dict[str, Any], data_size: int, schema: ModelSchema | None, what: str
) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """(safetensors dtype, shape, data offset) of every tensor, validated against the schema (when
    given) and the data section, which they must cover exactly, without gaps or overlaps:
    all before a single array is built."""
    if len(header) > MAX_TENSORS:
        raise WireError("wrong-tensors", f"{what} has {len(header)} tensors, over {MAX_TENSORS}")
    specs = {} if schema is None else {spec.name: spec for spec in schema.tensors}
    if schema is not None:
        schema._check_names(header, what)
    entries: dict[str, tuple[str, tuple[int, ...], int]] = {}
    spans: list[tuple[int, int]] = []
    for name, entry in header.items():
        shown = _shown(name)
        if len(name) > MAX_NAME_CHARS:
            raise WireError("malformed", f"tensor name {shown} is over {MAX_NAME_CHARS} characters")
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            raise WireError(
                "malformed", f"tensor {shown} must have exactly dtype, shape and data_offsets"
            )
        code = entry["dtype"]
        dtype = _DTYPES.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise WireError(
                "malformed",
                f"tensor {shown} has dtype {_shown(entry['dtype'])}, not one of {sorted(_DTYPES)}",
            )
        shape = _dims(entry["shape"])
        if shape is None:
            raise WireError(
                "malformed",
                f"tensor {shown} has shape {_shown(entry['shape'])}; a shape is at most "
                f"{MAX_DIMS} integers from 0 to {MAX_DIM}",
            )
        if name in specs:
            ModelSchema._check_shape(specs[name], shape, what)
            if not _readable_as(code, specs[name].dtype):
                raise WireError(
                    "wrong-dtype",
                    f"{what}: tensor {name} is {dtype}, the model has {specs[name].dtype}",
                )
        offsets = entry["data_offsets"]
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise WireError(
                "malformed",
                f"tensor {shown} has data_offsets {_shown(offsets)}; they must be two "
                f"integers within the {data_size} data bytes",
            )
        begin, end = offsets
        needed = math.prod(shape) * dtype.itemsize
        if end - begin != needed:
            raise WireError(
                "malformed",
                f"tensor {shown} spans {end - begin} bytes, its shape {list(shape)} needs {needed}",
            )
        entries[name] = (code, shape, begin)
        spans.append((begin, end))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise WireError(
                "malformed", f"{what}: tensors overlap or leave a gap at data byte {covered}"
            )
        covered = end
    if covered != data_size:
        raise WireError(
            "malformed", f"{what}: {data_size - covered} data bytes belong to no tensor"
        )
    return entries


def _identifier(meta: dict[str, str], key: str, allow_empty: bool = False) -> str:
    value = meta.get(key, "")
    if (not value and not allow_empty) or len(value) > MAX_ID_CHARS or not set(value) <= _ID_CHARS:
        raise WireError(
            "bad-field",
            f"metadata {key}={_shown(value)} must be 1-{MAX_ID_CHARS} letters, digits, _ . -",
        )
    return value


def _flag(meta: dict[str, str], key: str) -> bool:
    value = meta.get(key, "false")
    if value not in ("true", "false"):
        raise WireError("bad-field", f"metadata {key}={_shown(value)} must be true or false")
    return value == "true"


def _sent_at(meta: dict[str, str]) -> float:
    text = meta.get("sent_at", "0")
    if not _FLOAT_TEXT.fullmatch(text):
        raise WireError("bad-field", f"metadata sent_at={_shown(text)} is not a decimal number")
    value = float(text)
    return value if math.isfinite(value) else 0.0


def _json_field(meta: dict[str, str], key: str, default: str, max_values: int) -> Any:
    return _load_json(
        meta.get(key, default),
        f"metadata {key}",
        "bad-field",
        max_depth=MAX_JSON_DEPTH,
        max_values=max_values,
    )


def _metrics(meta: dict[str, str]) -> dict[str, float]:
    raw = _json_field(meta, "metrics", "{}", MAX_METRICS + 1)
    if not isinstance(raw, dict) or len(raw) > MAX_METRICS:
        raise WireError("bad-field", f"metadata metrics must be a JSON object of ≤ {MAX_METRICS}")
    metrics: dict[str, float] = {}
    for name, value in raw.items():
        if not 1 <= len(name) <= MAX_METRIC_NAME_CHARS:
            raise WireError(
                "bad-field", f"metric name {name[:40]!r} is not 1-{MAX_METRIC_NAME_CHARS} long"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not abs(value) <= MAX_METRIC
        ):
            raise WireError(
                "bad-field",
                f"metric {name!r}={_shown(value)} is not a number within ±{MAX_METRIC:g}",
            )
        metrics[name] = float(value)
    return metrics


def _contributors(meta: dict[str, str]) -> list[str]:
    raw = _json_field(meta, "contributors", "[]", MAX_METADATA_VALUES)
    if not isinstance(raw, list) or not all(
        isinstance(item, str) and len(item) <= MAX_ID_CHARS for item in raw
    ):
        raise WireError(
            "bad-field", f"metadata contributors must be a JSON list of ids (≤ {MAX_ID_CHARS})"
        )
    return raw


def _stats(meta: dict[str, str]) -> dict[str, Any]:
    """A partial's stats: the counts the bridge hands on must be plain counts."""
    stats = _json_object(meta, "stats", _MAX_STATS_VALUES)
    for key in _STATS_COUNTS:
        if key in stats and not _is_count(stats[key]):
            raise WireError(
                "bad-field", f"stats {key}={_shown(stats[key])} is not a count to {MAX_COUNT}"
            )
    rejected = stats.get("rejected", {})
    if not isinstance(rejected, dict) or not all(_is_count(n) for n in rejected.values()):
        raise WireError("bad-field", "stats rejected must map reasons to counts")
    return stats


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _json_object(meta: dict[str, str], key: str, max_values: int) -> dict[str, Any]:
    raw = _json_field(meta, key, "{}", max_values)
    if not isinstance(raw, dict):
        raise WireError("bad-field", f"metadata {key} must be a JSON object")
    return raw


def _shown(value: object) -> str:
    """A value for an error message: its repr, cut short (hostile values can be huge)."""
    if isinstance(value, str | list | dict) and len(value) > 60:
        value = (
            value[:60] if isinstance(value, str) else f"<{type(value).__name__} of {len(value)}>"
        )
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
