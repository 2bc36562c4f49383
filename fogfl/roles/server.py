"""Central server: Flower's server over the regions, publishing every global model over MQTT.

At the start of round r it publishes the round announcement (``fl/round``) and the round-r
global model (``fl/global_model``), both retained, then Flower asks each region's bridge
to fit. After the last round it publishes the final model marked final, collects the
clients' evaluation of it through the bridges, announces that the run is over, writes the
run directory and exits.

A new run first clears the retained partials and region models of its regions, and every
retained chunk an earlier run left, so nothing of an earlier run is taken for its own.
After every round it keeps a checkpoint in the run directory; `resume` continues the run
from the last completed round, republishing that round's successor. A round short of
`federation.min_regions`, or any error in the rounds (a publish that fails, …), ends the
process at once with exit code 1 and the reason in one line; the checkpoint stays, to
resume from.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import NoReturn, cast

from fogfl import flower
from fogfl.aggregation import mean_metrics
from fogfl.config import FogflConfig, RoundPlan, dump_config
from fogfl.errors import ConfigError, FogflError
from fogfl.logs import role_logger
from fogfl.mqtt import MqttSession, role_client_id
from fogfl.processes import release_held_port
from fogfl.run_dir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LINKS_COUNTERS_FILE,
    LINKS_DIR,
    METRICS_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    Checkpoint,
    LinkBytes,
    RoundRecord,
    new_run_id,
    read_checkpoint,
    read_link_bytes,
    write_atomic,
    write_checkpoint,
    write_metrics,
)
from fogfl.schedules import final_population, round_participants
from fogfl.security.identities import server_identity
from fogfl.security.role import role_security
from fogfl.tasks import load_task
from fogfl.tasks.base import model_tensors, shared_partitions
from fogfl.transfers import CLOUD_UPLOAD_METRIC, TRANSFERS_METRIC, RegionTransfers, combine
from fogfl.wire import Codec, Envelope, ModelSchema, encode

ROLE = "server"
# The links runner rewrites its counters this often at most (see the launcher); a round's
# wire bytes wait for a copy written after the round closed.
LINK_COUNTERS_WAIT_S = 2.0


class Server:
    def __init__(self, config: FogflConfig, resume: bool = False) -> None:
        self.config = config
        self.rounds = config.federation.rounds
        self.min_regions = config.federation.required_regions
        task = load_task(config.task.name, config.task.options, config.python_path)
        self.initial = model_tensors(task.build_model(config.federation.seed))
        population = [c for ids in config.federation.client_ids().values() for c in ids]
        self.shared_partitions = shared_partitions(task, population)
        self.schema = ModelSchema.of(self.initial)
        self.checkpoint: Checkpoint | None = None
        if resume:
            if config.server.run_dir is None:
                raise ConfigError(
                    "--resume needs the run's directory: --run-dir DIR or server.run_dir"
                )
            self.checkpoint = read_checkpoint(config.server.run_dir / CHECKPOINT_FILE)
        self.run_id = self._run_id(resume)
        # Resuming a run that never completed a round still is that run: its retained
        # partials may be of use.
        self.resume = resume and (
            self.checkpoint is not None or config.federation.run_id is not None
        )
        self.run_dir = config.server.run_dir or Path("runs") / self.run_id
        self.log = role_logger(ROLE, self.run_id)
        self.security = role_security(config, server_identity(), self.log)
        self.session = MqttSession(
            self.security.mqtt, role_client_id(config.mqtt, "server"), self.log, wire=config.wire
        )
        self.records: dict[int, RoundRecord] = {}
        self.completed = 0
        self.global_model = self.schema.ordered(self.initial)
        self.strategy_state = flower.StrategyState()
        if self.checkpoint is not None:
            self._check_fits(self.checkpoint)
            self.records = {record.round: record for record in self.checkpoint.records}
            self.completed = self.checkpoint.round
            self.global_model = self.checkpoint.global_model
            self.strategy_state = flower.StrategyState(
                self.checkpoint.strategy_tensors, self.checkpoint.strategy_values
            )
        self.final_model: Envelope | None = None
        self.round_started: dict[int, float] = {}
        self.global_bytes: dict[int, int] = {}
        self.short_rounds: list[str] = []
        self.participants: dict[int, dict[str, list[str]] | None] = {}
        self.link_counters = self.run_dir / LINKS_DIR / LINKS_COUNTERS_FILE
        self.link_bytes: LinkBytes | None = None

    def run(self) -> int:
        """Run every round (from the checkpoint's, when resuming); returns 0 when the run
        finished. A failed round or an error ends the process with exit code 1."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.checkpoint is not None and self.checkpoint.finished:
            self.log.info(
                "run %s finished already (%d rounds); nothing to resume", self.run_id, self.rounds
            )
            with self.session.connect():
                self._announce_end()
            return 0
        write_atomic(self.run_dir / CONFIG_FILE, dump_config(self._resolved_config()).encode())
        self.session.connect()
        if self.resume:
            self.log.info(
                "run %s resumes after round %d of %d (checkpoint in %s); Flower on %s",
                self.run_id,
                self.completed,
                self.rounds,
                self.run_dir,
                self.config.server.address,
            )
        else:
            self._clear_retained()
            self.log.info(
                "run %s: %d rounds over at least %d regions, task %s (%d parameters); Flower on %s",
                self.run_id,
                self.rounds,
                self.min_regions,
                self.config.task.name,
                self.schema.num_values,
                self.config.server.address,
            )
            for key, clients in self.shared_partitions.items():
                self.log.warning(
                    "clients %s would train on the same data (%s); give each client its own "
                    "number (north-01…north-03, south-04…)",
                    ", ".join(clients),
                    key,
                )
        inner = flower.make_strategy(
            self.config.server.strategy,
            self.global_model,
            self.min_regions,
            flower.strategy_options(self.config),
            self.config.python_path,
        )
        flower.restore_strategy_state(inner, self.strategy_state)
        strategy = flower.HierarchicalStrategy(
            inner,
            hooks=self,
            num_rounds=self.rounds,
            min_regions=self.min_regions,
            completed=self.completed,
        )
        credentials = flower.ServerCredentials.of(self.security)
        roster = flower.RegionRoster(
            self.config.federation.regions,
            self.config.server.region_wait_s,
            self.log,
            credentials.trust,
        )
        try:
            release_held_port()  # `fogfl up` held Flower's port for us until now
            flower.serve(
                self.config.server.address,
                strategy,
                roster,
                self.config.server.round_timeout_s,
                credentials.certificates,
            )
            self._write_outputs()
            self._write_checkpoint(finished=True)
            self._announce_end()
        except Exception as error:  # whatever it is, the run cannot go on: stop now
            self._stop(error)
        self.session.close()
        self.log.info("run %s finished; outputs in %s", self.run_id, self.run_dir)
        return 0

    # RoundHooks: called by Flower's server loop through HierarchicalStrategy.

    def start_round(self, server_round: int, arrays: flower.Arrays) -> flower.Config:
        self.round_started[server_round] = time.monotonic()
        if self.link_bytes is None:
            self.link_bytes = read_link_bytes(self.link_counters)
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
        self._record_transfers(record, reports)
        # Clients evaluate the global model they receive before training on it.
        self._record(server_round - 1).set_evaluation(metrics)
        self._write_metrics()
        self.log.info(
            "round %d: %d regions (%s), %d clients, train_loss %s, %.2f s",
            server_round,
            len(reports),
            ", ".join(r.region for r in reports) or "none",
            clients,
            _fmt(record.train_loss),
            record.round_seconds,
        )

    def round_done(
        self, server_round: int, arrays: flower.Arrays, state: flower.StrategyState
    ) -> None:
        self.completed = server_round
        self.global_model = arrays
        self.strategy_state = state
        self._write_checkpoint(finished=False)

    def evaluation_done(
        self, server_round: int, reports: list[flower.RegionReport], failures: list[str]
    ) -> None:
        for reason in failures:
            self.log.warning("final evaluation: a region failed: %s", reason)
        metrics = mean_metrics([(r.num_examples, r.metrics) for r in reports])
        self._record(server_round).set_evaluation(metrics)
        self._count_late(
            [RegionTransfers.of_json(r.metrics.get(TRANSFERS_METRIC)) for r in reports]
        )
        self._write_metrics()
        self.log.info("final model: eval_loss %s", _fmt(metrics.get("eval_loss")))

    # internals

    def _record_transfers(self, record: RoundRecord, reports: list[flower.RegionReport]) -> None:
        """The round's transfer times and stragglers from the regions' partials, and with
        emulated links the bytes they carried since the previous round closed."""
        regions = [RegionTransfers.of_json(r.metrics.get(TRANSFERS_METRIC)) for r in reports]
        record.set_transfers(combine(regions))
        record.late_updates = record.late_updates or 0
        self._count_late(regions)
        cloud = [
            float(value)
            for r in reports
            if isinstance(value := r.metrics.get(CLOUD_UPLOAD_METRIC), int | float)
        ]
        record.cloud_upload_s = max(cloud, default=None)
        now = read_link_bytes(self.link_counters, time.time(), LINK_COUNTERS_WAIT_S)
        if now is not None and self.link_bytes is not None:
            record.wire_bytes_up = now.uplink - self.link_bytes.uplink
            record.wire_bytes_down = now.downlink - self.link_bytes.downlink
            if self.config.links.cloud is not None or self.config.links.cloud_regions:
                record.cloud_wire_bytes_up = now.cloud_uplink - self.link_bytes.cloud_uplink
                record.cloud_wire_bytes_down = now.cloud_downlink - self.link_bytes.cloud_downlink
        self.link_bytes = now

    def _count_late(self, regions: list[RegionTransfers]) -> None:
        """Updates that came after their round closed, added to that round's row."""
        for region in regions:
            for number, count in region.late.items():
                late = self.records.get(number)
                if late is not None and number >= 1:
                    late.late_updates = (late.late_updates or 0) + count

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
        wire = self.config.wire
        payload = encode(
            model,
            cast(Codec, wire.tier_codec("global")),
            self.security.signer,
            compression=wire.compression,
        )
        limit = self.config.wire.max_payload_bytes
        if len(payload) > limit:
            raise FogflError(
                f"the {'final' if final else 'global'} model of round {server_round} is "
                f"{len(payload):,} bytes, over wire.max_payload_bytes ({limit:,}): no role "
                "would accept it; raise the limit (up to 4 GiB: larger messages travel in "
                "chunks, docs/protocol.md) or use wire.codec float16"
            )
        self.session.publish(
            self.session.topics.round_announcement,
            encode(announcement, signer=self.security.signer),
            retain=True,
        )
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

    def _round_config(
        self, server_round: int, final: bool, ended: bool = False
    ) -> dict[str, object]:
        """What every role needs to know about the round, announced with it."""
        federation = self.config.federation
        chosen = final_population(federation) if final else self.participants.get(server_round)
        plan = RoundPlan(
            **self.config.training.model_dump(),
            weighting=federation.weighting,
            edge_rounds=federation.edge_rounds,
            participants=chosen,
            ended=ended,
            **self.config.wire.announced(),
        )
        return plan.model_dump(mode="json", exclude_none=True)

    def _clear_retained(self) -> None:
        """A new run supersedes what earlier runs left retained for its regions: their
        partials and region models are cleared (an empty retained message, which sessions
        never hand to a role), with every chunk of one; so are the chunks left beside the
        global model and the announcement, which the new run's own replace only whole."""
        topics = self.session.topics
        regions = self.config.federation.regions
        chunks = self.session.clear_retained(
            [
                topic
                for region in regions
                for topic in (topics.partial(region), topics.region_model(region))
            ],
            chunks_of=[topics.global_model, topics.round_announcement],
        )
        self.log.info(
            "cleared retained partials and region models of %s (%d retained chunks in all)",
            ", ".join(regions),
            chunks,
        )

    def _announce_end(self) -> None:
        """Tell roles that join later that the run is over: its last announcement says so."""
        announcement = Envelope(
            kind="round",
            run_id=self.run_id,
            round=self.rounds,
            sender="server",
            config=self._round_config(self.rounds, final=True, ended=True),
            final=True,
            schema=self.schema,
        )
        self.session.publish(
            self.session.topics.round_announcement,
            encode(announcement, signer=self.security.signer),
            retain=True,
        )
        self.log.info("announced the end of run %s", self.run_id)

    def _write_checkpoint(self, finished: bool) -> None:
        write_checkpoint(
            self.run_dir / CHECKPOINT_FILE,
            Checkpoint(
                run_id=self.run_id,
                round=self.completed,
                rounds=self.rounds,
                strategy=self.config.server.strategy,
                global_model=self.global_model,
                strategy_tensors=self.strategy_state.tensors,
                strategy_values=self.strategy_state.values,
                records=[self.records[r] for r in sorted(self.records)],
                finished=finished,
            ),
        )

    def _stop(self, error: Exception) -> NoReturn:
        """Fail fast: the reason in one line, outputs written, the process gone (Flower's
        threads would otherwise keep it alive)."""
        reason = str(error) if isinstance(error, FogflError) else f"{type(error).__name__}: {error}"
        reason = " ".join(reason.split())
        self.log.error("run %s stopped: %s", self.run_id, reason)
        self.log.error(
            "%s; continue the run with `fogfl server --run-dir %s --resume`",
            f"checkpoint after round {self.completed} kept" if self.completed else "no round done",
            self.run_dir,
        )
        with contextlib.suppress(Exception):
            self._write_outputs(failure=reason)
        with contextlib.suppress(Exception):
            self.session.close()
        flower.exit_now(1)

    def _run_id(self, resume: bool) -> str:
        pinned = self.config.federation.run_id
        if self.checkpoint is None:
            if resume:
                logger = role_logger(ROLE, pinned or "")
                logger.info(
                    "no checkpoint in %s: run %s starts from round 1",
                    self.config.server.run_dir,
                    pinned or "(new)",
                )
            return pinned or new_run_id()
        if pinned is not None and pinned != self.checkpoint.run_id:
            raise ConfigError(
                f"the checkpoint in {self.config.server.run_dir} is of run "
                f"{self.checkpoint.run_id}, not of federation.run_id {pinned}"
            )
        return self.checkpoint.run_id

    def _check_fits(self, checkpoint: Checkpoint) -> None:
        """A checkpoint resumes only the run it was taken of: same rounds, strategy, model."""
        where = self.config.server.run_dir
        if checkpoint.rounds != self.rounds:
            raise ConfigError(
                f"the checkpoint in {where} is of a {checkpoint.rounds}-round run; "
                f"federation.rounds is {self.rounds}"
            )
        if checkpoint.strategy != self.config.server.strategy:
            raise ConfigError(
                f"the checkpoint in {where} was taken under strategy {checkpoint.strategy}; "
                f"server.strategy is {self.config.server.strategy}"
            )
        shapes = [tuple(array.shape) for array in checkpoint.global_model]
        if shapes != [spec.shape for spec in self.schema.tensors]:
            raise ConfigError(
                f"the checkpoint in {where} holds a model of {len(shapes)} tensors that does "
                f"not fit task {self.config.task.name}'s model; is it another task?"
            )

    def _fit_config(self, server_round: int) -> flower.Config:
        return {"run_id": self.run_id, "round": server_round, "schema": self.schema.to_json()}

    def _record(self, server_round: int) -> RoundRecord:
        return self.records.setdefault(server_round, RoundRecord(round=server_round))

    def _write_metrics(self) -> None:
        write_metrics(self.run_dir / METRICS_FILE, [self.records[r] for r in sorted(self.records)])

    def _write_outputs(self, failure: str | None = None) -> None:
        self._write_metrics()
        if self.final_model is not None:
            write_atomic(
                self.run_dir / MODEL_FILE, encode(self.final_model, signer=self.security.signer)
            )
        summary = {
            "run_id": self.run_id,
            "task": self.config.task.name,
            "rounds": self.rounds,
            "regions": self.config.federation.regions,
            "short_rounds": self.short_rounds,
            "completed_rounds": self.completed,
            "failure": failure,
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


def run(config: FogflConfig, resume: bool = False) -> int:
    return Server(config, resume).run()
