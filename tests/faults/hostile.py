"""Hostile payloads for fogfl's receivers, shared by `tests/faults/test_hostile_payloads.py`
(which asserts on them) and `benchmarks/hostile.py` (which times them).

- `hostile_classes()`: one payload for each way a single message once killed or stalled a
  role (issue 7), with the reason it must be rejected with.
- `mutations(seed, count)`: a seeded, structure-aware corpus. Each case is a valid payload
  (`valid_payloads`: an envelope of each kind — update, evaluation, partial, global,
  region, round — and models and updates in every codec, deltas from `REFERENCE`) with one
  thing changed: a metadata field, a tensor's header entry (dtype, shape, offsets, name),
  a letter of the header, or one byte of the data or of the whole payload.

The model is the `synthetic` task's with `TASK_OPTIONS` (three float32 tensors of 34
values), so a real client role reads the same schema.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np

from fogfl.codecs import Reference
from fogfl.mqtt import Topics
from fogfl.wire import Codec, Envelope, ModelSchema, TensorSpec, encode

SEED = 7
RUN_ID = "run-7"
ROUND = 3
REGION = "north"
CLIENT_ID = "north-01"
SENT_AT = 1_700_000_000.25
TASK_OPTIONS: dict[str, object] = {"megabytes": 0.0004, "tensors": 3, "examples": 10}
SCHEMA = ModelSchema(tuple(TensorSpec(f"layers.{i}", (34,), "float32") for i in range(3)))
TOPICS = Topics("fl")
_TOPIC_OF_KIND = {
    "update": TOPICS.updates(REGION, CLIENT_ID),
    "evaluation": TOPICS.updates(REGION, CLIENT_ID),
    "partial": TOPICS.partial(REGION),
    "global": TOPICS.global_model,
    "region": TOPICS.region_model(REGION),
    "round": TOPICS.round_announcement,
}


@dataclass(frozen=True)
class Receiver:
    """How the role that reads a kind's topic decodes it."""

    kinds: frozenset[str]
    schema: ModelSchema | None
    run_id: str | None


RECEIVERS = {
    "update": Receiver(frozenset({"update", "evaluation"}), SCHEMA, RUN_ID),  # fog broker
    "evaluation": Receiver(frozenset({"update", "evaluation"}), None, RUN_ID),  # fog, final
    "partial": Receiver(frozenset({"partial"}), SCHEMA, RUN_ID),  # bridge
    "global": Receiver(frozenset({"global", "region"}), SCHEMA, None),  # client
    "region": Receiver(frozenset({"global", "region"}), SCHEMA, None),  # client
    "round": Receiver(frozenset({"round"}), None, None),  # fog broker
}


@dataclass(frozen=True)
class Case:
    """One payload, the kind of envelope it started from, and for the hostile classes the
    reason it must be rejected with."""

    name: str
    source: str
    payload: bytes
    reason: str | None = None

    @property
    def topic(self) -> str:
        return _TOPIC_OF_KIND[self.source]

    @property
    def receiver(self) -> Receiver:
        return RECEIVERS[self.source]


