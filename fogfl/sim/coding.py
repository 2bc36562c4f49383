"""Each tier's codec in the simulation, as the runtime will send it (issue 9).

Updates travel in `wire.update_codec`, partials and region models in `wire.partial_codec`,
the global model in `wire.global_codec` (each `wire.codec` unless set), then through
`wire.compression`. A lossy update is the delta from the model the client trained from,
with the client's error feedback (fogfl/codecs).

Until fogfl/wire.py carries the codecs itself, a message that needs them is built here:
the envelope's own metadata exactly as `wire.encode` writes it, plus the codec's, over the
codec's tensors, so its bytes are those the runtime will publish; decoding checks the
envelope's fields with `wire.decode` and the tensors with `fogfl.codecs`. A message the
wire already speaks (float32, or float16 that is no delta, uncompressed) goes through
`wire.encode` and `wire.decode` unchanged, as the roles send it today.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal, cast

from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from fogfl import wire
from fogfl.codecs import (
    LOSSY_CODECS,
    CodecHeader,
    ErrorFeedback,
    Reference,
    decode_model,
    encode_model,
)
from fogfl.config import WireSettings
from fogfl.errors import WireError
from fogfl.wire import Envelope, ModelSchema

Tier = Literal["update", "partial", "global"]
_CODEC_KEYS = frozenset(CodecHeader("float32", "zstd", "0" * 32, 0, 0).metadata())


@dataclass(frozen=True)
class TierCoding:
    """How one tier's messages travel."""

    codec: str = "float32"
    compression: str = "none"
    topk_fraction: float = 0.05
    error_feedback: bool = True

    @classmethod
    def of(cls, settings: WireSettings, tier: Tier) -> TierCoding:
        return cls(
            settings.tier_codec(tier),
            settings.compression,
            settings.topk_fraction,
            settings.error_feedback,
        )


def encode_message(
    message: Envelope,
    coding: TierCoding,
    reference: Reference | None = None,
    feedback: ErrorFeedback | None = None,
    signer: wire.Signer | None = None,
) -> bytes:
    """`message` as the runtime will publish it; an update's `reference` is the model the
    client trained from (a lossy codec then sends the delta from it); signed by `signer`
    as a secure federation signs models and partials."""
    delta = reference is not None and coding.codec in LOSSY_CODECS
    if coding.compression == "none" and coding.codec in wire.CODECS and not delta:
        return wire.encode(message, cast(wire.Codec, coding.codec), signer)
    schema = ModelSchema.of(message.tensors)
    encoded = encode_model(
        message.tensors,
        schema,
        coding.codec,
        compression=coding.compression,
        reference=reference if delta else None,
        feedback=feedback if delta and coding.error_feedback else None,
        topk_fraction=coding.topk_fraction,
    )
    fields = wire.read_metadata(wire.encode(replace(message, tensors={}), "float32"))
    if signer is not None:
        fields.update(signer=signer.name, signature=signer.placeholder)
    payload = safetensors_save(encoded.tensors, metadata={**fields, **encoded.metadata})
    return payload if signer is None else signer.seal(payload)


def decode_message(
    payload: bytes,
    *,
    kinds: Iterable[str],
    max_bytes: int,
    schema: ModelSchema,
    run_id: str | None = None,
    reference: Reference | None = None,
) -> Envelope:
    """A message of any tier's codec, checked as `wire.decode` checks it; a delta needs the
    `reference` it names."""
    meta = wire.read_metadata(payload)
    if (
        meta.get("codec") in wire.CODECS
        and meta.get("compression", "none") == "none"
        and "delta_from" not in meta
    ):
        return wire.decode(payload, kinds=kinds, max_bytes=max_bytes, schema=schema, run_id=run_id)
    if len(payload) > max_bytes:
        raise WireError(
            "oversized", f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}"
        )
    fields = {key: value for key, value in meta.items() if key not in _CODEC_KEYS}
    fields_only = safetensors_save({}, metadata={**fields, "codec": "float32"})
    message = wire.decode(fields_only, kinds=kinds, max_bytes=max_bytes, run_id=run_id)
    # The simulation decodes only payloads it made itself; the runtime's wire.decode will
    # check the header against codecs.wire_layout before it builds an array.
    message.tensors = decode_model(
        safetensors_load(payload), meta, schema, reference=reference, sender=message.sender
    )
    message.payload_bytes = len(payload)
    return message
