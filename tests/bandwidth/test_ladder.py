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
    for share in SHARES:
        assert codec_for_share(share).byte_ratio <= share + 1e-9


def test_ladder_names_and_sizes() -> None:
    assert {s.label for s in LADDER} >= {"float32", "float16", "bfloat16", "int8", "int4"}
    assert step_named("topk_0.05").byte_ratio == pytest.approx(0.1)
    assert upload_bytes(1_000_000, step_named("int8")) == 250_000
    with pytest.raises(BandwidthError, match="unknown codec 'int2'"):
        step_named("int2")
    with pytest.raises(BandwidthError, match="share"):
        codec_for_share(0.0)