def valid_envelopes() -> dict[str, Envelope]:
    """A valid envelope of every kind, for round `ROUND` of run `RUN_ID`."""
    rng = np.random.default_rng(SEED)

    def tensors() -> dict[str, np.ndarray]:
        return {s.name: rng.normal(size=s.shape).astype(np.float32) for s in SCHEMA.tensors}

    metrics = {"train_loss": 0.25, "train_seconds": 0.5, "eval_loss": 0.5, "eval_examples": 20.0}
    config = {"local_epochs": 1, "batch_size": 8, "learning_rate": 0.01}
    tags: dict[str, Any] = {"run_id": RUN_ID, "round": ROUND, "sent_at": SENT_AT}
    fog = f"fog-{REGION}"
    return {
        "update": Envelope(
            kind="update",
            sender=CLIENT_ID,
            region=REGION,
            num_examples=1440,
            tensors=tensors(),
            metrics=metrics,
            **tags,
        ),
        "evaluation": Envelope(
            kind="evaluation",
            sender=CLIENT_ID,
            region=REGION,
            num_examples=20,
            metrics={"eval_loss": 0.5, "eval_examples": 20.0},
            final=True,
            **tags,
        ),
        "partial": Envelope(
            kind="partial",
            sender=fog,
            region=REGION,
            num_examples=2880,
            tensors=tensors(),
            metrics=metrics,
            contributors=[CLIENT_ID, "north-02"],
            stats={"updates_bytes": 1000, "region_bytes": 0, "weight": 2880, "rejected": {}},
            **tags,
        ),
        "global": Envelope(
            kind="global", sender="server", tensors=tensors(), config=config, **tags
        ),
        "region": Envelope(
            kind="region",
            sender=fog,
            region=REGION,
            edge_round=2,
            num_examples=2880,
            tensors=tensors(),
            config={**config, "edge_rounds": 2},
            **tags,
        ),
        "round": Envelope(kind="round", sender="server", config=config, schema=SCHEMA, **tags),
    }


def announcement(final: bool = False, **plan: object) -> bytes:
    """The valid announcement of round `ROUND` (or of its final evaluation), with `plan`
    over its config."""
    message = valid_envelopes()["round"]
    message.final = final
    message.config = {**message.config, **plan}
    return encode(message)


# The round's global model: what the clients trained from, so what deltas are from.
REFERENCE = Reference(valid_envelopes()["global"].tensors, SCHEMA)
# (kind, codec, compression) of the coded payloads beside the float32 envelopes.
_CODED = [
    ("update", "int8", "none"),
    ("update", "int4", "none"),
    ("update", "topk", "none"),
    ("update", "bfloat16", "zstd"),
    ("update", "float16", "none"),
    ("partial", "int8", "zstd"),
    ("partial", "bfloat16", "none"),
    ("global", "int4", "none"),
    ("region", "float16", "zstd"),
]


@functools.cache
def valid_payloads() -> dict[str, tuple[str, bytes]]:
    """Valid payloads by name, each with its kind: every envelope as float32, and coded
    ones (updates as deltas from `REFERENCE`, models absolute)."""
    envelopes = valid_envelopes()
    payloads = {kind: (kind, encode(message)) for kind, message in envelopes.items()}
    for kind, codec, compression in _CODED:
        payloads[f"{kind} {codec} {compression}"] = (
            kind,
            encode(
                envelopes[kind],
                cast(Codec, codec),
                compression=compression,
                reference=REFERENCE if kind == "update" else None,
                topk_fraction=0.2,
            ),
        )
    return payloads


# ---------------------------------------------------------------------------------------
# Editing a payload's header as JSON


@dataclass(frozen=True)
class Raw:
    """JSON text put into a header as it is: Infinity, 1e400, a 400-digit integer."""

    text: str


class Pairs(list[tuple[str, Any]]):
    """A JSON object whose keys may repeat."""


