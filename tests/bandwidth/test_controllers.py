"""The controllers' rules by hand, from a client's measured upload history."""

from __future__ import annotations

import pytest

from fogfl.bandwidth.controllers import (
    FixedCodec,
    Oracle,
    RandomShare,
    RobustRule,
    ThroughputRule,
    Upload,
    harmonic_prediction,
    largest_recent_error,
    make_controller,
    state_features,
)
from fogfl.bandwidth.ladder import SHARES
from fogfl.errors import BandwidthError

MODEL = 1_000_000  # 8 Mbit in float32
DEADLINE = 2.0  # so float32 needs 4 Mbit/s, float16 2, int8 1, int4 0.5, top-k 5% 0.4


def uploads(*mbit_s: float) -> list[Upload]:
    return [Upload(1_000_000, 8 / rate) for rate in mbit_s]


def test_harmonic_prediction_and_recent_error() -> None:
    history = uploads(2.0, 4.0, 4.0)
    assert harmonic_prediction(history) == pytest.approx(3 / (0.5 + 0.25 + 0.25))
    # Before upload 2 the prediction was 2 (error 0.5); before upload 3 it was 8/3 (1/3).
    assert largest_recent_error(history) == pytest.approx(0.5)
    assert largest_recent_error(uploads(3.0)) == 0.0
    assert harmonic_prediction([]) is None


def test_throughput_rule_picks_the_largest_share_that_fits() -> None:
    rule = ThroughputRule(MODEL, DEADLINE)
    decision = rule.decide(uploads(2.5, 2.5))  # float16 (1 s·…): 4 Mbit / 2.5 = 1.6 s fits
    assert decision.codec.label == "float16" and decision.share == 0.9
    assert decision.predicted_mbit_s == pytest.approx(2.5)
    assert decision.predicted_upload_s == pytest.approx(4 / 2.5)
    assert rule.decide(uploads(5.0)).codec.label == "float32"
    assert rule.decide(uploads(0.1)).share == SHARES[0]  # nothing fits: the smallest
    assert rule.decide(uploads(9.0), forecast_mbit_s=1.2).codec.label == "int8"


def test_robust_rule_discounts_by_the_largest_recent_error() -> None:
    history = uploads(2.0, 4.0, 4.0)  # harmonic 3.0, largest error 0.5 → 2.0
    robust = RobustRule(MODEL, DEADLINE).decide(history)
    assert robust.predicted_mbit_s == pytest.approx(2.0)
    assert robust.codec.label == "float16"  # 4 Mbit at 2 Mbit/s: exactly the deadline
    assert ThroughputRule(MODEL, DEADLINE).decide(history).codec.label == "float16"
    assert RobustRule(MODEL, DEADLINE).decide(uploads(2.0, 6.0)).codec.label == "int8"


def test_rules_start_with_the_smallest_share() -> None:
    for rule in (ThroughputRule(MODEL, DEADLINE), RobustRule(MODEL, DEADLINE)):
        first = rule.decide([])
        assert first.share == SHARES[0] and first.predicted_upload_s is None


def test_oracle_uses_the_future_and_needs_it() -> None:
    oracle = Oracle(MODEL, DEADLINE)
    decision = oracle.decide([], link_future=lambda n: n * 8 / 1e6 / 1.1)  # 1.1 Mbit/s ahead
    # int8's 251 kB take 1.83 s of the 2; float16's 500 kB would take 3.6.
    assert decision.codec.label == "int8"
    assert decision.predicted_upload_s == pytest.approx(decision.upload_bytes * 8 / 1.1e6)
    assert decision.upload_bytes == 250_977
    with pytest.raises(BandwidthError, match="needs the link's future"):
        oracle.decide([])


def test_fixed_random_and_names() -> None:
    fixed = FixedCodec(MODEL, DEADLINE, "int4").decide(uploads(1.0))
    # A nibble per value and a float32 scale per 64 values: 4.5 bits.
    assert fixed.upload_bytes == 140_625 and fixed.controller == "fixed_int4"
    shares = {RandomShare(MODEL, DEADLINE, seed=1).decide([]).share for _ in range(3)}
    assert shares <= set(SHARES)
    assert make_controller("robust-rule", MODEL, DEADLINE).name == "robust-rule"
    with pytest.raises(BandwidthError, match="needs a trained agent"):
        make_controller("ddqn", MODEL, DEADLINE)
    with pytest.raises(BandwidthError, match="unknown controller"):
        make_controller("greedy", MODEL, DEADLINE)
    with pytest.raises(BandwidthError, match="finite seconds"):
        ThroughputRule(MODEL, DEADLINE).decide([Upload(100, 0.0)])


def test_state_features_in_units_of_the_full_rate() -> None:
    state = state_features(uploads(2.0, 4.0, 4.0), MODEL, DEADLINE, 8.0, with_forecast=True)
    assert state.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.5, 2.0])
    assert state_features([], MODEL, DEADLINE).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert state_features(uploads(1e6), MODEL, DEADLINE)[0] == 10.0  # capped
