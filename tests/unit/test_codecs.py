"""The codecs: exact float32, the error of each lossy codec, byte sizes on fogfl's task
models, error feedback over many rounds, zstd, and hostile codec data, every way ending in
a WireError with a reason."""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
import zstandard
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from fogfl.codecs import (
    CODECS,
    LOSSY_CODECS,
    Encoded,
    ErrorFeedback,
    Reference,
    decode_model,
    encode_model,
    wire_layout,
)
from fogfl.codecs.blockwise import pack_int4, unpack_int4
from fogfl.codecs.casts import from_bfloat16, to_bfloat16
from fogfl.errors import FogflError, WireError
from fogfl.tasks import load_task
from fogfl.tasks.base import model_tensors
from fogfl.wire import Envelope, ModelSchema, encode, read_metadata

Model = dict[str, np.ndarray]
# Relative L2 error of a decoded delta (Gaussian deltas of the ECG5000 model's shapes;
# measured: float16 2.1e-4, bfloat16 1.7e-3, int8 1.1e-2, int4 0.11). docs/benchmarks.md.
ERROR_BOUND = {"float16": 5e-4, "bfloat16": 4e-3, "int8": 1.5e-2, "int4": 0.15}


def task_model(name: str) -> Model:
    return model_tensors(load_task(name).build_model(0))


@pytest.fixture(scope="module")
def ecg() -> Model:
    return task_model("ecg5000")


def with_counter(model: Model) -> Model:
    """The model plus an integer buffer (like BatchNorm's num_batches_tracked)."""
    return {**model, "bn.num_batches_tracked": np.array(7, dtype=np.int64)}


def trained(model: Model, seed: int = 1, step: float = 0.01) -> Model:
    rng = np.random.default_rng(seed)
    return {
        name: (array + step * rng.normal(size=array.shape)).astype(array.dtype)
        if array.dtype == np.float32
        else array
        for name, array in model.items()
    }


def relative_error(decoded: Model, sent: Model, reference: Model) -> float:
    num = sum(float(np.sum((decoded[k].astype(np.float64) - sent[k]) ** 2)) for k in sent)
    den = sum(float(np.sum((sent[k].astype(np.float64) - reference[k]) ** 2)) for k in sent)
    return math.sqrt(num / den)


def round_trip(
    model: Model, codec: str, reference: Model | None = None, compression: str = "none"
) -> tuple[Encoded, Model]:
    schema = ModelSchema.of(model)
    ref = Reference(reference, schema) if reference is not None else None
    encoded = encode_model(model, schema, codec, compression=compression, reference=ref)
    return encoded, decode_model(encoded.tensors, encoded.metadata, schema, reference=ref)


# Round trips and errors


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_float32_is_bit_identical_and_never_a_delta(ecg: Model, compression: str) -> None:
    model = with_counter(trained(ecg))
    encoded, decoded = round_trip(model, "float32", reference=with_counter(ecg))
    assert "delta_from" not in encoded.metadata
    for name, array in model.items():
        assert decoded[name].dtype == array.dtype
        assert decoded[name].tobytes() == array.tobytes()
    if compression == "none":
        # Without compression the message is the plain fogfl envelope of today: the
        # model's own tensors under their own names.
        assert set(encoded.tensors) == set(model)


@pytest.mark.parametrize("codec", sorted(ERROR_BOUND))
def test_each_lossy_codec_stays_within_its_documented_error(ecg: Model, codec: str) -> None:
    update = with_counter(trained(ecg))
    encoded, decoded = round_trip(update, codec, reference=with_counter(ecg))
    assert (
        encoded.metadata["delta_from"]
        == Reference(with_counter(ecg), ModelSchema.of(update)).digest
    )
    error = relative_error(decoded, update, with_counter(ecg))
    assert 0 < error <= ERROR_BOUND[codec]
    assert decoded["bn.num_batches_tracked"] == 7
    for name, array in update.items():
        assert decoded[name].shape == array.shape and decoded[name].dtype == array.dtype


def test_a_delta_is_far_more_accurate_than_the_model_itself(ecg: Model) -> None:
    update = trained(ecg, step=0.001)
    _, as_delta = round_trip(update, "int8", reference=ecg)
    _, as_model = round_trip(update, "int8")
    assert relative_error(as_delta, update, ecg) * 20 < relative_error(as_model, update, ecg)


