"""What one client does with one model, shared by the client role and the simulation:
evaluate the model it was sent, train from it, and wrap the result as a message."""

from __future__ import annotations

import time

from torch import nn

from fogfl.codecs import ErrorFeedback, Reference
from fogfl.config import RoundPlan, TrainingSettings
from fogfl.errors import FogflError
from fogfl.tasks.base import Partition, Task, load_tensors, model_tensors, training_seed
from fogfl.wire import Envelope, ModelSchema, encode


def train_from(
    task: Task,
    model: nn.Module,
    data: Partition,
    start: Envelope,
    client_id: str,
    region: str,
    settings: TrainingSettings,
    seed: int,
) -> Envelope:
    """The update after training from `start` (a global or region model).

    The global model is evaluated on the test split first (edge round 1), so every update
    also reports how good the model it received was.
    """
    started = time.monotonic()
    load_tensors(model, start.tensors)
    evaluation = task.evaluate(model, data) if start.kind == "global" else {}
    training = task.train(
        model, data, settings, training_seed(seed, start.round, client_id, start.edge_round)
    )
    return Envelope(
        kind="update",
        run_id=start.run_id,
        round=start.round,
        edge_round=start.edge_round,
        sender=client_id,
        region=region,
        num_examples=data.num_train,
        tensors=model_tensors(model),
        metrics={**training, **evaluation, "train_seconds": time.monotonic() - started},
    )


def encode_update(
    update: Envelope,
    start: Envelope,
    plan: RoundPlan,
    schema: ModelSchema,
    feedback: ErrorFeedback | None = None,
) -> bytes:
    """The update as the round's plan says it travels: in `update_codec`, a lossy one as the
    delta from `start` (the model it was trained from, as this client decoded it), with the
    client's error `feedback` when the plan keeps it. An `adaptive` plan must have had its
    codec chosen first (`fogfl.bandwidth.adaptive.Choice.plan`)."""
    codec = plan.update_codec
    if codec == "adaptive":
        raise FogflError("an adaptive update's codec is chosen before it is encoded")
    lossy = codec != "float32"
    return encode(
        update,
        codec,
        compression=plan.compression,
        reference=Reference(start.tensors, schema) if lossy else None,
        feedback=feedback if lossy and plan.error_feedback else None,
        topk_fraction=plan.topk_fraction,
    )


def evaluate_final(
    task: Task, model: nn.Module, data: Partition, final: Envelope, client_id: str, region: str
) -> Envelope:
    """The client's evaluation of the final model on its test split."""
    load_tensors(model, final.tensors)
    return Envelope(
        kind="evaluation",
        run_id=final.run_id,
        round=final.round,
        sender=client_id,
        region=region,
        num_examples=data.num_test,
        metrics=task.evaluate(model, data),
    )
