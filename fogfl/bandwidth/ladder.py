"""From a share of the model's bytes to a concrete update codec.

The agent's ten actions are shares of the float32 update's bytes, 10 % … 100 %. A share
maps to the most faithful codec of the ladder whose bytes fit in it. The byte ratios are
nominal (bytes per float32 byte, before scales, indices or headers); the fidelities are
1 − the relative L2 error each codec leaves on a standard normal vector of 2²⁰ entries
(blocks of 64 with an absmax scale for int8 and int4; top-k without error feedback, one
round). When fogfl/codecs/ lands, these figures come from its codecs and their measured
sizes and errors instead; `codec_for_share` keeps its signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from fogfl.errors import BandwidthError


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


LADDER: tuple[CodecStep, ...] = (
    CodecStep("float32", 1.0, 1.0),
    CodecStep("float16", 0.5, 1 - 2.1e-4),
    CodecStep("bfloat16", 0.5, 1 - 1.7e-3),
    CodecStep("int8", 0.25, 1 - 5.9e-3),
    CodecStep("int4", 0.125, 1 - 0.108),
    # top-k sends an int32 index and a float32 value per kept entry: 2·fraction of the bytes.
    CodecStep("topk", 0.4, 1 - 0.592, 0.2),
    CodecStep("topk", 0.2, 1 - 0.749, 0.1),
    CodecStep("topk", 0.1, 1 - 0.849, 0.05),
)
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
