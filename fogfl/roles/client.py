"""Client: trains on its local data whenever the server publishes a new global model.

Reads ``fl/global_model`` (retained, so a late joiner starts from the current round);
writes ``fl/updates/<region>``. Each round it evaluates the received global model on its
test split, trains `local_epochs` on its train split and publishes its weights with its true
`num_examples` and metrics. On the final model it publishes its evaluation and exits.
"""

from __future__ import annotations

import os

import torch

from fogfl.config import FogflConfig, TrainingSettings, read_round_plan
from fogfl.errors import WireError
from fogfl.local_round import evaluate_final, train_from
from fogfl.logs import Rejections, role_logger
from fogfl.mqtt import MqttSession, Received
from fogfl.tasks import load_task
from fogfl.tasks.base import model_tensors
from fogfl.wire import Envelope, ModelSchema, decode, encode

ROLE = "client"


class FederatedClient:
    def __init__(self, config: FogflConfig, client_id: str, region: str) -> None:
        self.config = config
        self.client_id = client_id
        self.region = region
        self.log = role_logger(ROLE, region, client_id)
        self.rejections = Rejections(self.log)
        self.task = load_task(config.task.name, config.task.options)
        self.data = self.task.load_partition(client_id, config.federation.seed)
        self.model = self.task.build_model(config.federation.seed)
        self.schema = ModelSchema.of(model_tensors(self.model))
        self.task.warm_up(self.model)
        self.session = MqttSession(config.mqtt, f"fogfl-client-{client_id}-{os.getpid()}", self.log)
        self.topics = self.session.topics
        self.runs_joined: set[str] = set()
        self.position: dict[str, tuple[int, int]] = {}

    def run(self) -> int:
        """Take part in rounds until the server publishes the final model; returns 0."""
        self.log.info(
            "%s: %d train / %d test examples (%s)",
            self.task.name,
            self.data.num_train,
            self.data.num_test,
            self.data.description,
        )
        self.session.connect([self.topics.global_model, self.topics.region_model(self.region)])
        self.log.info("ready; waiting for the global model on %s", self.topics.global_model)
        try:
            while True:
                model = self._newest(self.session.receive(timeout=None))
                if model is None:
                    continue
                if model.final:
                    if model.run_id in self.runs_joined:
                        self._evaluate_final(model)
                        return 0
                    self.log.info(
                        "ignoring the final model of run %s, which this client did not join",
                        model.run_id,
                    )
                    continue
                self.runs_joined.add(model.run_id)
                position = (model.round, model.edge_round)
                if position <= self.position.get(model.run_id, (0, 0)):
                    continue
                self.position[model.run_id] = position
                try:
                    plan = read_round_plan(model.config, self.config.training)
                except WireError as error:
                    self.rejections.record_error(error, self.topics.global_model)
                    continue
                if not plan.takes_part(self.client_id, self.region):
                    self.log.info("round %d: not picked this round; sitting it out", model.round)
                    continue
                self._train_round(model, plan.training)
        finally:
            self.session.close()

    def _newest(self, first: Received | None) -> Envelope | None:
        """The furthest-along model among those queued: a client that was busy training skips
        the rounds that went by meanwhile. Bad messages are rejected and counted."""
        newest: Envelope | None = None
        message = first
        while message is not None:
            try:
                model = decode(
                    message.payload,
                    kinds={"global", "region"},
                    max_bytes=self.config.wire.max_payload_bytes,
                    schema=self.schema,
                )
            except WireError as error:
                self.rejections.record_error(error, message.topic)
            else:
                if model.kind == "region" and model.region != self.region:
                    self.rejections.record(
                        "wrong-region", f"region model of {model.region}", message.topic
                    )
                elif newest is None or _progress(model) >= _progress(newest):
                    newest = model
            message = self.session.receive(timeout=0)
        return newest

    def _train_round(self, start: Envelope, settings: TrainingSettings) -> None:
        """Train from a global model (edge round 1) or the region's model (later edge rounds)."""
        update = train_from(
            self.task,
            self.model,
            self.data,
            start,
            self.client_id,
            self.region,
            settings,
            self.config.federation.seed,
        )
        self.session.publish(
            self.topics.updates(self.region), encode(update, self.config.wire.codec)
        )
        edge = f" (edge round {start.edge_round})" if start.kind == "region" else ""
        metrics = update.metrics
        before = (
            f"eval_loss {metrics['eval_loss']:.4f} before training, "
            if "eval_loss" in metrics
            else ""
        )
        self.log.info(
            "round %d%s: %strain_loss %.4f, %.2f s",
            start.round,
            edge,
            before,
            metrics["train_loss"],
            metrics["train_seconds"],
        )

    def _evaluate_final(self, final_model: Envelope) -> None:
        report = evaluate_final(
            self.task, self.model, self.data, final_model, self.client_id, self.region
        )
        self.session.publish(self.topics.updates(self.region), encode(report))
        self.log.info(
            "final model: eval_loss %.4f; run %s is over",
            report.metrics["eval_loss"],
            final_model.run_id,
        )


def _progress(model: Envelope) -> tuple[bool, int, int]:
    return (model.final, model.round, model.edge_round)


def run(config: FogflConfig, client_id: str, region: str, torch_threads: int = 1) -> int:
    # Many clients share a few cores; one thread each avoids oversubscription.
    torch.set_num_threads(torch_threads)
    return FederatedClient(config, client_id, region).run()
