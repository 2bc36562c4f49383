"""The wire speaks every codec: `encode` and `decode` round-trip each one (deltas against
the reference they name, signed or not), float32 and float16 keep their old bytes, and
a delta from another model, or a header that does not fit the codec's layout, is
rejected before any array is built."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import save as safetensors_save

from fogfl.codecs import CODECS, ErrorFeedback, Reference, decode_model, encode_model
from fogfl.errors import WireError
from fogfl.security.signing import Signer, TrustPolicy
from fogfl.wire import Envelope, ModelSchema, decode, encode, read_metadata

LIMIT = 10_000_000
KEY = Ed25519PrivateKey.generate()


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "net.0.weight": rng.normal(size=(64, 6)).astype(np.float32),
        "net.0.bias": rng.normal(size=64).astype(np.float32),
        "steps": np.array([7], dtype=np.int64),  # verbatim under every codec
    }


SCHEMA = ModelSchema.of(model())
START = Reference(model(1), SCHEMA)


def update(**changes: object) -> Envelope:
    fields: dict[str, object] = dict(
        kind="update",
        run_id="run-1",
        round=3,
        sender="north-01",
        region="north",
        num_examples=1440,
        tensors=model(),
    )
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def received(payload: bytes, reference: Reference | None = START, **options: object) -> Envelope:
    return decode(
        payload,
        kinds={"update", "partial"},
        max_bytes=LIMIT,
        schema=SCHEMA,
        reference=reference,
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_every_codec_decodes_as_the_codec_library_does(codec: str, compression: str) -> None:
    message = update()
    payload = encode(message, codec, compression=compression, reference=START)  # type: ignore[arg-type]
    got = received(payload)
    sent = encode_model(message.tensors, SCHEMA, codec, compression=compression, reference=START)
    expected = decode_model(sent.tensors, sent.metadata, SCHEMA, reference=START)
    assert got.codec == codec and got.num_examples == 1440
    assert list(got.tensors) == SCHEMA.names
    for name, tensor in expected.items():
        assert got.tensors[name].dtype == tensor.dtype
        np.testing.assert_array_equal(got.tensors[name], tensor)
    assert read_metadata(payload).get("delta_from") == (
        None if codec == "float32" else START.digest
    )


def test_float32_and_float16_without_a_delta_keep_their_bytes() -> None:
    message = update(sent_at=1.5)
    for codec in ("float32", "float16"):
        assert "compression" not in read_metadata(encode(message, codec))  # type: ignore[arg-type]
    plain = encode(message, "float32", reference=START)
    # Same length, same metadata (safetensors writes the metadata in no fixed order).
    assert len(plain) == len(encode(message, "float32"))
    assert read_metadata(plain) == read_metadata(encode(message, "float32"))
    np.testing.assert_array_equal(
        received(plain, None).tensors["net.0.bias"], model()["net.0.bias"]
    )


def test_a_delta_needs_the_model_it_names() -> None:
    payload = encode(update(), "int8", reference=START)
    other = Reference(model(2), SCHEMA)
    for reference in (None, other):
        with pytest.raises(WireError) as caught:
            received(payload, reference)
        assert caught.value.reason == "wrong-reference"
    # Without a schema (the monitor) the tensors stay as they travel.
    raw = decode(payload, kinds={"update"}, max_bytes=LIMIT)
    assert set(raw.tensors) == {"__int8__", "steps"}


def test_error_feedback_keeps_what_the_codec_dropped() -> None:
    feedback = ErrorFeedback()
    encode(update(), "topk", reference=START, feedback=feedback, topk_fraction=0.1)
    assert feedback.norm > 0


def test_signatures_cover_every_codec() -> None:
    signer = Signer("fog-north", KEY)
    trust = TrustPolicy({"fog-north": KEY.public_key()})
    for codec in CODECS:
        payload = encode(update(kind="partial"), codec, signer, reference=START)  # type: ignore[arg-type]
        received(payload, verify=trust)
        forged = bytearray(payload)
        forged[-1] ^= 1
        with pytest.raises(WireError) as caught:
            received(bytes(forged), verify=trust)
        assert caught.value.reason == "bad-signature"


def test_a_header_that_does_not_fit_the_codec_is_rejected() -> None:
    meta = read_metadata(encode(update(), "int8", reference=START))
    # 448 levels, then the exponents of 3 blocks (256 + 128 of the weight, 64 of the bias).
    short: dict[str, np.ndarray] = {
        "__int8__": np.zeros(448 + 2, np.int8),
        "steps": np.array([7], np.int64),
    }
    out_of_range = {**short, "__int8__": np.full(448 + 3, 121, np.int8)}  # exponents ≤ 120
    cases = {
        "wrong-shape": safetensors_save(short, metadata=meta),
        "bad-scale": safetensors_save(out_of_range, metadata=meta),
        "bad-codec": safetensors_save(out_of_range, metadata={**meta, "codec": "int9"}),
        "wrong-tensors": safetensors_save(model(), metadata=meta),
    }
    for reason, payload in cases.items():
        with pytest.raises(WireError) as caught:
            received(payload)
        assert caught.value.reason == reason, caught.value


def test_an_int8_update_of_the_ecg5000_model_is_at_most_26_percent_of_float32() -> None:
    """Issue 9's uplink budget for the whole message a client publishes: the envelope as
    a client fills it (a run id as `new_run_id` makes them, every metric at full
    precision), not only the codec's tensors."""
    from fogfl.tasks import load_task
    from fogfl.tasks.base import model_tensors

    start = model_tensors(load_task("ecg5000").build_model(0))
    rng = np.random.default_rng(0)
    trained = {
        k: v + np.float32(0.01) * rng.standard_normal(v.shape, np.float32) for k, v in start.items()
    }
    message = Envelope(
        "update",
        "20261201-120000-ab12cd",
        12,
        "north-01",
        "north",
        560,
        tensors=trained,
        metrics={
            "train_loss": 0.7611311078071594,
            "eval_loss": 1.7155308723449707,
            "eval_examples": 22.0,
            "eval_accuracy": 0.6363636363636364,
            "train_seconds": 1.2345678901234567,
            "download_seconds": 0.012345678901234567,
        },
        sent_at=1796174427.8698359,
    )
    reference = Reference(start, ModelSchema.of(start))
    float32 = len(encode(message, "float32"))
    int8 = len(encode(message, "int8", reference=reference))
    assert int8 <= 0.26 * float32, f"{int8} bytes, {int8 / float32:.2%} of float32's {float32}"
