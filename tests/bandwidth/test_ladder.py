"""Byte shares map onto the most faithful codec that fits."""

from __future__ import annotations

import pytest

from fogfl.bandwidth.ladder import LADDER, SHARES, codec_for_share, step_named, upload_bytes
from fogfl.errors import BandwidthError


def test_each_share_gets_the_best_codec_that_fits() -> None:
    labels = [codec_for_share(s).label for s in SHARES]
    assert labels == [
        "topk_0.05", "int4", "int8", "int8", "float16",
        "float16", "float16", "float16", "float16", "float32",
    ]  # fmt: skip
    smallest = min(s.byte_ratio for s in LADDER)
    for share in SHARES:
        ratio = codec_for_share(share).byte_ratio
        assert ratio <= share + 1e-9 or ratio == smallest


def test_ladder_names_and_sizes() -> None:
    assert {s.label for s in LADDER} >= {"float32", "float16", "bfloat16", "int8", "int4"}
    assert step_named("topk_0.05").byte_ratio == pytest.approx(0.1, rel=1e-3)
    # int8: a byte per value and a one-byte exponent per 256 (docs/protocol.md, "Codecs").
    assert upload_bytes(1_000_000, step_named("int8")) == 250_977
    with pytest.raises(BandwidthError, match="unknown codec 'int2'"):
        step_named("int2")
    with pytest.raises(BandwidthError, match="share"):
        codec_for_share(0.0)


def test_the_rungs_are_measured_with_fogfls_codecs() -> None:
    ratios = {s.label: s.byte_ratio for s in LADDER}
    assert ratios["float16"] == ratios["bfloat16"] == 0.5
    assert ratios["int4"] == pytest.approx((0.5 + 4 / 64) / 4)  # float32 scale per 64
    assert ratios["topk_0.05"] == pytest.approx(0.1, rel=1e-3)  # an int32 index + a value
    fidelity = [s.fidelity for s in LADDER]
    # Each rung leaves more error than the one above it; float32 is exact.
    assert fidelity[0] == 1.0 and fidelity == sorted(fidelity, reverse=True)
    assert 0.98 < step_named("int8").fidelity < 0.999
