"""Per-tier codecs in `fogfl sim`: updates as coded deltas the fog adds to the model the
clients trained from, with each client's error feedback; partials and the global model in
their own codecs; bytes that shrink accordingly."""

from __future__ import annotations

import numpy as np
import pytest

from fogfl.codecs import ErrorFeedback, Reference, decode_model, encode_model
from fogfl.sim import workers
from fogfl.sim.hierarchy import simulate
from fogfl.sim.workers import ClientPool
from fogfl.wire import ModelSchema, Tensors
from tests.sim.helpers import (
    assert_same_model,
    initial_model,
    synthetic_config,
    train_client,
    weighted_mean,
)


def distance(a: Tensors, b: Tensors) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def test_int8_updates_are_deltas_the_fog_adds_to_the_global_model(pool: ClientPool) -> None:
    config = synthetic_config(**{"wire.update_codec": "int8"})
    start = initial_model(config)
    schema = ModelSchema.of(start)
    reference = Reference(start, schema)
    expected = []
    for ids in config.federation.client_ids().values():
        for client_id in ids:
            update, examples = train_client(config, client_id, start, 1)
            sent = encode_model(
                update, schema, "int8", reference=reference, feedback=ErrorFeedback()
            )
            expected.append(
                (decode_model(sent.tensors, sent.metadata, schema, reference=reference), examples)
            )
    run = simulate(config, pool)
    assert_same_model(run.final_tensors(), weighted_mean(expected))
    exact = simulate(synthetic_config(), pool)
    assert distance(run.final_tensors(), exact.final_tensors()) > 0
    # Updates shrink; the partials and the global model (float32) do not, but for the
    # plan they announce (update_codec) and the counts they report.
    assert run.records[1].bytes_up < 0.6 * exact.records[1].bytes_up
    assert run.records[1].bytes_cloud == pytest.approx(exact.records[1].bytes_cloud, rel=0.002)
    assert run.records[1].bytes_down == pytest.approx(exact.records[1].bytes_down, rel=0.002)


def test_each_tier_travels_in_its_own_codec(pool: ClientPool) -> None:
    exact = simulate(synthetic_config(), pool).records[1]
    global_f16 = simulate(synthetic_config(**{"wire.global_codec": "float16"}), pool).records[1]
    partial_int8 = simulate(synthetic_config(**{"wire.partial_codec": "int8"}), pool).records[1]
    assert global_f16.bytes_down < 0.7 * exact.bytes_down and global_f16.bytes_up == exact.bytes_up
    assert partial_int8.bytes_cloud < 0.7 * exact.bytes_cloud
    assert partial_int8.bytes_down == exact.bytes_down


def test_zstd_after_the_codec_changes_bytes_not_the_model(pool: ClientPool) -> None:
    plain = simulate(synthetic_config(**{"wire.update_codec": "int8"}), pool)
    packed = simulate(
        synthetic_config(**{"wire.update_codec": "int8", "wire.compression": "zstd"}), pool
    )
    assert_same_model(packed.final_tensors(), plain.final_tensors(), tolerance=0)
    assert packed.records[1].bytes_up < plain.records[1].bytes_up


def test_topk_clients_keep_their_error_feedback_across_rounds(pool: ClientPool) -> None:
    config = synthetic_config(
        **{"wire.update_codec": "topk", "wire.topk_fraction": 0.1, "federation.rounds": 3}
    )
    run = simulate(config, pool)
    kept = workers._FEEDBACK[run.run_id]
    clients = [c for ids in config.federation.client_ids().values() for c in ids]
    assert sorted(kept) == sorted(clients)
    assert all(feedback.norm > 0 for feedback in kept.values())
    exact = simulate(synthetic_config(**{"federation.rounds": 3}), pool).final_tensors()
    moved = distance(exact, initial_model(config))
    assert distance(run.final_tensors(), exact) < 0.75 * moved