def test_topk_sends_exactly_the_largest_entries_of_the_delta(ecg: Model) -> None:
    update = trained(ecg)
    encoded, decoded = round_trip(update, "topk", reference=ecg)
    delta = np.concatenate([(update[k] - ecg[k]).reshape(-1) for k in ecg])
    got = np.concatenate([(decoded[k] - ecg[k]).reshape(-1) for k in ecg])
    k = math.ceil(0.05 * delta.size)
    assert int(encoded.metadata["topk_k"]) == k
    sent = np.abs(got) > 0
    assert sent.sum() == k
    assert np.abs(delta[sent]).min() >= np.abs(delta[~sent]).max()
    np.testing.assert_allclose(got[sent], delta[sent], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("codec", CODECS)
def test_zstd_changes_the_bytes_never_the_model(ecg: Model, codec: str) -> None:
    update = with_counter(trained(ecg))
    plain, plain_model = round_trip(update, codec, with_counter(ecg))
    packed, packed_model = round_trip(update, codec, with_counter(ecg), compression="zstd")
    assert packed.metadata["compression"] == "zstd"
    assert set(packed.tensors) == {"__zstd__"}
    assert packed.nbytes < plain.nbytes
    for name in update:
        assert packed_model[name].tobytes() == plain_model[name].tobytes()


def test_zstd_that_would_not_help_sends_the_codec_uncompressed() -> None:
    noise = {"w": np.random.default_rng(0).integers(-127, 128, 4096).astype(np.int8)}
    schema = ModelSchema.of(noise)  # no float32 tensor: int8 noise travels verbatim
    encoded = encode_model(noise, schema, "float32", compression="zstd")
    assert "compression" not in encoded.metadata  # absent: none
    assert decode_model(encoded.tensors, encoded.metadata, schema)["w"].tobytes() == (
        noise["w"].tobytes()
    )


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_the_wire_layout_is_exactly_what_the_encoder_sends(
    ecg: Model, codec: str, compression: str
) -> None:
    update = with_counter(trained(ecg))
    encoded, _ = round_trip(update, codec, with_counter(ecg), compression)
    layout = wire_layout(ModelSchema.of(update), encoded.metadata)
    assert {s.name: (s.shape, s.dtype) for s in layout.tensors} == {
        name: (tuple(a.shape), str(a.dtype)) for name, a in encoded.tensors.items()
    }


def test_an_encoded_model_is_a_safetensors_message_of_the_envelope(ecg: Model) -> None:
    update = trained(ecg)
    encoded, _ = round_trip(update, "int8", reference=ecg, compression="zstd")
    envelope = read_metadata(
        encode(Envelope("update", "run1", 3, "n-01", "north", 70, tensors=update))
    )
    payload = safetensors_save(encoded.tensors, metadata={**envelope, **encoded.metadata})
    assert read_metadata(payload)["codec"] == "int8"
    schema = ModelSchema.of(update)
    decoded = decode_model(
        safetensors_load(payload), read_metadata(payload), schema, reference=Reference(ecg, schema)
    )
    assert relative_error(decoded, update, ecg) < ERROR_BOUND["int8"]


# The codecs' own arithmetic


def test_float16_casts_give_numpys_bits_with_torch_loaded() -> None:
    from fogfl.codecs import casts

    rng = np.random.default_rng(0)
    # Every finite float32 exponent (random bit patterns), and every float16 value.
    wide = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    values = wide.view(np.float32)
    values = values[np.isfinite(values) & (np.abs(values) <= 65504)]
    assert values.size > casts._TORCH_CAST_MIN
    half = casts._cast(values, np.float16)
    np.testing.assert_array_equal(half.view(np.uint16), values.astype(np.float16).view(np.uint16))
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]
    # A payload's tensor: read-only, and not 2-byte aligned in its buffer.
    payload = bytes(1) + finite.tobytes()
    wire = np.frombuffer(payload, dtype=np.float16, offset=1)
    back = casts._cast(wire, np.float32)
    np.testing.assert_array_equal(back.view(np.uint32), finite.astype(np.float32).view(np.uint32))


