"""The fog tier's aggregation rules (`fog.aggregation`), each against a hand computation:
weights, caps, ties, one update, all equal, and what the partial says the rule did. A fog
broker restarted mid-round replays its journal into the same robust aggregate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fogfl.aggregation import (
    CollectedUpdates,
    RegionRound,
    WeightedModelMean,
    clipped_mean,
    model_aggregate,
    trimmed_mean,
    weighted_median,
)
from fogfl.config import FogSettings, load_config
from fogfl.errors import ConfigError
from fogfl.mqtt import Received
from fogfl.roles.fog_broker import FogBroker
from fogfl.wire import Envelope, ModelSchema, decode, encode


def column(*values: float) -> np.ndarray:
    """One coordinate's values, a row per update."""
    return np.array(values, dtype=np.float64).reshape(-1, 1)


def weights(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# The weighted median


def test_median_of_an_odd_count_is_the_middle_value() -> None:
    assert weighted_median(column(1, 5, 2, 8, 3), weights(1, 1, 1, 1, 1)) == [3.0]


def test_median_of_an_even_count_is_the_midpoint_of_the_middle_two() -> None:
    assert weighted_median(column(10, 1, 3, 2), weights(1, 1, 1, 1)) == [2.5]


def test_median_follows_the_weight_not_the_count() -> None:
    # Cumulative weight 1, 2, 7 of 7: more than half sits on the value 3.
    assert weighted_median(column(1, 2, 3), weights(1, 1, 5)) == [3.0]
    # Cumulative 2, 3, 6 of 6: exactly half the weight at or below 2, half at 10.
    assert weighted_median(column(1, 2, 10), weights(2, 1, 3)) == [6.0]


def test_median_ties_one_update_and_all_equal() -> None:
    assert weighted_median(column(2, 2, 2, 5), weights(1, 1, 1, 1)) == [2.0]
    assert weighted_median(column(-4.5), weights(7)) == [-4.5]
    assert weighted_median(column(0.25, 0.25, 0.25), weights(3, 1, 9)) == [0.25]


def test_median_is_taken_per_coordinate() -> None:
    values = np.array([[1.0, 30.0], [2.0, 10.0], [3.0, 20.0]])
    assert list(weighted_median(values, weights(1, 1, 1))) == [2.0, 20.0]


# The trimmed mean, trimming by weight


def test_trimmed_mean_cuts_whole_updates_off_each_end() -> None:
    means, cut = trimmed_mean(column(1, 2, 3, 4, 100), weights(1, 1, 1, 1, 1), 0.2)
    assert means == [3.0]  # (2 + 3 + 4) / 3
    assert list(cut) == [1, 0, 0, 0, 1]


def test_trimmed_mean_cuts_part_of_an_update_that_straddles_the_cut() -> None:
    # A quarter of the weight of 4 is cut from each end: half of 0 and half of 10 remain.
    means, cut = trimmed_mean(column(0, 1, 2, 10), weights(1, 1, 1, 1), 0.125)
    assert means == pytest.approx([(0.5 * 0 + 1 + 2 + 0.5 * 10) / 3])
    assert list(cut) == [0, 0, 0, 0]


def test_trimmed_mean_trims_by_weight_mass() -> None:
    # Weight 4, a quarter off each end: the weight-1 updates go, the weight-2 one stays.
    means, cut = trimmed_mean(column(0, 10, 20), weights(1, 2, 1), 0.25)
    assert means == [10.0]
    assert list(cut) == [1, 0, 1]


def test_trimming_nothing_is_the_weighted_mean_and_one_update_is_itself() -> None:
    means, _ = trimmed_mean(column(1, 4), weights(3, 1), 0.0)
    assert means == [pytest.approx(1.75)]
    means, _ = trimmed_mean(column(7), weights(5), 0.4)
    assert means == [7.0]


def test_trimming_half_or_more_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 0\.5\)"):
        trimmed_mean(column(1, 2), weights(1, 1), 0.5)


# The clipped mean


def test_clipped_mean_clips_at_the_median_norm_by_default() -> None:
    reference = {"w": np.zeros(2)}
    updates = [
        {"w": np.array([3.0, 4.0])},
        {"w": np.array([0.0, 1.0])},
        {"w": np.array([0.0, 2.0])},
    ]
    combined, clipped, bound = clipped_mean(updates, weights(1, 1, 1), reference, None)
    assert (clipped, bound) == (1, 2.0)
    # [3, 4] has norm 5 and is shrunk to norm 2: [1.2, 1.6].
    assert combined["w"] == pytest.approx([1.2 / 3, (1.6 + 1 + 2) / 3])


def test_clipped_mean_with_a_fixed_bound_and_weights() -> None:
    reference = {"w": np.array([1.0, 1.0])}
    updates = [
        {"w": np.array([4.0, 5.0])},
        {"w": np.array([1.0, 2.0])},
        {"w": np.array([1.0, 3.0])},
    ]
    combined, clipped, bound = clipped_mean(updates, weights(2, 1, 1), reference, 1.0)
    assert (clipped, bound) == (2, 1.0)  # a norm of exactly 1 is not clipped
    # Changes [0.6, 0.8] (clipped from [3, 4]), [0, 1], [0, 1] (clipped from [0, 2]).
    assert combined["w"] == pytest.approx([1 + 2 * 0.6 / 4, 1 + (2 * 0.8 + 1 + 1) / 4])


