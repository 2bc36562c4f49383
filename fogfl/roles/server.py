"""Central server: Flower's server over the regions, publishing every global model over MQTT.

At the start of round r it publishes the round announcement (``fl/round``) and the round-r
global model (``fl/global_model``), both retained, then Flower asks each region's bridge
to fit. After the last round it publishes the final model marked final, collects the
clients' evaluation of it through the bridges, writes the run directory and exits.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from fogfl import flower
from fogfl.aggregation import mean_metrics
from fogfl.config import FogflConfig, RoundPlan, dump_config
from fogfl.logs import role_logger
from fogfl.mqtt import MqttSession
from fogfl.run_dir import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    RoundRecord,
    new_run_id,
    write_atomic,
    write_metrics,
)
from fogfl.schedules import final_population, round_participants
from fogfl.tasks import load_task
from fogfl.tasks.base import model_tensors
from fogfl.wire import Envelope, ModelSchema, encode

ROLE = "server"


class Server:
    def __init__(self, config: FogflConfig) -> None:
        self.config = config
        self.run_id = config.federation.run_id or new_run_id()
        self.run_dir = config.server.run_dir or Path("runs") / self.run_id
        self.rounds = config.federation.rounds
        self.min_regions = config.federation.required_regions
        self.log = role_logger(ROLE, self.run_id)
        task = load_task(config.task.name, config.task.options)
        self.initial = model_tensors(task.build_model(config.federation.seed))
        self.schema = ModelSchema.of(self.initial)
        self.session = MqttSession(config.mqtt, f"fogfl-server-{os.getpid()}", self.log)
        self.records: dict[int, RoundRecord] = {}
        self.final_model: Envelope | None = None
        self.round_started: dict[int, float] = {}
        self.global_bytes: dict[int, int] = {}
        self.short_rounds: list[str] = []
        self.participants: dict[int, dict[str, list[str]] | None] = {}

    def run(self) -> int:
        """Run every round; returns 0 when each had at least `min_regions` regions."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / CONFIG_FILE, dump_config(self._resolved_config()).encode())
        self.session.connect()
        self.log.info(
            "run %s: %d rounds over at least %d regions, task %s (%d parameters); Flower on %s",
            self.run_id,
            self.rounds,
            self.min_regions,
            self.config.task.name,
            self.schema.num_values,
            self.config.server.address,
        )
        strategy = flower.HierarchicalStrategy(
            flower.make_strategy(
                self.config.server.strategy,
                self.schema.ordered(self.initial),
                self.min_regions,
                flower.strategy_options(self.config),
            ),
            hooks=self,
            num_rounds=self.rounds,
            regions=len(self.config.federation.regions),
            min_regions=self.min_regions,
            region_wait_s=self.config.server.region_wait_s,
        )
        try:
            flower.serve(self.config.server.address, strategy, self.config.server.round_timeout_s)
        finally:
            self.session.close()
        self._write_outputs()
        if self.short_rounds:
            self.log.error(
                "run %s finished short of regions: %s", self.run_id, "; ".join(self.short_rounds)
            )
            return 1
        self.log.info("run %s finished; outputs in %s", self.run_id, self.run_dir)
        return 0

    # RoundHooks: called by Flower's server loop through HierarchicalStrategy.

    def start_round(self, server_round: int, arrays: flower.Arrays) -> flower.Config:
        self.round_started[server_round] = time.monotonic()
        chosen = round_participants(self.config.federation, server_round)
        if chosen is not None:
            total = sum(len(ids) for ids in self.config.federation.client_ids().values())
            picked = sum(len(ids) for ids in chosen.values())
            self.log.info("round %d: %d of %d clients take part", server_round, picked, total)
        self.participants[server_round] = chosen
        self.global_bytes[server_round] = self._publish_global(server_round, arrays, final=False)
        return self._fit_config(server_round)

    def finish(self, server_round: int, arrays: flower.Arrays) -> flower.Config:
        self._publish_global(server_round, arrays, final=True)
        return self._fit_config(server_round)

    def fit_done(
        self, server_round: int, reports: list[flower.RegionReport], failures: list[str]
    ) -> None:
        for reason in failures:
            self.log.warning("round %d: a region failed: %s", server_round, reason)
        if len(reports) < self.min_regions:
            self.short_rounds.append(
                f"round {server_round}: {len(reports)} of {self.min_regions} regions"
            )
        metrics = mean_metrics(
            [(int(r.metrics.get("examples", r.num_examples)), r.metrics) for r in reports]
        )
        clients = sum(int(r.metrics.get("clients", 0)) for r in reports)
        updates_bytes = sum(int(r.metrics.get("updates_bytes", 0)) for r in reports)
        partial_bytes = sum(int(r.metrics.get("partial_bytes", 0)) for r in reports)
        region_bytes = sum(int(r.metrics.get("region_bytes", 0)) for r in reports)
        global_bytes = self.global_bytes.get(server_round, 0)
        record = self._record(server_round)
        record.clients = clients
        record.regions = len(reports)
        record.failed_regions = len(failures)
        record.train_loss = metrics.get("train_loss")
        record.bytes_up = updates_bytes + partial_bytes
        record.bytes_down = global_bytes * clients + region_bytes
        record.bytes_edge = updates_bytes + region_bytes + global_bytes * clients
        record.bytes_cloud = partial_bytes + global_bytes * len(reports)
        record.round_seconds = time.monotonic() - self.round_started.get(
            server_round, time.monotonic()
        )
        # Clients evaluate the global model they receive before training on it.
        self._record(server_round - 1).set_evaluation(metrics)
        self._write_metrics()
        self.log.info(
            "round %d: %d regions, %d clients, train_loss %s, %.2f s",
            server_round,
            len(reports),
            clients,
            _fmt(record.train_loss),
            record.round_seconds,
        )

    def evaluation_done(
        self, server_round: int, reports: list[flower.RegionReport], failures: list[str]
    ) -> None:
        for reason in failures:
            self.log.warning("final evaluation: a region failed: %s", reason)
        metrics = mean_metrics([(r.num_examples, r.metrics) for r in reports])
        self._record(server_round).set_evaluation(metrics)
        self._write_metrics()
        self.log.info("final model: eval_loss %s", _fmt(metrics.get("eval_loss")))

    # internals

    def _publish_global(self, server_round: int, arrays: flower.Arrays, final: bool) -> int:
        tensors = self.schema.named(arrays)
        config = self._round_config(server_round, final)
        announcement = Envelope(
            kind="round",
            run_id=self.run_id,
            round=server_round,
            sender="server",
            config=config,
            final=final,
            schema=self.schema,
        )
        model = Envelope(
            kind="global",
            run_id=self.run_id,
            round=server_round,
            sender="server",
            tensors=tensors,
            config=config,
            final=final,
        )
        self.session.publish(
            self.session.topics.round_announcement, encode(announcement), retain=True
        )
        payload = encode(model, self.config.wire.codec)
        self.session.publish(self.session.topics.global_model, payload, retain=True)
        if final:
            self.final_model = model
        self.log.info(
            "%s model for round %d published (%d bytes)",
            "final" if final else "global",
            server_round,
            len(payload),
        )
        return len(payload)

    def _round_config(self, server_round: int, final: bool) -> dict[str, object]:
        """What every role needs to know about the round, announced with it."""
        federation = self.config.federation
        chosen = final_population(federation) if final else self.participants.get(server_round)
        plan = RoundPlan(
            **self.config.training.model_dump(),
            weighting=federation.weighting,
            edge_rounds=federation.edge_rounds,
            participants=chosen,
        )
        return plan.model_dump(mode="json", exclude_none=True)

    def _fit_config(self, server_round: int) -> flower.Config:
        return {"run_id": self.run_id, "round": server_round, "schema": self.schema.to_json()}

    def _record(self, server_round: int) -> RoundRecord:
        return self.records.setdefault(server_round, RoundRecord(round=server_round))

    def _write_metrics(self) -> None:
        write_metrics(self.run_dir / METRICS_FILE, [self.records[r] for r in sorted(self.records)])

    def _write_outputs(self) -> None:
        self._write_metrics()
        if self.final_model is not None:
            write_atomic(self.run_dir / MODEL_FILE, encode(self.final_model))
        summary = {
            "run_id": self.run_id,
            "task": self.config.task.name,
            "rounds": self.rounds,
            "regions": self.config.federation.regions,
            "short_rounds": self.short_rounds,
            "final": _as_dict(self.records.get(self.rounds)),
        }
        write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2).encode())

    def _resolved_config(self) -> FogflConfig:
        resolved = self.config.model_copy(deep=True)
        resolved.federation.run_id = self.run_id
        resolved.server.run_dir = self.run_dir
        return resolved


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _as_dict(record: RoundRecord | None) -> dict[str, object]:
    return {} if record is None else {k: v for k, v in vars(record).items() if v is not None}


def run(config: FogflConfig) -> int:
    return Server(config).run()