def test_bfloat16_rounds_to_nearest_even_like_torch() -> None:
    rng = np.random.default_rng(0)
    edges = np.array(
        [
            1 + 2**-8,  # halfway between 1 and the next bfloat16: ties to even, down
            1 + 3 * 2**-8,  # halfway, the lower neighbour odd: up
            -(1 + 2**-8),
            np.finfo(np.float32).max,  # rounds to bfloat16's largest, not to Inf
            -np.finfo(np.float32).max,
            np.finfo(np.float32).tiny,
            1e-40,  # subnormal
            0.0,
            -0.0,
        ],
        dtype=np.float32,
    )
    values = np.concatenate([edges, rng.normal(size=10_000).astype(np.float32) * 1e3])
    ours = to_bfloat16(values)
    theirs = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy()
    finite = np.abs(values) < 3.38e38  # torch rounds the largest float32 values to Inf
    assert np.array_equal(ours[finite], theirs.view(np.uint16)[finite])
    assert np.isfinite(from_bfloat16(ours)).all()
    assert from_bfloat16(to_bfloat16(np.array([1 + 2**-8], np.float32)))[0] == 1.0


def test_int4_packs_two_levels_a_byte_low_nibble_first() -> None:
    levels = np.array([-8, 7, -1, 0, 3, -7], dtype=np.int8)
    packed = pack_int4(levels)
    assert packed.tolist() == [0x78, 0x0F, 0x93]
    assert unpack_int4(packed).tolist() == levels.tolist()
    every = np.array([(lo, hi) for lo in range(-8, 8) for hi in range(-8, 8)], np.int8).ravel()
    assert np.array_equal(unpack_int4(pack_int4(every)), every)


def test_int8_reads_as_documented_levels_times_powers_of_two(ecg: Model) -> None:
    """docs/protocol.md "Codecs", int8, followed with numpy alone: one int8 tensor, the
    levels of the model vector and then one exponent e per block of 256 values (per
    tensor), the smallest that covers the block's absmax at level 127; value = reference
    + level × 2^e."""
    update = trained(ecg)
    encoded, decoded = round_trip(update, "int8", reference=ecg)
    assert set(encoded.tensors) == {"__int8__"} and encoded.tensors["__int8__"].dtype == np.int8
    n = sum(array.size for array in ecg.values())
    levels, exponents = encoded.tensors["__int8__"][:n], encoded.tensors["__int8__"][n:]
    block, at = 0, 0
    for name, start in ecg.items():
        delta = (update[name] - start).reshape(-1)
        values = np.empty(delta.size, np.float32)
        for cut in range(0, delta.size, 256):
            scale = 2.0 ** int(exponents[block])
            absmax = float(np.abs(delta[cut : cut + 256]).max())
            assert absmax <= 127 * scale and (absmax > 127 * scale / 2 or scale == 2.0**-127)
            own = levels[at + cut : at + min(cut + 256, delta.size)]
            values[cut : cut + own.size] = own.astype(np.float32) * np.float32(scale)
            block += 1
        at += delta.size
        expected = start.reshape(-1) + values
        assert decoded[name].reshape(-1).tobytes() == expected.tobytes()
    assert block == exponents.size and at == levels.size


def test_int8_sends_zeros_and_tiny_blocks_and_refuses_what_it_cannot_scale() -> None:
    model = {"w": np.zeros(300, np.float32)}
    model["w"][260] = 1e-37  # below 127 × 2^-127: the second block takes the smallest scale
    encoded, decoded = round_trip(model, "int8")
    assert encoded.tensors["__int8__"][300:].tolist() == [-127, -127]
    assert not decoded["w"][:256].any()
    assert abs(float(decoded["w"][260]) - 1e-37) <= 2.0**-128  # half a step of 2^-127
    huge = {"w": np.full(4, 2e38, np.float32)}
    with pytest.raises(FogflError, match="beyond"):
        round_trip(huge, "int8")


def test_the_reference_digest_is_blake2b_of_the_tensors_in_schema_order(ecg: Model) -> None:
    model = with_counter(ecg)
    expected = hashlib.blake2b(digest_size=16)
    for array in model.values():
        expected.update(array.tobytes())
    assert Reference(model, ModelSchema.of(model)).digest == expected.hexdigest()


