"""`wire.update_codec: adaptive`: a client's codec choice from its measured uploads, the
plan it encodes with, and what the fog broker and metrics.csv make of the choices."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fogfl.bandwidth.adaptive import AdaptiveCodec, Choice, upload_budget
from fogfl.bandwidth.agent import DDQNAgent
from fogfl.bandwidth.controllers import Decision
from fogfl.bandwidth.ladder import step_named
from fogfl.config import ConfigError, RoundPlan, WireSettings, load_config
from fogfl.errors import BandwidthError, FogflError
from fogfl.local_round import encode_update
from fogfl.transfers import RegionTransfers, combine
from fogfl.wire import Envelope, ModelSchema

MODEL_BYTES = 1_000_000  # 1 MB of float32
ADAPTIVE = RoundPlan(update_codec="adaptive", controller="robust-rule")


def codec_after(
    uploads: list[tuple[int, float]], budget_s: float, plan: RoundPlan = ADAPTIVE
) -> str:
    adaptive = AdaptiveCodec(WireSettings(), MODEL_BYTES)
    for n_bytes, seconds in uploads:
        adaptive.measured(n_bytes, seconds)
    return adaptive.choose(plan, budget_s).decision.codec.label


def test_without_history_the_smallest_codec_measures_the_link() -> None:
    assert codec_after([], budget_s=100) == "topk_0.05"


def test_a_fast_link_sends_float32_and_a_slow_one_compresses() -> None:
    fast = [(1_000_000, 0.1)] * 5  # 80 Mbit/s: the whole model in 0.1 s
    assert codec_after(fast, budget_s=1.0) == "float32"
    slow = [(250_000, 1.0)] * 5  # 2 Mbit/s: 1 s fits 250 kB, int8's quarter of the model
    assert codec_after(slow, budget_s=1.05) == "int8"
    assert codec_after(slow, budget_s=0.6) == "int4"
    # A budget already spent still gets an answer: the smallest codec.
    assert codec_after(slow, budget_s=-3) == "topk_0.05"


def test_the_robust_rule_discounts_by_its_recent_errors() -> None:
    steady = [(250_000, 1.0)] * 5
    jumpy = [(250_000, 1.0), (250_000, 0.5), (250_000, 1.0), (250_000, 0.5), (250_000, 1.0)]
    rule = RoundPlan(update_codec="adaptive", controller="rule")
    assert codec_after(steady, 1.05, rule) == codec_after(steady, 1.05) == "int8"
    # The plain rule trusts the harmonic mean of the jumpy link; the robust one does not.
    assert codec_after(jumpy, 1.05, rule) == "int8"
    assert codec_after(jumpy, 1.05) in {"int4", "topk_0.2", "topk_0.1", "topk_0.05"}


def test_unmeasurable_uploads_are_not_history() -> None:
    adaptive = AdaptiveCodec(WireSettings(), MODEL_BYTES)
    for n_bytes, seconds in [(0, 1.0), (10, 0.0), (10, float("inf")), (10, -1.0)]:
        adaptive.measured(n_bytes, seconds)
    assert adaptive.history == []
    for _ in range(100):
        adaptive.measured(1000, 0.01)
    assert len(adaptive.history) == 32  # bounded


def test_the_oracle_reads_the_link_future() -> None:
    # 8 Mbit/s: 1 MB in 1 s. The oracle sees it without any history.
    adaptive = AdaptiveCodec(WireSettings(), MODEL_BYTES, link_future=lambda: lambda n: n * 8 / 8e6)
    oracle = RoundPlan(update_codec="adaptive", controller="oracle")
    assert adaptive.choose(oracle, 1.01).decision.codec.label == "float32"
    assert adaptive.choose(oracle, 0.51).decision.codec.label == "float16"
    assert adaptive.choose(oracle, 0.51).decision.predicted_upload_s == pytest.approx(0.5)


def test_a_controller_this_client_cannot_run_falls_back_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    adaptive = AdaptiveCodec(WireSettings(), MODEL_BYTES, logging.getLogger("test"))
    for name in ("ddqn", "oracle"):
        plan = RoundPlan(update_codec="adaptive", controller=name)
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                assert adaptive.choose(plan, 1.0).decision.controller == "robust-rule"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "ddqn controller, but wire.agent is not set" in warnings[0]
    assert "oracle controller, but this client's link is not emulated" in warnings[1]


def test_a_choice_becomes_the_plan_the_update_is_encoded_with() -> None:
    def choice(label: str) -> Choice:
        return Choice(Decision("rule", 0.1, step_named(label), 1, 2.0, 0.4), 0.9)

    topk = choice("topk_0.1").plan(ADAPTIVE)
    assert (topk.update_codec, topk.topk_fraction) == ("topk", 0.1)
    assert choice("int8").plan(ADAPTIVE).update_codec == "int8"
    assert choice("int8").metrics == {
        "upload_share": 0.1,
        "upload_budget_s": 0.9,
        "predicted_upload_s": 0.4,
    }
    tensors = {"w": np.ones(8, dtype=np.float32)}
    start = Envelope(kind="global", run_id="r", round=1, sender="server", tensors=tensors)
    update = Envelope(kind="update", run_id="r", round=1, sender="c", region="n", tensors=tensors)
    with pytest.raises(FogflError, match="chosen before it is encoded"):
        encode_update(update, start, ADAPTIVE, ModelSchema.of(tensors))


def test_the_budget_is_the_deadline_less_what_the_round_took_so_far() -> None:
    assert upload_budget(ADAPTIVE, fog_deadline_s=60, spent_s=10) == 50
    planned = RoundPlan(update_codec="adaptive", upload_deadline_s=8.0)
    assert upload_budget(planned, fog_deadline_s=60, spent_s=3) == 5
    assert upload_budget(planned, fog_deadline_s=60, spent_s=-2) == 8  # a clock ahead


def test_choices_reach_the_round_row() -> None:
    north, south = RegionTransfers(), RegionTransfers()
    north.add_upload("n1", 2.0)
    north.add_choice("n1", {"upload_share": 0.3, "predicted_upload_s": 1.5})
    north.add_upload("n2", 1.0)
    north.add_choice("n2", {"upload_share": 0.3, "predicted_upload_s": 1.0})
    south.add_upload("s1", 4.0)
    south.add_choice("s1", {"upload_share": 0.1, "predicted_upload_s": 2.0})
    # Through a partial's stats, as the bridge hands them to the server.
    regions = [RegionTransfers.of_json(r.to_json()) for r in (north, south)]
    row = combine(regions)
    assert row.codecs == "int8:2 topk_0.05:1"
    assert row.predicted_upload_s_median == 1.5
    assert row.upload_prediction_error == pytest.approx(0.25)  # of 0.25, 0, 0.5
    # Fixed codecs leave the columns empty; a choice without a prediction (the rules'
    # first round) still counts its codec.
    fixed = RegionTransfers()
    fixed.add_upload("n1", 2.0)
    fixed.add_choice("n1", {})
    assert combine([fixed]).codecs is None
    fixed.add_choice("n2", {"upload_share": 0.1})
    assert combine([fixed]).codecs == "topk_0.05:1"
    assert combine([fixed]).predicted_upload_s_median is None


def test_malformed_choices_in_a_partial_are_left_out() -> None:
    stats = {
        "transfers": {
            "codecs": {"a": "int8", "b": "<script>", "c": 7, "d": "x" * 100},
            "predicted_upload_s": {"a": 1.0, "b": -1, "c": "soon", "d": float("nan")},
        }
    }
    found = RegionTransfers.of_stats(stats)
    assert found.codecs == {"a": "int8"}
    assert found.predicted_upload_s == {"a": 1.0}


def test_configs_that_cannot_choose_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"controller ddqn needs wire\.agent"):
        load_config(None, {"wire.update_codec": "adaptive", "wire.controller": "ddqn"})
    with pytest.raises(ConfigError, match="only emulated links have"):
        load_config(None, {"wire.update_codec": "adaptive", "wire.controller": "oracle"})
    with pytest.raises(ConfigError, match=r"wire\.controller"):
        load_config(None, {"wire.controller": "psychic"})
    linked = load_config(
        None,
        {
            "wire.update_codec": "adaptive",
            "wire.controller": "oracle",
            "links.default": {"rate_mbit": 4},
        },
    )
    assert linked.wire.announced()["controller"] == "oracle"


def test_the_ddqn_controller_asks_the_agent_the_config_names(tmp_path: Path) -> None:
    DDQNAgent().save(tmp_path / "agent", {})
    wire = WireSettings(update_codec="adaptive", controller="ddqn", agent=tmp_path / "agent")
    adaptive = AdaptiveCodec(wire, MODEL_BYTES)
    adaptive.measured(250_000, 1.0)
    choice = adaptive.choose(RoundPlan(update_codec="adaptive", controller="ddqn"), 1.0)
    assert choice.decision.controller == "ddqn"
    assert choice.decision.predicted_upload_s is not None  # at the harmonic mean
    # A damaged agent is an error as the client starts (load_models), not in a round.
    (tmp_path / "agent" / "agent.json").write_text("{")
    with pytest.raises(BandwidthError, match="agent"):
        AdaptiveCodec(wire, MODEL_BYTES).load_models()


def test_the_envelope_counts_once_an_update_was_encoded() -> None:
    # 2 Mbit/s and 1.05 s: int8's 250,977 bytes fit, not with 30 kB of envelope on top.
    adaptive = AdaptiveCodec(WireSettings(), MODEL_BYTES)
    for _ in range(5):
        adaptive.measured(250_000, 1.0)
    first = adaptive.choose(ADAPTIVE, 1.05)
    assert first.decision.codec.label == "int8" and first.overhead_bytes == 0
    adaptive.encoded(first, first.decision.upload_bytes + 30_000)
    # A codec not seen yet counts the largest envelope seen.
    second = adaptive.choose(ADAPTIVE, 1.05)
    assert second.decision.codec.label == "int4"
    assert second.decision.upload_bytes == 140_625 + 30_000
    assert second.decision.predicted_upload_s == pytest.approx(170_625 * 8 / 2e6)
    # Each codec's own, from its last message, never below nothing.
    adaptive.encoded(second, 100)
    assert adaptive.overhead == {"int8": 30_000, "int4": 0}


def test_leaving_topk_for_a_dense_codec_starts_error_feedback_afresh() -> None:
    adaptive = AdaptiveCodec(WireSettings(), MODEL_BYTES)
    probe = adaptive.choose(ADAPTIVE, 1.0)  # no history: the rule measures the link
    assert probe.decision.codec.codec == "topk" and probe.decision.predicted_upload_s is None
    for _ in range(5):
        adaptive.measured(1_000_000, 0.1)
    # After the probe the residual is one round's: it goes out with the next update.
    assert not adaptive.choose(ADAPTIVE, 1.0).fresh_feedback
    slow = AdaptiveCodec(WireSettings(), MODEL_BYTES)
    for _ in range(5):
        slow.measured(10_000, 1.0)  # 0.08 Mbit/s: only top-k fits
    assert slow.choose(ADAPTIVE, 1.0).decision.codec.codec == "topk"
    for _ in range(5):
        slow.measured(1_000_000, 0.1)
    dense = slow.choose(ADAPTIVE, 1.0)
    assert dense.decision.codec.label == "float32" and dense.fresh_feedback
    assert not slow.choose(ADAPTIVE, 1.0).fresh_feedback  # dense to dense