def test_clipped_mean_measures_the_norm_over_every_tensor() -> None:
    reference = {"a": np.zeros(1), "b": np.zeros(1)}
    updates = [{"a": np.array([3.0]), "b": np.array([4.0])}]
    combined, clipped, _ = clipped_mean(updates, weights(1), reference, 1.0)
    assert clipped == 1
    assert (combined["a"][0], combined["b"][0]) == pytest.approx((0.6, 0.8))


def test_clipped_mean_of_updates_equal_to_the_reference_is_the_reference() -> None:
    reference = {"w": np.array([0.5, -0.5])}
    updates = [{"w": reference["w"].copy()} for _ in range(3)]
    combined, clipped, bound = clipped_mean(updates, weights(1, 2, 3), reference, None)
    assert (clipped, bound) == (0, 0.0)
    assert list(combined["w"]) == [0.5, -0.5]


# A region's round under each rule


SCHEMA = ModelSchema.of(
    {"w": np.zeros((2, 2), dtype=np.float32), "steps": np.zeros(1, dtype=np.int64)}
)


def region_round(settings: FogSettings, uniform: bool = False) -> RegionRound:
    return RegionRound(
        run_id="robust",
        round=1,
        phase="fit",
        schema=SCHEMA,
        deadline=math.inf,
        expected=5,
        participants=None,
        uniform=uniform,
        edge_rounds=1,
        config={},
        model=model_aggregate(SCHEMA, settings),
        fog=settings,
    )


def update(sender: str, value: float, num_examples: int, steps: int = 3) -> Envelope:
    return Envelope(
        kind="update",
        run_id="robust",
        round=1,
        sender=sender,
        region="north",
        num_examples=num_examples,
        tensors={
            "w": np.full((2, 2), value, dtype=np.float32),
            "steps": np.array([steps], dtype=np.int64),
        },
        metrics={"train_loss": value},
    )


def test_each_rule_gets_its_own_aggregate() -> None:
    assert isinstance(model_aggregate(SCHEMA, FogSettings()), WeightedModelMean)
    for rule in ("median", "trimmed_mean", "clipped_mean"):
        assert isinstance(model_aggregate(SCHEMA, FogSettings(aggregation=rule)), CollectedUpdates)


def test_a_median_round_resists_one_outlier_and_reports_it_in_the_partial() -> None:
    fog = region_round(FogSettings(aggregation="median"))
    for index, value in enumerate([1.0, 2.0, 3.0, 4.0, 1000.0]):
        fog.add(update(f"c{index}", value, 10, steps=index))
    partial = decode(encode(fog.partial("north", {})), kinds={"partial"}, max_bytes=10**6)
    assert np.all(partial.tensors["w"] == 3.0)
    assert partial.tensors["w"].dtype == np.float32
    assert list(partial.tensors["steps"]) == [2]  # integers stay integers
    assert partial.num_examples == 50
    assert partial.stats["aggregation"] == {"rule": "median", "updates": 5, "capped": 0}


def test_the_mean_is_the_exact_weighted_mean_as_before() -> None:
    fog = region_round(FogSettings())
    fog.add(update("a", 1.0, 1))
    fog.add(update("b", 4.0, 3))
    partial = fog.partial("north", {})
    assert np.all(partial.tensors["w"] == np.float32(3.25))
    assert partial.stats["aggregation"] == {"rule": "mean", "updates": 2, "capped": 0}


def test_a_self_reported_count_is_capped_for_weight_sum_and_metrics() -> None:
    fog = region_round(FogSettings(max_examples_per_client=100))
    fog.add(update("honest", 1.0, 100))
    fog.add(update("boaster", 9.0, 10**10))
    partial = fog.partial("north", {})
    assert np.all(partial.tensors["w"] == 5.0)  # 100 and 100, not 100 and 10^10
    assert partial.num_examples == 200
    assert partial.stats["weight"] == 200
    assert partial.stats["aggregation"]["capped"] == 1
    assert partial.metrics["train_loss"] == 5.0


def test_uniform_weighting_makes_the_median_unweighted() -> None:
    fog = region_round(FogSettings(aggregation="median"), uniform=True)
    for index, (value, examples) in enumerate([(1.0, 1000), (2.0, 1), (3.0, 1)]):
        fog.add(update(f"c{index}", value, examples))
    assert np.all(fog.aggregate().tensors["w"] == 2.0)