def dump(value: Any) -> str:
    """Compact JSON of `value`, with `Raw` text and `Pairs` objects as they are."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        value = Pairs(value.items())
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(item) for item in value) + "]"
    return json.dumps(value)


def framed(header_text: str | bytes, data: bytes = b"") -> bytes:
    """A safetensors payload: the header length, the header, the data."""
    raw = header_text.encode() if isinstance(header_text, str) else header_text
    return struct.pack("<Q", len(raw)) + raw + data


@dataclass
class Parsed:
    """A payload taken apart: its header as JSON values, its data bytes."""

    header: dict[str, Any]
    data: bytes

    @classmethod
    def of(cls, payload: bytes) -> Parsed:
        (length,) = struct.unpack_from("<Q", payload)
        return cls(json.loads(payload[8 : 8 + length]), payload[8 + length :])

    @property
    def meta(self) -> dict[str, Any]:
        return self.header["__metadata__"]

    @property
    def tensor_names(self) -> list[str]:
        return [name for name in self.header if name != "__metadata__"]

    def payload(self) -> bytes:
        return framed(dump(self.header), self.data)


# ---------------------------------------------------------------------------------------
# The hostile classes


def hostile_classes() -> list[Case]:
    """One payload per way a message once killed or stalled a role, with its reason."""
    valid = {kind: encode(message) for kind, message in valid_envelopes().items()}

    def edited(kind: str, change: Callable[[Parsed], None]) -> bytes:
        parsed = Parsed.of(valid[kind])
        change(parsed)
        return parsed.payload()

    def meta(kind: str, **values: Any) -> bytes:
        return edited(kind, lambda p: p.meta.update(values))

    def entry(key: str, value: Any) -> Callable[[Parsed], None]:
        return lambda p: p.header["layers.0"].update({key: value})

    update_meta = Parsed.of(valid["update"]).meta
    deep = 100_000
    zero_size = ",".join(
        f'"tensor.{i:06d}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
        for i in range(240_000)
    )
    tensors_240k = framed(f'{{"__metadata__":{dump(update_meta)},{zero_size}}}')
    objects_16m = framed(b'{"__metadata__":{},"x":[' + b"{}," * 5_592_000 + b"{}]}")
    strings = ",".join(f'"k{i}":""' for i in range(300_000))
    huge_schema = json.dumps([["layers.0", [2**14, 2**14], "float32"]])
    nan_tensor = valid_envelopes()["update"]
    nan_tensor.tensors["layers.1"][7] = np.nan
    return [
        Case(
            "header nested 100,000 deep",
            "update",
            framed('{"__metadata__":{},"x":' + "[" * deep + "]" * deep + "}"),
            "malformed",
        ),
        Case(
            "round announcement header nested 100,000 deep",
            "round",
            framed('{"__metadata__":{},"x":' + "[" * deep + "]" * deep + "}"),
            "malformed",
        ),
        Case(
            "metadata config nested 100,000 deep",
            "round",
            meta("round", config="[" * deep + "]" * deep),
            "bad-field",
        ),
        Case("round written '²'", "update", meta("update", round="²"), "bad-field"),
        Case(
            "num_examples in Arabic-Indic digits '١٤٤٠'",
            "update",
            meta("update", num_examples="١٤٤٠"),
            "bad-field",
        ),
        Case(
            "Infinity in shape",
            "update",
            edited("update", entry("shape", Raw("[Infinity]"))),
            "malformed",
        ),
        Case(
            "Infinity in data_offsets",
            "update",
            edited("update", entry("data_offsets", Raw("[0,Infinity]"))),
            "malformed",
        ),
        Case(
            "400-digit integer metric",
            "update",
            meta("update", metrics='{"train_loss": ' + "9" * 400 + "}"),
            "bad-field",
        ),
        Case(
            "zero-size shape [0, 1e30]",
            "update",
            edited("update", entry("shape", Raw("[0,1e30]"))),
            "malformed",
        ),
        Case(
            "zero-size shape [0, 10**30]",
            "update",
            edited("update", entry("shape", Raw("[0," + "1" + "0" * 30 + "]"))),
            "malformed",
        ),
        Case(
            "metadata not a string map {'round': 3}",
            "update",
            framed('{"__metadata__":{"round":3}}'),
            "malformed",
        ),
        Case(
            "metric 1e306", "update", meta("update", metrics='{"train_loss": 1e306}'), "bad-field"
        ),
        Case("NaN metric", "update", meta("update", metrics='{"train_loss": NaN}'), "bad-field"),
        Case("NaN in a tensor", "update", encode(nan_tensor), "not-finite"),
        Case(
            "stats weight 1e400",
            "partial",
            meta("partial", stats='{"weight": 1e400}'),
            "bad-field",
        ),
        Case(
            "15 MiB header of 240k zero-size tensors",
            "update",
            tensors_240k,
            "oversized",
        ),
        Case(
            "15 MiB header of 240k zero-size tensors, no schema",
            "evaluation",
            tensors_240k,
            "malformed",
        ),
        Case("16 MiB header of {} objects", "update", objects_16m, "oversized"),
        Case("16 MiB header of {} objects, no schema", "round", objects_16m, "malformed"),
        Case(
            "16 MiB header of whitespace, no schema",
            "round",
            framed(b'{"__metadata__":{"a":' + b" " * (16 * 1024 * 1024 - 40) + b"1}}"),
            "malformed",
        ),
        Case(
            "header of 300k short strings, no schema",
            "round",
            framed(f'{{"__metadata__":{{{strings}}}}}'),
            "malformed",
        ),
        Case(
            "header of 190k metadata entries (within the value counts), no schema",
            "round",
            framed('{"__metadata__":{' + ",".join(f'"k{i}":""' for i in range(190_000)) + "}}"),
            "malformed",
        ),
        Case(
            '8 MiB of \\" in an unterminated string',
            "round",
            framed(b'{"__metadata__":{"a":"' + b'\\"' * 4_000_000),
            "malformed",
        ),
        Case(
            "repeated metadata key",
            "update",
            edited(
                "update",
                lambda p: p.header.update(
                    {"__metadata__": Pairs([*p.meta.items(), ("run_id", "run-8")])}
                ),
            ),
            "malformed",
        ),
        Case(
            "announced model larger than any payload",
            "round",
            meta("round", schema=huge_schema),
            "bad-schema",
        ),
        Case(
            "round announcement carrying tensors",
            "round",
            encode(replace(valid_envelopes()["round"], tensors={"w": np.ones(2, np.float32)})),
            "wrong-tensors",
        ),
        Case("empty payload", "partial", b"", "malformed"),
        Case("garbage", "update", b"\x07not a safetensors file", "malformed"),
    ]


# ---------------------------------------------------------------------------------------
# The mutation corpus

_COUNT_VALUES = [
    "", "0", "1", "2", "4", "-1", "+3", " 3", "3 ", "3.0", "1e3", "0x1f", "²", "١٤٤٠", "٣",
    "３", "00003", "9" * 15, "1" + "0" * 15, "1" + "0" * 14 + "1", "9" * 16, "9" * 19,
    "9" * 400, "nan", "∞", "3\x00",
]  # fmt: skip
_ID_VALUES = [
    "", "a" * 128, "a" * 129, "x/../y", "run 1", "rün", "north\x00", "+", "#", "run-8",
    "south", "..", "fog-north", "server",
]  # fmt: skip
_METRICS_VALUES = [
    "{}", "[]", "null", "1", '"x"', '{"train_loss": "x"}', '{"train_loss": true}',
    '{"train_loss": null}', '{"train_loss": NaN}', '{"train_loss": Infinity}',
    '{"train_loss": -Infinity}', '{"train_loss": 1e400}', '{"train_loss": 1e306}',
    '{"train_loss": 1e15}', '{"train_loss": -1e15}', '{"train_loss": 1.0000001e15}',
    '{"train_loss": ' + "9" * 400 + "}", '{"train_loss": 12345678901234567890}',
    '{"train_loss": 123456789012345678}', '{"": 1}', '{"' + "m" * 129 + '": 1}',
    '{"' + "m" * 128 + '": 1}', "{" + ",".join(f'"m{i}": {i}' for i in range(300)) + "}",
    "{" + ",".join(f'"m{i}": {i}' for i in range(256)) + "}", '{"a": 1, "a": 2}',
    '{"a": ' + "[" * 20 + "]" * 20 + "}", "{", "", "not json", '{"eval_examples": -5}',
    '{"train_loss": 1e15, "eval_loss": 1e15, "eval_examples": 1e15}', '{"x": [1, 2]}',
]  # fmt: skip
_LIST_VALUES = [
    "[]", '["a"]', "[1]", '"a"', '["' + "x" * 129 + '"]', "[" + ",".join(['"c"'] * 10_000) + "]",
    "[" * 20 + "]" * 20, "null", "{}", '["a", null]',
]  # fmt: skip
_CONFIG_VALUES = [
    "{}", '{"local_epochs": 0}', '{"local_epochs": 1e400}', '{"local_epochs": 99999999999}',
    '{"participants": {"north": ["north-01"]}}', '{"participants": {"north": []}}',
    '{"participants": []}', '{"participants": {"north": [1]}}', '{"edge_rounds": 0}',
    '{"edge_rounds": 2}', '{"weighting": "uniform"}', '{"weighting": "x"}',
    '{"learning_rate": -1}', '{"batch_size": "x"}', "[]", "null", '{"ended": true}',
    '{"ended": "yes"}', '{"unknown": {"a": [1, 2]}}', '{"a":' * 16 + "1" + "}" * 16,
    '{"a":' * 17 + "1" + "}" * 17, '{"a": 1, "a": 2}',
]  # fmt: skip
_STATS_VALUES = [
    "{}", '{"weight": -1}', '{"weight": 1.5}', '{"weight": "3"}', '{"weight": true}',
    '{"weight": 10000000000000000}', '{"weight": 0}', '{"updates_bytes": 1e400}',
    '{"updates_bytes": null}', '{"region_bytes": [1]}', '{"rejected": {"late": -1}}',
    '{"rejected": []}', '{"rejected": {"late": 2}}', '{"other": {"nested": [1, {"x": 2}]}}',
    "[]",
]  # fmt: skip


def _schema_variants() -> list[str]:
    rows = json.loads(SCHEMA.to_json())

    def changed(index: int, column: int, value: Any) -> str:
        edited = copy.deepcopy(rows)
        edited[index][column] = value
        return json.dumps(edited)

    return [
        SCHEMA.to_json(),
        "[]",
        "null",
        "{}",
        changed(0, 1, [35]),
        changed(0, 1, [34, 1]),
        changed(0, 1, [0]),
        changed(0, 1, [1e30]),
        changed(0, 1, [-1]),
        changed(0, 1, [True]),
        changed(0, 1, ["34"]),
        changed(0, 1, [1] * 17),
        changed(0, 1, [2**14, 2**14]),
        changed(0, 2, "float128"),
        changed(0, 2, "bfloat16"),
        changed(0, 2, "float16"),
        changed(0, 2, 3),
        changed(0, 0, ""),
        changed(0, 0, "n" * 600),
        changed(0, 0, 7),
        changed(1, 0, "layers.0"),
        json.dumps([*rows, ["extra", [2], "float32"]]),
        json.dumps(rows[:2]),
        json.dumps([row[:2] for row in rows]),
        "[" * 20 + "]" * 20,
    ]


@functools.cache
def _field_values() -> dict[str, list[str]]:
    return {
        "round": _COUNT_VALUES,
        "edge_round": _COUNT_VALUES,
        "num_examples": _COUNT_VALUES,
        "run_id": _ID_VALUES,
        "sender": _ID_VALUES,
        "region": _ID_VALUES,
        "kind": [
            "update",
            "partial",
            "global",
            "round",
            "evaluation",
            "region",
            "",
            "UPDATE",
            "update ",
            "model",
        ],
        "fogfl": ["0", "2", "", "1.0", " 1", "１"],
        "codec": ["float32", "float16", "bfloat16", "", "int8", "int4", "topk", "FLOAT32"],
        "compression": ["none", "zstd", "", "gzip"],
        "delta_from": [REFERENCE.digest, "0" * 32, REFERENCE.digest.upper(), "", "x"],
        "topk_k": _COUNT_VALUES,
        "compressed_bytes": _COUNT_VALUES,
        "sent_at": [
            "nan",
            "inf",
            "-inf",
            "1e999",
            "",
            "abc",
            "1_000",
            "١٢",
            "0",
            "-5",
            "1.5e3",
            "1" * 30,
        ],
        "final": ["true", "false", "TRUE", "1", "", "yes"],
        "metrics": _METRICS_VALUES,
        "contributors": _LIST_VALUES,
        "config": _CONFIG_VALUES,
        "stats": _STATS_VALUES,
        "schema": _schema_variants(),
        "unknown_key": ["x", ""],
    }


_NOT_TEXT = [Raw("3"), Raw("3.5"), Raw("true"), Raw("null"), Raw("[]"), Raw("{}"), Raw("1e400")]
_DTYPES = ["F32", "F16", "F64", "I32", "I64", "BOOL", "U8", "BF16", "F8_E4M3", "", "f32", 3, None,
           ["F32"]]  # fmt: skip
_SHAPES: list[Any] = [
    [], [34, 1], [1, 34], [17, 2], [35], [0], [33], [-34], [34.0], ["34"], [True], Raw("[0,1e30]"),
    Raw("[0," + "1" + "0" * 30 + "]"), Raw("[Infinity]"), Raw("[NaN]"), [2**31], [34] + [1] * 16,
    [34] + [1] * 15, None, 34, "34", {"0": 34},
]  # fmt: skip


def _metadata_field(rng: random.Random, parsed: Parsed) -> str:
    values = _field_values()
    key = rng.choice(sorted(values))
    if rng.random() < 0.1:
        parsed.meta.pop(key, None)
        return f"metadata {key} removed"
    value = rng.choice(values[key])
    parsed.meta[key] = value
    return f"metadata {key}={value[:40]!r}"


def _metadata_not_text(rng: random.Random, parsed: Parsed) -> str:
    choice = rng.random()
    if choice < 0.15:
        del parsed.header["__metadata__"]
        return "no metadata"
    if choice < 0.3:
        parsed.header["__metadata__"] = rng.choice([[], "x", 3, None])
        return "metadata not an object"
    if choice < 0.4:
        parsed.meta.update({f"extra{i}": "" for i in range(70)})
        return "70 extra metadata keys"
    key = rng.choice(sorted(parsed.meta))
    value = rng.choice(_NOT_TEXT)
    parsed.meta[key] = value
    return f"metadata {key}={value.text} (not text)"


def _tensor_entry(rng: random.Random, parsed: Parsed) -> str:
    names = parsed.tensor_names
    if not names or rng.random() < 0.08:
        end = len(parsed.data)
        parsed.header["extra"] = {"dtype": "F32", "shape": [2], "data_offsets": [end, end + 8]}
        parsed.data += bytes(8)
        return "an extra tensor"
    name = rng.choice(names)
    entry = parsed.header[name]
    begin, end = entry["data_offsets"]
    aspect = rng.choice(["dtype", "shape", "offsets", "offsets", "name", "structure"])
    if aspect == "dtype":
        entry["dtype"] = rng.choice(_DTYPES)
        return f"{name} dtype {entry['dtype']!r}"
    if aspect == "shape":
        entry["shape"] = rng.choice(_SHAPES)
        return f"{name} shape {entry['shape']!r:.40}"
    if aspect == "offsets":
        size = len(parsed.data)
        entry["data_offsets"] = rng.choice(
            [
                [begin, end + 4], [begin + 4, end + 4], [begin, end - 4], [end, begin],
                [begin - 1, end - 1], [-1, end], [begin, size + 4], Raw(f"[{begin},1{'0' * 20}]"),
                Raw(f"[{begin},Infinity]"), [float(begin), end], [begin], [begin, end, 0], None,
                [str(begin), str(end)], [True, end], [begin, True],
            ]
        )  # fmt: skip
        return f"{name} data_offsets {entry['data_offsets']!r:.40}"
    if aspect == "name":
        new_name = rng.choice(
            ["", "layers.0 ", "läyers.0", "n" * 600, "layers.3", "layers.00", *names]
        )
        parsed.header = {(new_name if k == name else k): v for k, v in parsed.header.items()}
        return f"{name} renamed {new_name[:40]!r}"
    choice = rng.random()
    if choice < 0.2:
        del parsed.header[name]
        return f"{name} removed"
    if choice < 0.4:
        parsed.header = Pairs([*parsed.header.items(), (name, entry)])  # type: ignore[assignment]
        return f"{name} twice"
    if choice < 0.55:
        other = rng.choice(names)
        entry["data_offsets"], parsed.header[other]["data_offsets"] = (
            parsed.header[other]["data_offsets"],
            entry["data_offsets"],
        )
        return f"{name} and {other} swap data"
    if choice < 0.7:
        entry["extra"] = 1
        return f"{name} with an extra key"
    if choice < 0.85:
        del entry[rng.choice(sorted(entry))]
        return f"{name} missing a key"
    parsed.header[name] = rng.choice([[], "x", None, 3])
    return f"{name} entry not an object"


def _header_letter(rng: random.Random, payload: bytes) -> tuple[str, bytes]:
    """One ASCII letter of the header changed to another: the JSON stays valid."""
    (length,) = struct.unpack_from("<Q", payload)
    at = 8 + rng.choice(_letters(payload[8 : 8 + length]))
    letter = rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return f"header letter {at} → {letter}", payload[:at] + letter.encode() + payload[at + 1 :]


@functools.cache
def _letters(header: bytes) -> list[int]:
    """Where the header has ASCII letters that are not part of an escape sequence."""
    return [
        i
        for i, byte in enumerate(header)
        if chr(byte).isascii() and chr(byte).isalpha() and b"\\" not in header[max(0, i - 5) : i]
    ]


def _data_byte(rng: random.Random, payload: bytes) -> tuple[str, bytes]:
    """One byte of the data changed, or one float32 set to NaN or ±Inf."""
    (length,) = struct.unpack_from("<Q", payload)
    start = 8 + length
    if start == len(payload):
        return "a data byte appended", payload + b"\x00"
    if rng.random() < 0.3:
        at = start + 4 * rng.randrange((len(payload) - start) // 4)
        value = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff"])
        return f"float at {at} non-finite", payload[:at] + value + payload[at + 4 :]
    at = rng.randrange(start, len(payload))
    return f"data byte {at}", payload[:at] + bytes([rng.randrange(256)]) + payload[at + 1 :]


def _any_byte(rng: random.Random, payload: bytes) -> tuple[str, bytes]:
    """One byte anywhere changed, or the header length made wrong."""
    if rng.random() < 0.25:
        (length,) = struct.unpack_from("<Q", payload)
        wrong = rng.choice([0, 1, length - 1, length + 1, len(payload), 2**63, 2**64 - 1])
        return f"header length {wrong}", struct.pack("<Q", wrong) + payload[8:]
    at = rng.randrange(len(payload))
    return f"byte {at}", payload[:at] + bytes([rng.randrange(256)]) + payload[at + 1 :]


_HEADER_EDITS: list[tuple[Callable[[random.Random, Parsed], str], int]] = [
    (_metadata_field, 46),
    (_metadata_not_text, 4),
    (_tensor_entry, 25),
]
_BYTE_EDITS: list[tuple[Callable[[random.Random, bytes], tuple[str, bytes]], int]] = [
    (_header_letter, 10),
    (_data_byte, 9),
    (_any_byte, 6),
]


def mutations(seed: int, count: int) -> Iterator[Case]:
    """`count` valid payloads, each with one field, header entry or byte changed."""
    rng = random.Random(seed)
    valid = valid_payloads()
    names = sorted(valid)
    edits: list[Any] = [edit for edit, _ in _HEADER_EDITS + _BYTE_EDITS]
    weights = [weight for _, weight in _HEADER_EDITS + _BYTE_EDITS]
    for _ in range(count):
        start = rng.choice(names)
        source, original = valid[start]
        edit = rng.choices(edits, weights)[0]
        if edit in (e for e, _ in _BYTE_EDITS):
            name, payload = edit(rng, original)
        else:
            parsed = Parsed.of(original)
            name = edit(rng, parsed)
            payload = parsed.payload()
        yield Case(f"{start}: {name}", source, payload)
