"""Client: trains on its local data whenever the server publishes a new global model.

Reads ``fl/global_model`` (retained, so a late joiner starts from the current round);
writes its own ``fl/updates/<region>/<client id>``, which only it may write. Global and
region models count only when the server's (or its fog broker's) signature verifies. Each
round it evaluates the received global model on its test split, trains `local_epochs` on
its train split and publishes its weights with its true `num_examples` and metrics. On the
final model it publishes its evaluation and exits (or, with `serve`, waits for the next
run).

A client follows one run at a time, only forward: the run of the newest global model. A
region model (edge rounds) counts only if it belongs to that run, so a retained region model
of an earlier run never starts work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from fogfl.bandwidth.adaptive import (
    ADAPTIVE,
    BUDGET_METRIC,
    AdaptiveCodec,
    upload_budget,
)
from fogfl.bandwidth.controllers import LinkFuture
from fogfl.codecs import ErrorFeedback
from fogfl.config import FogflConfig, RoundPlan, read_round_plan
from fogfl.errors import WireError
from fogfl.links.settings import LINK_ORIGIN_ENV
from fogfl.local_round import encode_update, evaluate_final, train_from
from fogfl.logs import Rejections, role_logger
from fogfl.mqtt import MqttSession, Received, role_client_id
from fogfl.security.identities import client_identity
from fogfl.security.role import role_security
from fogfl.tasks import load_task
from fogfl.tasks.base import model_tensors
from fogfl.transfers import DOWNLOAD_METRIC, PREDICTED_METRIC, transfer_seconds
from fogfl.wire import Envelope, ModelSchema, decode, encode

ROLE = "client"


class FederatedClient:
    def __init__(
        self, config: FogflConfig, client_id: str, region: str, serve: bool = False
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.region = region
        self.log = role_logger(ROLE, region, client_id)
        self.rejections = Rejections(self.log)
        self.security = role_security(config, client_identity(client_id, region), self.log)
        self.task = load_task(config.task.name, config.task.options, config.python_path)
        self.data = self.task.load_partition(client_id, config.federation.seed)
        self.model = self.task.build_model(config.federation.seed)
        self.schema = ModelSchema.of(model_tensors(self.model))
        self.task.warm_up(self.model)
        self.serve = serve
        self.session = MqttSession(
            self.security.mqtt,
            role_client_id(config.mqtt, "client", client_id),
            self.log,
            wire=config.wire,
            rejections=self.rejections,
        )
        self.topics = self.session.topics
        self.current_run = ""
        self.runs_joined: set[str] = set()
        self.left_runs: set[str] = set()
        self.position: dict[str, tuple[int, int]] = {}
        self.pending_region_model: Envelope | None = None
        # What this client's update codec dropped so far, in the current run.
        self.feedback = ErrorFeedback()
        # When each model arrived, for the download seconds the next update reports.
        self.arrived_at: dict[tuple[bool, int, int], float] = {}
        # Under wire.update_codec: adaptive, what picks each round's codec; it learns from
        # every upload this client makes.
        self.adaptive = AdaptiveCodec(
            config.wire, 4 * self.schema.num_values, self.log, self._link_future()
        )
        self.adaptive.load_models()

    def run(self) -> int:
        """Take part in rounds until the server publishes the final model (with `serve`,
        run after run); returns 0."""
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
                    self.left_runs.add(model.run_id)
                    if model.run_id not in self.runs_joined:
                        self.log.info(
                            "ignoring the final model of run %s, which this client did not join",
                            model.run_id,
                        )
                        continue
                    self._evaluate_final(model)
                    if not self.serve:
                        return 0
                    self.log.info("waiting for the next run")
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
                self._train_round(model, plan)
        finally:
            self.session.close()

    def _newest(self, first: Received | None) -> Envelope | None:
        """The furthest-along model of the current run among those queued: a client that was
        busy training skips the rounds that went by meanwhile. Bad messages are rejected and
        counted."""
        models: list[Envelope] = []
        message = first
        while message is not None:
            with self.rejections.guard(message.topic):
                model = self._decode(message)
                models.append(model)
                if not message.retained:
                    # A retained copy was stored before this client subscribed: its wait
                    # is no transfer time.
                    self.arrived_at[_progress(model)] = message.received_at
            message = self.session.receive(timeout=0)
        for model in models:
            if model.kind == "global" and model.run_id not in self.left_runs:
                if self.current_run and model.run_id != self.current_run:
                    self.log.info("run %s began; leaving run %s", model.run_id, self.current_run)
                    self.left_runs.add(self.current_run)
                if model.run_id != self.current_run:
                    self.feedback.reset()
                self.current_run = model.run_id
        if self.pending_region_model is not None:
            models.insert(0, self.pending_region_model)
            self.pending_region_model = None
        newest: Envelope | None = None
        for model in models:
            if model.run_id in self.left_runs:
                continue
            if model.kind == "region" and model.run_id != self.current_run:
                # Its run may be the current one once the global model is here.
                self.pending_region_model = model
                continue
            if newest is None or _progress(model) >= _progress(newest):
                newest = model
        return newest

    def _decode(self, message: Received) -> Envelope:
        model = decode(
            message.payload,
            kinds={"global", "region"},
            max_bytes=self.config.wire.max_payload_bytes,
            schema=self.schema,
            verify=self.security.verify,
        )
        if model.kind == "region" and model.region != self.region:
            raise WireError("wrong-region", f"region model of {model.region} on {self.region}'s")
        return model

    def _train_round(self, start: Envelope, plan: RoundPlan) -> None:
        """Train from a global model (edge round 1) or the region's model (later edge rounds)."""
        update = train_from(
            self.task,
            self.model,
            self.data,
            start,
            self.client_id,
            self.region,
            plan.training,
            self.config.federation.seed,
        )
        downloaded = transfer_seconds(start.sent_at, self.arrived_at.pop(_progress(start), 0.0))
        if downloaded is not None:
            update.metrics[DOWNLOAD_METRIC] = downloaded
        coding, choice = plan, None
        if plan.update_codec == ADAPTIVE:
            # The round opened when its start model was sent (the fog broker's deadline runs
            # from then); without a plausible timestamp, from when it got here.
            spent = transfer_seconds(start.sent_at, time.time())
            if spent is None:
                spent = (downloaded or 0.0) + update.metrics["train_seconds"]
            choice = self.adaptive.choose(
                plan, upload_budget(plan, self.config.fog.deadline_s, spent)
            )
            coding = choice.plan(plan)
            update.metrics.update(choice.metrics)
            if choice.fresh_feedback:
                self.feedback.reset()
        payload = encode_update(update, start, coding, self.schema, self.feedback)
        if choice is not None:
            self.adaptive.encoded(choice, len(payload))
        began = time.monotonic()
        self.session.publish(self.topics.updates(self.region, self.client_id), payload)
        self.adaptive.measured(len(payload), time.monotonic() - began)
        edge = f" (edge round {start.edge_round})" if start.kind == "region" else ""
        metrics = update.metrics
        before = (
            f"eval_loss {metrics['eval_loss']:.4f} before training, "
            if "eval_loss" in metrics
            else ""
        )
        codec = ""
        if coding is not plan:
            predicted = metrics.get(PREDICTED_METRIC)
            codec = (
                f"; sent {_codec_label(coding)} ({len(payload):,} bytes) in "
                f"{self.adaptive.history[-1].seconds:.2f} s"
                + (f", predicted {predicted:.2f} s" if predicted is not None else "")
                + f", budget {metrics[BUDGET_METRIC]:.2f} s"
            )
        self.log.info(
            "round %d%s: %strain_loss %.4f, %.2f s%s",
            start.round,
            edge,
            before,
            metrics["train_loss"],
            metrics["train_seconds"],
            codec,
        )

    def _link_future(self) -> Callable[[], LinkFuture] | None:
        """Under an emulated link with a known clock: bytes → seconds an upload starting
        now takes (the oracle controller's knowledge); else None."""
        origin = os.environ.get(LINK_ORIGIN_ENV, "")
        link = self.config.links.link_for(self.region, self.client_id, self.config.federation.seed)
        try:
            origin_unix_s = float(origin)
        except ValueError:
            return None
        if link is None:
            return None

        def future() -> LinkFuture:
            now = time.time() - origin_unix_s
            return lambda n_bytes: link.transfer_time(n_bytes, now, "uplink")

        return future

    def _evaluate_final(self, final_model: Envelope) -> None:
        report = evaluate_final(
            self.task, self.model, self.data, final_model, self.client_id, self.region
        )
        self.session.publish(self.topics.updates(self.region, self.client_id), encode(report))
        self.log.info(
            "final model: eval_loss %.4f; run %s is over",
            report.metrics["eval_loss"],
            final_model.run_id,
        )


def _codec_label(plan: RoundPlan) -> str:
    codec = plan.update_codec
    return f"topk {plan.topk_fraction:g}" if codec == "topk" else codec


def _progress(model: Envelope) -> tuple[bool, int, int]:
    return (model.final, model.round, model.edge_round)


def run(
    config: FogflConfig, client_id: str, region: str, torch_threads: int = 1, serve: bool = False
) -> int:
    # Many clients share a few cores; one thread each avoids oversubscription.
    torch.set_num_threads(torch_threads)
    return FederatedClient(config, client_id, region, serve).run()