def test_a_trimmed_round_counts_the_updates_it_cut_away() -> None:
    fog = region_round(FogSettings(aggregation="trimmed_mean", trim_fraction=0.2))
    for index, value in enumerate([1.0, 2.0, 3.0, 4.0, -1000.0]):
        fog.add(update(f"c{index}", value, 10))
    aggregate = fog.aggregate()
    assert np.all(aggregate.tensors["w"] == 2.0)  # (1 + 2 + 3) / 3
    assert aggregate.stats["trimmed"] == 2  # -1000 and 4, at every coordinate
    assert aggregate.stats["trim_fraction"] == 0.2


def test_a_clipped_round_waits_for_the_model_the_clients_started_from() -> None:
    fog = region_round(FogSettings(aggregation="clipped_mean", clip_norm=2.0))
    fog.add(update("honest", 1.0, 10))
    fog.add(update("attacker", 101.0, 10))
    assert fog.waiting_for_reference
    with pytest.raises(ValueError, match="started from"):
        fog.aggregate()
    fog.reference = update("server", 0.0, 1, steps=0).tensors
    assert not fog.waiting_for_reference
    aggregate = fog.aggregate()
    # Both changes (1 and 101 in each of four weights, 3 in the int tensor) are shrunk to
    # norm 2; the int tensor is rounded.
    honest = 2 / math.sqrt(4 * 1 + 9)
    attacker = 2 / math.sqrt(4 * 101**2 + 9)
    expected = (honest * 1 + attacker * 101) / 2
    assert aggregate.tensors["w"][0, 0] == pytest.approx(expected, rel=1e-6)
    assert list(aggregate.tensors["steps"]) == [round((honest + attacker) * 3 / 2)]
    assert aggregate.stats == {
        "rule": "clipped_mean",
        "clipped": 2,
        "clip_norm": 2.0,
        "updates": 2,
        "capped": 0,
    }


def test_the_next_edge_round_starts_empty_under_the_same_rule() -> None:
    fog = region_round(FogSettings(aggregation="clipped_mean", max_examples_per_client=5))
    fog.add(update("a", 1.0, 10))
    fog.reference = update("server", 0.0, 1).tensors
    fog.next_edge_round(math.inf)
    assert isinstance(fog.model, CollectedUpdates)
    assert fog.model.updates == []
    assert fog.waiting_for_reference and fog.capped == 0


# Configuration


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("fog.aggregation", "krum", "fog.aggregation"),
        ("fog.trim_fraction", 0.5, "fog.trim_fraction"),
        ("fog.trim_fraction", -0.1, "fog.trim_fraction"),
        ("fog.clip_norm", 0, "fog.clip_norm"),
        ("fog.clip_norm", float("inf"), "fog.clip_norm"),
        ("fog.max_examples_per_client", 0, "fog.max_examples_per_client"),
    ],
)
def test_invalid_rule_settings_are_refused_by_name(key: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_config(None, {key: value}, environ={})


def test_the_rule_settings_load_from_the_environment() -> None:
    config = load_config(
        None, environ={"FOGFL_FOG__AGGREGATION": "clipped_mean", "FOGFL_FOG__CLIP_NORM": "0.5"}
    )
    assert (config.fog.aggregation, config.fog.clip_norm) == ("clipped_mean", 0.5)
    assert config.fog.max_examples_per_client is None


# A restart mid-round


def test_a_restarted_fog_broker_replays_its_journal_into_the_robust_aggregate(
    tmp_path: Path,
) -> None:
    config = load_config(
        None,
        {
            "fog.aggregation": "clipped_mean",
            "fog.state_dir": str(tmp_path),
            "security.insecure": True,
        },
        environ={},
    )
    schema = ModelSchema.of(update("x", 0.0, 1).tensors)
    announcement = encode(
        Envelope(kind="round", run_id="robust", round=1, sender="server", schema=schema)
    )
    start = encode(
        Envelope(
            kind="global",
            run_id="robust",
            round=1,
            sender="server",
            tensors=update("server", 0.5, 1).tensors,
        )
    )

    def client_message(sender: str, value: float) -> Received:
        broker_topics = FogBroker(config, "north", expected_updates=5).topics
        payload = encode(update(sender, value, 10))
        return Received(broker_topics.updates("north", sender), payload, False)

    before = FogBroker(config, "north", expected_updates=5)
    before.handle(Received(before.topics.round_announcement, announcement, True))
    before.handle(Received(before.topics.global_model, start, True))
    for sender, value in [("c1", 1.0), ("c2", 2.0), ("attacker", 500.0)]:
        before.handle(client_message(sender, value))
    assert before.current is not None
    expected = before.current.aggregate()

    after = FogBroker(config, "north", expected_updates=5)  # the same state directory
    reopened = after.journal.open_announcement()
    assert reopened is not None
    after.handle(Received(after.topics.round_announcement, reopened, True))
    assert after.current is not None
    assert after.current.contributors == ["c1", "c2", "attacker"]
    # The journal keeps the round's start model too: the restored round clips against it
    # before the retained global model comes again.
    assert not after.current.waiting_for_reference
    restored = after.current.aggregate()
    assert restored.stats == expected.stats
    assert restored.stats["clipped"] == 1
    for name, values in expected.tensors.items():
        assert np.array_equal(restored.tensors[name], values)