# Sizes on fogfl's task models


@pytest.mark.parametrize("task", ["ecg5000", "qoe"])
def test_int8_and_topk_fit_the_uplink_byte_budgets(task: str) -> None:
    model = task_model(task)
    update = trained(model)
    float32 = sum(a.nbytes for a in model.values())
    sizes = {codec: round_trip(update, codec, model)[0].nbytes for codec in CODECS}
    assert sizes["float32"] == float32
    assert sizes["float16"] == sizes["bfloat16"] == float32 // 2
    assert sizes["int8"] <= 0.26 * float32
    assert sizes["int4"] <= 0.15 * float32
    assert sizes["topk"] <= 0.12 * float32


# Error feedback


def accumulated_error(codec: str, feedback: ErrorFeedback | None, rounds: int) -> list[float]:
    """A federation of one client whose every round moves the model by a steady drift
    plus noise, sent as a delta from the model the server holds. Returns, after each
    round, ‖the server's model − the model of exact updates‖."""
    rng = np.random.default_rng(3)
    shapes = {"w": (64, 48), "b": (48,)}
    drift = {k: rng.normal(size=s).astype(np.float32) * 1e-3 for k, s in shapes.items()}
    held = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    exact = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    schema = ModelSchema.of(held)
    errors = []
    for _ in range(rounds):
        step = {
            k: drift[k] + rng.normal(size=s).astype(np.float32) * 1e-3 for k, s in shapes.items()
        }
        reference = Reference(held, schema)
        update = {k: held[k] + step[k] for k in shapes}
        encoded = encode_model(update, schema, codec, reference=reference, feedback=feedback)
        held = decode_model(encoded.tensors, encoded.metadata, schema, reference=reference)
        for k in shapes:
            exact[k] += step[k]
        errors.append(math.sqrt(sum(float(np.sum((held[k] - exact[k]) ** 2)) for k in shapes)))
    return errors


@pytest.mark.parametrize("codec", ["topk", "int4", "int8"])
def test_error_feedback_keeps_the_accumulated_error_bounded(codec: str) -> None:
    without = accumulated_error(codec, None, 60)
    with_feedback = accumulated_error(codec, ErrorFeedback(), 60)
    # Without feedback every round's error adds up: the gap keeps growing.
    assert without[-1] > 1.5 * without[19]
    # With it the gap settles (top-k's after ~30 rounds) at about one round's compression
    # error, however many rounds pass.
    assert with_feedback[-1] < 1.2 * with_feedback[29]
    assert with_feedback[-1] * 4 < without[-1]


def test_error_feedback_keeps_what_was_dropped_and_forgets_another_model(ecg: Model) -> None:
    schema = ModelSchema.of(ecg)
    feedback = ErrorFeedback()
    assert feedback.norm == 0
    update = trained(ecg)
    encoded = encode_model(
        update, schema, "topk", reference=Reference(ecg, schema), feedback=feedback
    )
    decoded = decode_model(
        encoded.tensors, encoded.metadata, schema, reference=Reference(ecg, schema)
    )
    dropped = math.sqrt(sum(float(np.sum((update[k] - decoded[k]) ** 2)) for k in ecg))
    assert feedback.norm == pytest.approx(dropped, rel=1e-5)
    other = {"w": np.ones(10, np.float32)}
    other_schema = ModelSchema.of(other)
    encode_model(
        other, other_schema, "int8", reference=Reference(other, other_schema), feedback=feedback
    )
    assert feedback.norm == 0  # the delta was zero, and the old model's residual is gone


