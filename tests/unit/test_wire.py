"""The wire envelope: round trips, the open safetensors format, and every rejection."""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as safetensors_load

from fogfl.errors import WireError
from fogfl.wire import Envelope, ModelSchema, decode, encode, read_metadata

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
    payload = encode(update(metrics={"train_loss": 1.0}))
    assert (
        rejection(payload.replace(b'{\\"train_loss\\": 1.0}', b'{\\"train_loss\\": \\"x\\"}'))
        == "bad-field"
    )


def test_rejects_tensor_offsets_outside_the_payload() -> None:
    payload = encode(update(tensors={"w": np.zeros(4, np.float32)}))
    forged = payload.replace(b'"data_offsets":[0,16]', b'"data_offsets":[0,99]')
    assert forged != payload
    assert rejection(forged, schema=None) == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_wire_errors(payload: bytes) -> None:
    with contextlib.suppress(WireError):
        decode(payload, kinds={"update"}, max_bytes=LIMIT, schema=SCHEMA)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2000), st.binary(min_size=1, max_size=8))
def test_corrupted_valid_payloads_raise_only_wire_errors(position: int, junk: bytes) -> None:
    payload = bytearray(encode(update(tensors={"w": np.ones(3, np.float32)})))
    position %= len(payload)
    payload[position : position + len(junk)] = junk
    with contextlib.suppress(WireError):
        decode(bytes(payload), kinds={"update"}, max_bytes=LIMIT)


def test_float64_arrays_from_a_strategy_are_cast_back_to_the_model_dtypes() -> None:
    arrays = [a.astype(np.float64) for a in SCHEMA.ordered(model())]
    named = SCHEMA.named(arrays)
    assert all(named[s.name].dtype == np.float32 for s in SCHEMA.tensors)
    decode(encode(update(tensors=named)), kinds={"update"}, max_bytes=LIMIT, schema=SCHEMA)


def test_wire_errors_survive_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(WireError("late", "round 3 is closed")))
    assert error.reason == "late" and str(error) == "round 3 is closed"
