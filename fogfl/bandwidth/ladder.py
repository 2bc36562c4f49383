"""From a share of the model's bytes to a concrete update codec.

The agent's ten actions are shares of the float32 update's bytes, 10 % … 100 %. A share
maps to the most faithful codec of the ladder whose bytes fit in it. Each rung's byte
ratio (tensor bytes per float32 byte, the codec's scales and indices included, headers
not) and fidelity (1 − the relative L2 error it leaves) are measured with fogfl's own
codecs (`fogfl.codecs`), once per process, on a delta of 2¹⁶ standard normal values in
one tensor: the same code the clients send their updates with. Top-k's fidelity is one
round's, without error feedback.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from fogfl.errors import BandwidthError

PROBE_VALUES = 2**16
PROBE_SEED = 0
TOPK_FRACTIONS = (0.2, 0.1, 0.05)
CODEC_ORDER = ("float32", "float16", "bfloat16", "int8", "int4")


@dataclass(frozen=True)
class CodecStep:
    """One rung: a codec (with its top-k fraction), its byte ratio and its fidelity."""

    codec: str
    byte_ratio: float
    fidelity: float
    topk_fraction: float | None = None

    @property
    def label(self) -> str:
        return self.codec if self.topk_fraction is None else f"topk_{self.topk_fraction:g}"


def measure(codec: str, topk_fraction: float | None = None) -> CodecStep:
    """A rung as fogfl's codecs code the probe delta (see the module's docstring)."""
    from fogfl.codecs import Reference, decode_model, encode_model
    from fogfl.wire import ModelSchema

    delta = np.random.default_rng(PROBE_SEED).standard_normal(PROBE_VALUES).astype(np.float32)
    start = {"w": np.zeros(PROBE_VALUES, dtype=np.float32)}
    schema = ModelSchema.of(start)
    reference = Reference(start, schema)
    coded = encode_model(
        {"w": delta},
        schema,
        codec,
        reference=reference if codec != "float32" else None,
        topk_fraction=topk_fraction or 0.05,
    )
    decoded = decode_model(coded.tensors, coded.metadata, schema, reference=reference)["w"]
    error = float(np.linalg.norm(decoded - delta) / np.linalg.norm(delta))
    return CodecStep(codec, coded.nbytes / delta.nbytes, 1.0 - error, topk_fraction)


@cache
def ladder() -> tuple[CodecStep, ...]:
    """Every rung, measured once per process."""
    return tuple(measure(codec) for codec in CODEC_ORDER) + tuple(
        measure("topk", fraction) for fraction in TOPK_FRACTIONS
    )


LADDER = ladder()
SHARES: tuple[float, ...] = tuple((action + 1) / 10 for action in range(10))
ACTIONS = len(SHARES)


def step_named(label: str) -> CodecStep:
    """The ladder's rung of that label (`float16`, `int8`, `topk_0.05`, …)."""
    for step in LADDER:
        if step.label == label:
            return step
    raise BandwidthError(
        f"unknown codec {label!r}; the ladder has {', '.join(s.label for s in LADDER)}"
    )


def codec_for_share(share: float) -> CodecStep:
    """The most faithful codec whose byte ratio is at most `share` (the smallest codec when
    none fits)."""
    if not 0 < share <= 1:
        raise BandwidthError(f"a byte share must be in (0, 1], got {share}")
    fitting = [step for step in LADDER if step.byte_ratio <= share + 1e-9]
    if not fitting:
        return min(LADDER, key=lambda step: step.byte_ratio)
    return max(fitting, key=lambda step: (step.fidelity, -step.byte_ratio))


def share_of_action(action: int) -> float:
    if not 0 <= action < ACTIONS:
        raise BandwidthError(f"action {action} is not one of 0…{ACTIONS - 1}")
    return SHARES[action]


def upload_bytes(model_bytes: int, step: CodecStep) -> int:
    """The bytes an update of a `model_bytes` float32 model takes in `step`'s codec."""
    return max(1, round(model_bytes * step.byte_ratio))