# Encoder inputs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m, s: encode_model(m, s, "int3"), "unknown codec"),
        (lambda m, s: encode_model(m, s, "int8", compression="gzip"), "unknown compression"),
        (lambda m, s: encode_model(m, s, "topk"), "give the reference"),
        (
            lambda m, s: encode_model(m, s, "topk", reference=Reference(m, s), topk_fraction=0),
            "topk_fraction",
        ),
        (lambda m, s: encode_model(m, s, "int8", feedback=ErrorFeedback()), "reference"),
        (lambda m, s: encode_model({"w": m["w"]}, s, "int8"), "missing"),
        (lambda m, s: encode_model({**m, "w": m["w"].astype(np.float64)}, s, "int8"), "float64"),
    ],
)
def test_bad_encoder_inputs_are_fogfl_errors(
    change: Callable[[Model, ModelSchema], object], message: str
) -> None:
    model = {"w": np.ones((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    with pytest.raises(FogflError, match=message):
        change(model, ModelSchema.of(model))


@pytest.mark.parametrize("codec", sorted(LOSSY_CODECS))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_model_with_nan_or_inf_is_not_encoded(codec: str, bad: float) -> None:
    model = {"w": np.ones(300, np.float32)}
    schema = ModelSchema.of(model)
    reference = Reference({"w": np.zeros(300, np.float32)}, schema)
    model["w"][7] = bad
    with pytest.raises(FogflError, match=r"NaN|Inf|range"):
        encode_model(model, schema, codec, reference=reference)


def test_float16_refuses_values_beyond_its_range() -> None:
    model = {"w": np.full(4, 70_000.0, np.float32)}
    with pytest.raises(FogflError, match="bfloat16"):
        encode_model(model, ModelSchema.of(model), "float16")
    _, decoded = round_trip(model, "bfloat16")
    assert decoded["w"][0] == pytest.approx(70_000, rel=4e-3)


# Hostile codec data


def hostile(
    codec: str,
    change: Callable[[dict[str, np.ndarray], dict[str, str]], None],
    compression: str = "none",
    reference_model: Model | None = None,
) -> WireError:
    """The WireError of decoding an encoded model after `change` edits its tensors or
    metadata in place."""
    model = with_counter(
        {
            # A ramp five times over: its int8 levels repeat, so zstd has something to gain.
            "w": np.tile(np.linspace(-1, 1, 60, dtype=np.float32), 5).reshape(20, 15),
            "b": np.ones(5, np.float32),
        }
    )
    base = {k: (v * 0.9).astype(v.dtype) if v.dtype == np.float32 else v for k, v in model.items()}
    schema = ModelSchema.of(model)
    reference = Reference(base, schema) if codec != "float32" else None
    encoded = encode_model(model, schema, codec, compression=compression, reference=reference)
    tensors = {k: np.array(v) for k, v in encoded.tensors.items()}
    meta = dict(encoded.metadata)
    change(tensors, meta)
    receiver = reference if reference_model is None else Reference(reference_model, schema)
    with pytest.raises(WireError) as caught:
        decode_model(tensors, meta, schema, reference=receiver, sender="n-01")
    return caught.value


def setter(name: str, value: object) -> Callable[[dict[str, np.ndarray], dict[str, str]], None]:
    def change(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
        tensors[name] = np.asarray(value, dtype=tensors[name].dtype)

    return change


def element(
    name: str, index: int, value: float
) -> Callable[[dict[str, np.ndarray], dict[str, str]], None]:
    def change(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
        tensors[name][index] = value

    return change


def meta_set(
    key: str, value: str | None
) -> Callable[[dict[str, np.ndarray], dict[str, str]], None]:
    def change(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value

    return change


HOSTILE = [
    # (codec, compression, change, reason)
    ("topk", "none", element("__indices__", -1, 305), "bad-index"),  # past the 305 coded values
    ("topk", "none", element("__indices__", 0, -1), "bad-index"),
    ("topk", "none", element("__indices__", 3, 0), "bad-index"),  # not increasing
    ("topk", "none", lambda t, m: t.update(__indices__=t["__indices__"][::-1].copy()), "bad-index"),
    ("topk", "none", element("__values__", 2, np.nan), "not-finite"),
    ("topk", "none", meta_set("topk_k", "306"), "bad-codec"),
    ("topk", "none", meta_set("topk_k", "15"), "wrong-shape"),  # 16 indices were sent
    ("topk", "none", meta_set("topk_k", None), "bad-field"),
    ("topk", "none", meta_set("delta_from", None), "bad-codec"),
    # int8's exponents follow the 305 levels: 3 blocks (256 + 44 of w, 5 of b).
    ("int8", "none", element("__int8__", 305, 121), "bad-scale"),  # −128 × 2^121 overflows
    ("int8", "none", element("__int8__", -1, 127), "bad-scale"),
    ("int8", "none", setter("__int8__", np.zeros(307)), "wrong-shape"),  # 305 + 3 = 308
    ("int4", "none", element("__scales__", 1, np.nan), "not-finite"),
    ("int4", "none", element("__scales__", 1, np.inf), "not-finite"),
    ("int4", "none", element("__scales__", 0, -0.5), "bad-scale"),
    ("int4", "none", element("__scales__", 0, 5e37), "bad-scale"),  # 8 × it overflows
    ("int4", "none", setter("__scales__", np.ones(7)), "wrong-shape"),  # 6: 64 × 4 + 44, 5
    ("int4", "none", setter("__int4__", np.zeros(150)), "wrong-shape"),
    ("int8", "none", lambda t, m: t.update(__int8__=t["__int8__"].view(np.uint8)), "wrong-dtype"),
    ("int4", "none", lambda t, m: t.pop("__scales__"), "wrong-tensors"),
    ("int8", "none", lambda t, m: t.update(extra=np.zeros(1, np.float32)), "wrong-tensors"),
    ("int8", "none", lambda t, m: t.pop("bn.num_batches_tracked"), "wrong-tensors"),
    ("float16", "none", element("w", 3, np.inf), "not-finite"),
    ("bfloat16", "none", element("w", 3, 0x7FC0), "not-finite"),  # a NaN pattern
    ("float32", "none", element("w", 3, np.nan), "not-finite"),
    ("int8", "none", meta_set("codec", "int9"), "bad-codec"),
    ("int8", "none", meta_set("codec", None), "bad-codec"),
    ("int8", "none", meta_set("compression", "brotli"), "bad-codec"),
    ("int8", "none", meta_set("delta_from", "ABC"), "bad-codec"),
    ("int8", "none", meta_set("delta_from", "0" * 32), "wrong-reference"),
    ("float32", "none", meta_set("delta_from", "0" * 32), "bad-codec"),
    ("int8", "zstd", meta_set("compressed_bytes", "999999"), "bad-codec"),  # ≥ raw bytes
    ("int8", "zstd", meta_set("compressed_bytes", "x"), "bad-field"),
    ("int8", "zstd", meta_set("compressed_bytes", "20"), "wrong-shape"),
    ("int8", "zstd", meta_set("compression", "none"), "wrong-tensors"),
]


@pytest.mark.parametrize(("codec", "compression", "change", "reason"), HOSTILE)
def test_hostile_codec_data_is_a_wire_error_with_its_reason(
    codec: str,
    compression: str,
    change: Callable[[dict[str, np.ndarray], dict[str, str]], None],
    reason: str,
) -> None:
    error = hostile(codec, change, compression)
    assert error.reason == reason, str(error)


def test_a_delta_from_another_model_is_refused() -> None:
    model = {"w": np.ones(8, np.float32)}
    schema = ModelSchema.of(model)
    encoded = encode_model(model, schema, "int8", reference=Reference(model, schema))
    other = Reference({"w": np.zeros(8, np.float32)}, schema)
    for receiver in (None, other):
        with pytest.raises(WireError) as caught:
            decode_model(encoded.tensors, encoded.metadata, schema, reference=receiver)
        assert caught.value.reason == "wrong-reference"


def zstd_frame(
    change: Callable[[bytes], bytes],
) -> Callable[[dict[str, np.ndarray], dict[str, str]], None]:
    def edit(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
        frame = change(tensors["__zstd__"].tobytes())
        tensors["__zstd__"] = np.frombuffer(frame, np.uint8).copy()
        meta["compressed_bytes"] = str(len(frame))

    return edit


def refram(size: int) -> Callable[[bytes], bytes]:
    """A valid frame of `size` zero bytes, in place of the sender's."""
    return lambda _: zstandard.ZstdCompressor().compress(bytes(size))


def bomb(_: bytes) -> bytes:
    """The first 22 bytes of a frame of 1 GB of zeros: its header states the size."""
    stream = zstandard.ZstdCompressor().compressobj(size=10**9)
    return stream.compress(bytes(1000)) + stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f + b"junk", "bad-compression"),  # bytes after the frame
        (lambda f: f[:-4], "bad-compression"),  # truncated
        (lambda f: b"\x00" * len(f), "bad-compression"),  # not a frame
        (bomb, "oversized"),  # states 1 GB: refused before inflating
        (refram(100), "bad-compression"),  # fewer bytes than the layout needs
        (
            lambda f: zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1000)),
            "bad-compression",
        ),  # no content size stated
    ],
)
def test_a_hostile_zstd_frame_is_refused_before_it_inflates(
    change: Callable[[bytes], bytes], reason: str
) -> None:
    error = hostile("int8", zstd_frame(change), compression="zstd")
    assert error.reason == reason, str(error)


def test_a_frame_lying_about_its_size_is_refused() -> None:
    def lie(frame: bytes) -> bytes:
        # Compress one byte more than the layout needs, then state the layout's size.
        raw = bytes(zstandard.frame_content_size(frame) + 1)
        honest = zstandard.ZstdCompressor().compress(raw)
        short = zstandard.ZstdCompressor().compress(raw[:-1])
        header = zstandard.frame_header_size(honest)
        assert zstandard.frame_header_size(short) == header
        return short[:header] + honest[header:]

    error = hostile("int8", zstd_frame(lie), compression="zstd")
    assert error.reason == "bad-compression", str(error)


def test_a_delta_that_overflows_with_its_reference_is_refused() -> None:
    big = np.finfo(np.float32).max
    model = {"w": np.full(4, big, np.float32)}
    schema = ModelSchema.of(model)
    encoded = encode_model(
        model, schema, "bfloat16", reference=Reference({"w": np.zeros(4, np.float32)}, schema)
    )
    receiver = Reference({"w": np.full(4, big, np.float32)}, schema)
    meta = {**encoded.metadata, "delta_from": receiver.digest}
    with pytest.raises(WireError) as caught:
        decode_model(encoded.tensors, meta, schema, reference=receiver)
    assert caught.value.reason == "not-finite"


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_mutated_codec_data_decodes_to_the_model_or_fails_with_a_reason(
    codec: str, compression: str
) -> None:
    """Random byte flips and truncations of every codec tensor, and random metadata
    values: each decodes to finite tensors of the schema or raises WireError."""
    rng = np.random.default_rng(zlib.crc32(f"{codec}-{compression}".encode()))
    model = with_counter(
        {"w": rng.normal(size=(40, 9)).astype(np.float32), "b": np.ones(9, np.float32)}
    )
    schema = ModelSchema.of(model)
    reference = Reference(
        {k: v * 0 if v.dtype == np.float32 else v for k, v in model.items()}, schema
    )
    encoded = encode_model(model, schema, codec, compression=compression, reference=reference)
    junk_values = [
        "",
        "-1",
        "1e3",
        "99999999999999999999",
        "zstd",
        "none",
        "int8",
        "topk",
        "0" * 32,
    ]
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(150):
        tensors = {k: np.array(v) for k, v in encoded.tensors.items()}
        meta = dict(encoded.metadata)
        name = str(rng.choice(sorted(tensors)))
        raw = bytearray(tensors[name].tobytes())
        if rng.random() < 0.2 and raw:
            raw = raw[: int(rng.integers(0, len(raw)))]
            tensors[name] = np.frombuffer(bytes(raw), np.uint8).copy()
        elif raw:
            for _ in range(int(rng.integers(1, 4))):
                raw[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
            tensors[name] = (
                np.frombuffer(bytes(raw), tensors[name].dtype).reshape(tensors[name].shape).copy()
            )
        if rng.random() < 0.3:
            key = str(
                rng.choice(["codec", "compression", "delta_from", "topk_k", "compressed_bytes"])
            )
            meta[key] = str(rng.choice(junk_values))
        try:
            decoded = decode_model(tensors, meta, schema, reference=reference)
        except WireError as error:
            assert error.reason and str(error)
            outcomes["refused"] += 1
            continue
        outcomes["decoded"] += 1
        for spec in schema.tensors:
            assert decoded[spec.name].shape == spec.shape
            assert str(decoded[spec.name].dtype) == spec.dtype
            if spec.dtype == "float32":
                assert np.isfinite(decoded[spec.name]).all()
    assert outcomes["refused"] > 0
