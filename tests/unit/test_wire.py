"""The wire envelope: round trips, the open safetensors format, and every rejection."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as safetensors_load

from fogfl.errors import WireError
from fogfl.wire import (
    MAX_CLIENT_EXAMPLES,
    MAX_COUNT,
    MAX_METRIC,
    Envelope,
    ModelSchema,
    decode,
    encode,
    metadata_count,
    read_metadata,
)

LIMIT = 10_000_000


def model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "net.0.weight": rng.normal(size=(64, 6)).astype(np.float32),
        "net.0.bias": rng.normal(size=64).astype(np.float32),
        "net.2.weight": rng.normal(size=(1, 64)).astype(np.float32),
    }


SCHEMA = ModelSchema.of(model())


def update(**changes: object) -> Envelope:
    fields: dict[str, object] = dict(
        kind="update",
        run_id="run-1",
        round=3,
        sender="north-01",
        region="north",
        num_examples=1440,
        tensors=model(),
        metrics={"train_loss": 0.5, "eval_examples": 360.0},
    )
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field_and_tensor() -> None:
    sent = update(contributors=["a", "b"], config={"local_epochs": 2}, stats={"updates_bytes": 7})
    got = decode(encode(sent), kinds={"update"}, max_bytes=LIMIT, schema=SCHEMA, run_id="run-1")
    assert (got.kind, got.run_id, got.round, got.sender, got.region) == (
        "update",
        "run-1",
        3,
        "north-01",
        "north",
    )
    assert got.num_examples == 1440
    assert got.metrics == sent.metrics
    assert got.contributors == ["a", "b"]
    assert got.config == {"local_epochs": 2}
    assert got.stats == {"updates_bytes": 7}
    for name, array in sent.tensors.items():
        np.testing.assert_array_equal(got.tensors[name], array)


def test_payload_is_plain_safetensors_any_reader_can_open() -> None:
    payload = encode(update())
    tensors = safetensors_load(payload)
    np.testing.assert_array_equal(tensors["net.0.bias"], model()["net.0.bias"])
    meta = read_metadata(payload)
    assert (
        meta["kind"] == "update"
        and meta["fogfl"] == "1"
        and json.loads(meta["metrics"])["train_loss"] == 0.5
    )


def test_envelope_overhead_is_under_one_percent_of_tensor_bytes() -> None:
    big = {"w": np.zeros((1000, 1000), np.float32)}
    payload = encode(update(tensors=big))
    assert len(payload) < 4_000_000 * 1.01


def test_float16_codec_halves_the_size_and_comes_back_as_float32() -> None:
    tensors = {"w": np.random.default_rng(1).normal(size=(256, 256)).astype(np.float32)}
    sent = update(tensors=tensors)
    half = encode(sent, "float16")
    assert len(half) < len(encode(sent)) * 0.52
    got = decode(half, kinds={"update"}, max_bytes=LIMIT, schema=ModelSchema.of(tensors))
    assert got.codec == "float16" and got.tensors["w"].dtype == np.float32
    error = np.linalg.norm(got.tensors["w"] - tensors["w"]) / np.linalg.norm(tensors["w"])
    assert 0 < error < 1e-3


def rejection(payload: bytes, **kwargs: object) -> str:
    options: dict[str, object] = {"kinds": {"update"}, "max_bytes": LIMIT, "schema": SCHEMA}
    options.update(kwargs)
    with pytest.raises(WireError) as caught:
        decode(payload, **options)  # type: ignore[arg-type]
    return caught.value.reason


def test_rejects_garbage_truncation_and_oversize() -> None:
    assert rejection(b"") == "malformed"
    assert rejection(b"not a safetensors file at all") == "malformed"
    assert rejection(encode(update())[:-10]) == "malformed"
    assert rejection(encode(update()), max_bytes=1000) == "oversized"
    header = b'{"__metadata__": {"fogfl": "1"'
    assert rejection(struct.pack("<Q", len(header)) + header) == "malformed"


def test_rejects_wrong_kind_run_version_and_fields() -> None:
    assert rejection(encode(update(kind="partial"))) == "wrong-kind"
    assert rejection(encode(update()), run_id="run-2") == "other-run"
    assert rejection(encode(update(sender="x/../y"))) == "bad-field"
    assert rejection(encode(update(run_id=""))) == "bad-field"
    payload = encode(update())
    assert rejection(payload.replace(b'"fogfl":"1"', b'"fogfl":"9"')) == "bad-version"


def test_rejects_wrong_shapes_and_missing_tensors_with_a_helpful_message() -> None:
    tensors = model()
    tensors["net.0.weight"] = np.zeros((32, 6), np.float32)
    with pytest.raises(WireError, match=r"shape \[32, 6\], the model has \[64, 6\]"):
        decode(encode(update(tensors=tensors)), kinds={"update"}, max_bytes=LIMIT, schema=SCHEMA)
    del tensors["net.0.weight"]
    assert rejection(encode(update(tensors=tensors))) == "wrong-tensors"


def test_rejects_nan_and_inf() -> None:
    tensors = model()
    tensors["net.0.bias"][5] = np.nan
    assert rejection(encode(update(tensors=tensors))) == "not-finite"
    tensors["net.0.bias"][5] = np.inf
    assert rejection(encode(update(tensors=tensors))) == "not-finite"


def test_rejects_non_numeric_metrics() -> None:
    payload = encode(update(metrics={"train_loss": 0.125}))
    # The same length: only the value's type changes.
    assert rejection(payload.replace(b":0.125}", b':\\"x\\"}')) == "bad-field"


def test_rejects_tensor_offsets_outside_the_payload() -> None:
    payload = encode(update(tensors={"w": np.zeros(4, np.float32)}))
    forged = payload.replace(b'"data_offsets":[0,16]', b'"data_offsets":[0,99]')
    assert forged != payload
    assert rejection(forged, schema=None) == "malformed"


def framed(header: object, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def header_of(payload: bytes) -> dict[str, Any]:
    (length,) = struct.unpack_from("<Q", payload)
    return json.loads(payload[8 : 8 + length])


def data_of(payload: bytes) -> bytes:
    (length,) = struct.unpack_from("<Q", payload)
    return payload[8 + length :]


def assert_fits_the_schema(message: Envelope) -> None:
    SCHEMA.check(message.tensors, "decoded")
    for spec in SCHEMA.tensors:
        array = message.tensors[spec.name]
        assert str(array.dtype) == spec.dtype and np.isfinite(array).all()
    assert all(math.isfinite(v) and abs(v) <= MAX_METRIC for v in message.metrics.values())
    assert 0 <= message.round <= MAX_COUNT and 0 <= message.num_examples <= MAX_COUNT


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(10**18) + 1, 10**18 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
# Nested at most one level: the header (depth 3) parses, and every check after it runs.
json_values = (
    json_leaves
    | st.lists(json_leaves, max_size=3)
    | st.dictionaries(st.text(max_size=4), json_leaves, max_size=2)
)
dims = st.integers(-2, 70) | st.integers(0, 10**18 - 1) | json_leaves
# Metadata JSON fields are strings inside the header: anything goes in them.
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)
metadata_values = (
    st.text(max_size=20)
    | st.sampled_from(["²", "١٤٤٠", "-1", "1e3", "NaN", "[" * 3000 + "]" * 3000])
    | any_json.map(json.dumps)
)


@st.composite
def fogfl_like_payloads(draw: st.DrawFn) -> bytes:
    """A header that parses — the metadata of a valid update with some values replaced by
    arbitrary text or JSON, and tensor entries of arbitrary dtype, shape and offsets —
    before arbitrary data bytes."""
    header = header_of(encode(update()))
    meta = header["__metadata__"]
    for key in draw(st.lists(st.sampled_from(sorted(meta)), max_size=3)):
        meta[key] = draw(metadata_values)
    for name in draw(st.lists(st.sampled_from([*SCHEMA.names, "x"]), max_size=3)):
        header[name] = {
            "dtype": draw(st.sampled_from(["F32", "F16", "F64", "I8", "BF16"]) | json_values),
            "shape": draw(st.lists(dims, max_size=3) | json_values),
            "data_offsets": draw(st.lists(st.integers(-2, 2000) | json_leaves, max_size=3)),
        }
    data = draw(st.sampled_from([data_of(encode(update())), b""]) | st.binary(max_size=1200))
    return framed(header, data)


@settings(max_examples=300, deadline=None)
@given(fogfl_like_payloads())
def test_arbitrary_headers_and_data_decode_to_the_schema_or_raise_wire_errors(
    payload: bytes,
) -> None:
    assert read_metadata(payload)  # every example gets past the header
    try:
        message = decode(payload, kinds={"update"}, max_bytes=LIMIT, schema=SCHEMA)
    except WireError:
        return
    assert_fits_the_schema(message)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_valid_payloads_decode_to_the_schema_or_raise_wire_errors(
    data: st.DataObject,
) -> None:
    # A fixed sent_at: the clock's digits would change the header's length between examples.
    payload = bytearray(encode(update(sent_at=1_700_000_000.25)))
    (length,) = struct.unpack_from("<Q", payload)
    letters = [
        i for i in range(8, 8 + length) if chr(payload[i]).isascii() and chr(payload[i]).isalpha()
    ]
    for _ in range(data.draw(st.integers(1, 3))):
        if data.draw(st.booleans()):  # a letter of the header: the JSON stays valid
            at = data.draw(st.sampled_from(letters))
            payload[at] = ord(data.draw(st.sampled_from("aeiouxyzAEIOUF")))
        else:  # any byte of the tensor data
            at = data.draw(st.integers(8 + length, len(payload) - 1))
            payload[at] = data.draw(st.integers(0, 255))
    assert read_metadata(bytes(payload)) is not None  # the header still parses
    try:
        message = decode(bytes(payload), kinds={"update"}, max_bytes=LIMIT, schema=SCHEMA)
    except WireError:
        return
    assert_fits_the_schema(message)


def test_counts_are_ascii_decimals_within_bounds() -> None:
    for text in ("²", "١٤٤٠", "３", "-1", "+3", " 3", "3.0", "1e3", "", str(MAX_COUNT + 1)):
        assert rejection(with_metadata(encode(update()), round=text)) == "bad-field", text
        assert rejection(with_metadata(encode(update()), num_examples=text)) == "bad-field"
    accepted = decode(
        encode(update(kind="partial", round=MAX_COUNT, num_examples=MAX_COUNT)),
        kinds={"partial"},
        max_bytes=LIMIT,
    )
    assert (accepted.round, accepted.num_examples) == (MAX_COUNT, MAX_COUNT)
    client = encode(update(num_examples=MAX_CLIENT_EXAMPLES))
    assert decode(client, kinds={"update"}, max_bytes=LIMIT).num_examples == MAX_CLIENT_EXAMPLES
    assert rejection(encode(update(num_examples=MAX_CLIENT_EXAMPLES + 1))) == "bad-field"
    assert metadata_count({"round": "007"}, "round") == 7
    with pytest.raises(WireError):
        metadata_count({"round": "٣"}, "round")


def with_metadata(payload: bytes, **values: str) -> bytes:
    header = header_of(payload)
    header["__metadata__"].update(values)
    return framed(header, data_of(payload))


def test_metrics_are_bounded_in_count_name_and_magnitude() -> None:
    def metrics(text: str) -> str:
        return rejection(with_metadata(encode(update()), metrics=text))

    for text in (
        '{"m": ' + "9" * 400 + "}",
        '{"m": 1e306}',
        '{"m": 1e400}',
        '{"m": NaN}',
        '{"m": true}',
        '{"m": "1"}',
        '{"m": 1, "m": 2}',
        "[1]",
    ):
        assert metrics(text) == "bad-field", text
    assert rejection(encode(update(metrics={"m" * 129: 1.0}))) == "bad-field"
    assert rejection(encode(update(metrics={f"m{i}": 1.0 for i in range(257)}))) == "bad-field"
    largest = {f"m{i}": MAX_METRIC for i in range(254)} | {"n": -MAX_METRIC, "m" * 128: 0.5}
    got = decode(encode(update(metrics=largest)), kinds={"update"}, max_bytes=LIMIT)
    assert got.metrics == largest


def test_shapes_and_offsets_are_plain_non_negative_integers() -> None:
    payload = encode(update(tensors={"w": np.zeros(4, np.float32)}))
    header, data = header_of(payload), data_of(payload)
    for shape in ([4.0], [True, 4], ["4"], [-4], [0, 1e30], [0, 2**40], [4] + [1] * 16):
        header["w"]["shape"] = shape
        assert rejection(framed(header, data), schema=None) == "malformed", shape
    header["w"]["shape"] = [4]
    for offsets in ([0.0, 16], [False, 16], [0, 16, 16], [0], [-1, 15], [4, 20], [16, 0]):
        header["w"]["data_offsets"] = offsets
        assert rejection(framed(header, data), schema=None) == "malformed", offsets
    header["w"]["data_offsets"] = [0, 16]
    header["w"]["extra"] = 1
    assert rejection(framed(header, data), schema=None) == "malformed"
    text = json.dumps({**header, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
    for raw in ("[Infinity]", "[NaN]", "[" + "9" * 20 + "]"):
        forged = text.replace('"shape": [4]', f'"shape": {raw}').encode()
        assert rejection(struct.pack("<Q", len(forged)) + forged + data, schema=None) == "malformed"


def test_tensors_must_cover_the_data_exactly() -> None:
    payload = encode(update(tensors={"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}))
    header, data = header_of(payload), data_of(payload)
    header["b"]["data_offsets"] = header["a"]["data_offsets"]  # both on the same bytes
    assert rejection(framed(header, data), schema=None) == "malformed"
    assert rejection(payload + b"\0\0\0\0", schema=None) == "malformed"  # bytes of no tensor


def test_the_header_is_bounded_by_the_schema_before_it_is_parsed() -> None:
    header = header_of(encode(update()))
    zero_size = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(9)}
    assert (
        rejection(framed({**header, **zero_size})) == "wrong-tensors"
    )  # 12 entries, 3 in the model
    padded = {**header, "__metadata__": {**header["__metadata__"], "pad": "x" * (5 << 20)}}
    assert rejection(framed(padded)) == "oversized"
    many = {**header, "__metadata__": {f"k{i}": "" for i in range(65)}}
    assert rejection(framed(many), schema=None) == "malformed"
    deep = b'{"__metadata__":{},"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    assert rejection(struct.pack("<Q", len(deep)) + deep, schema=None) == "malformed"


def test_json_fields_are_bounded_in_depth() -> None:
    fine = encode(update(config={"a": [[[[1]]]]}))
    assert decode(fine, kinds={"update"}, max_bytes=LIMIT).config == {"a": [[[[1]]]]}
    deep: object = 1
    for _ in range(17):
        deep = [deep]
    assert rejection(encode(update(config={"x": deep}))) == "bad-field"
    nested = with_metadata(encode(update()), config="[" * 5000 + "]" * 5000)
    assert rejection(nested) == "bad-field"


def test_read_metadata_is_total() -> None:
    assert (
        read_metadata(framed({"w": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})) == {}
    )
    for header in ({"__metadata__": {"round": 3}}, {"__metadata__": []}, [1, 2], "x"):
        with pytest.raises(WireError, match="not"):
            read_metadata(framed(header))
    for payload in (b"", b"\xff" * 8, struct.pack("<Q", 2**63)):
        with pytest.raises(WireError):
            read_metadata(payload)


def test_partial_stats_the_bridge_hands_on_are_counts() -> None:
    partial = update(kind="partial", stats={"weight": 1440, "rejected": {"late": 2}})
    assert decode(encode(partial), kinds={"partial"}, max_bytes=LIMIT).stats["weight"] == 1440
    for stats in ({"weight": -1}, {"weight": 1.5}, {"weight": "3"}, {"updates_bytes": True},
                  {"rejected": {"late": -1}}, {"rejected": [1]}):  # fmt: skip
        assert (
            rejection(encode(update(kind="partial", stats=stats)), kinds={"partial"}) == "bad-field"
        )


def test_round_and_evaluation_messages_carry_no_tensors() -> None:
    announcement = update(kind="round", schema=SCHEMA)
    assert rejection(encode(announcement), kinds={"round"}, schema=None) == "wrong-tensors"
    announcement.tensors = {}
    assert decode(encode(announcement), kinds={"round"}, max_bytes=LIMIT).schema == SCHEMA


def test_schema_json_is_bounded_and_total() -> None:
    assert ModelSchema.from_json(SCHEMA.to_json()) == SCHEMA
    for text in ("", "[]", "{}", "null", "[[1, [2], \"float32\"]]", '[["w", [2]]]',
                 '[["w", [2.0], "float32"]]', '[["w", [true], "float32"]]',
                 '[["w", [-1], "float32"]]', '[["w", [2], "float128"]]',
                 '[["w", [2], "float32"], ["w", [3], "float32"]]', '[["", [2], "float32"]]',
                 '[["w", [1e30], "float32"]]', '[["w", [' + "9" * 400 + '], "float32"]]',
                 "[" * 5000 + "]" * 5000):  # fmt: skip
        with pytest.raises(WireError) as caught:
            ModelSchema.from_json(text)
        assert caught.value.reason == "bad-schema", text[:40]
    big = json.dumps([["w", [2**14, 2**14], "float32"]])  # 512 MiB even as float16
    with pytest.raises(WireError, match="needs at least"):
        ModelSchema.from_json(big)
    with pytest.raises(WireError, match="needs at least"):
        ModelSchema.from_json(SCHEMA.to_json(), max_bytes=100)


def test_float64_arrays_from_a_strategy_are_cast_back_to_the_model_dtypes() -> None:
    arrays = [a.astype(np.float64) for a in SCHEMA.ordered(model())]
    named = SCHEMA.named(arrays)
    assert all(named[s.name].dtype == np.float32 for s in SCHEMA.tensors)
    decode(encode(update(tensors=named)), kinds={"update"}, max_bytes=LIMIT, schema=SCHEMA)


def test_wire_errors_survive_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(WireError("late", "round 3 is closed")))
    assert error.reason == "late" and str(error) == "round 3 is closed"
