"""One federated run of the hierarchy in one process, with the runtime's semantics.

Each round: the server picks the participants (`fogfl.schedules`) and encodes the global
model; each participant evaluates it and trains (`workers.client_round`); each region's
fog aggregate combines the updates by the fog broker's rule (`RegionRound`); under
κ edge rounds the region model goes back to the region's participants κ − 1 times; each
region's partial goes to the cloud's Flower strategy, exactly as the bridges hand it over.
After the last round every client evaluates the final model. Traffic is the length of the
payloads the runtime would publish; over links, the wire bytes are what the clients' links
carry, a chunked message's chunk headers included. Time is simulated (`fogfl.sim.clock`):
each client's download, training and upload over its link; an update that reaches its fog
broker after it closed the edge round is a straggler and is left out, as in the runtime. Under
`wire.update_codec: adaptive` each client picks its codec after training from the uploads
its link has carried so far (`workers.UploadClock`), and its choice reaches the round's row
as the fog broker records it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from fogfl import flower
from fogfl.aggregation import MetricsMean, RegionRound, mean_metrics, model_aggregate
from fogfl.bandwidth.adaptive import ADAPTIVE, HISTORY
from fogfl.bandwidth.controllers import Upload
from fogfl.codecs import Reference
from fogfl.config import FogflConfig, RoundPlan
from fogfl.run_dir import RoundRecord, new_run_id
from fogfl.schedules import final_population, round_participants
from fogfl.security.signing import Signer, TrustPolicy
from fogfl.sim.clock import ClientTiming, SimulatedNetwork, close_edge_round
from fogfl.sim.workers import (
    SENT_AT,
    ClientJob,
    ClientPool,
    ClientReply,
    TaskKey,
    UploadClock,
    client_round,
)
from fogfl.transfers import combine
from fogfl.wire import Codec, Envelope, ModelSchema, Tensors, decode, encode

RoundDone = Callable[[int], None]
Tier = Literal["update", "partial", "global"]


@dataclass
class ClientOutcome:
    """A client's evaluation of the final model."""

    client_id: str
    region: str
    description: str
    num_train: int
    num_test: int
    metrics: dict[str, float]


@dataclass
class SimulatedRun:
    """What a simulated run produced: the runtime's metrics.csv rows and more."""

    config: FogflConfig
    run_id: str
    records: list[RoundRecord]
    client_updates: list[int] = field(default_factory=list)
    partials: list[int] = field(default_factory=list)
    update_drift: list[float] = field(default_factory=list)
    sim_seconds: list[float] = field(default_factory=list)
    clients: list[ClientOutcome] = field(default_factory=list)
    final_model: bytes = b""
    seconds: float = 0.0
    schema: ModelSchema | None = None

    def final_tensors(self) -> Tensors:
        assert self.schema is not None
        return decode(
            self.final_model,
            kinds={"global"},
            max_bytes=self.config.wire.max_payload_bytes,
            schema=self.schema,
        ).tensors


@dataclass
class _RegionPartial:
    region: str
    payload: bytes
    partial: Envelope
    contributors: int


def simulate(
    config: FogflConfig,
    pool: ClientPool,
    on_round: RoundDone | None = None,
    run_id: str | None = None,
    evaluate_all: bool = False,
) -> SimulatedRun:
    """Run every round of `config`'s federation; `on_round(r)` after each.

    The model after round r is evaluated, as in the runtime, by round r + 1's participants
    (and the final model by every client). With `evaluate_all` every client evaluates every
    round's model, so that under partial participation each round is judged on the same data.
    """
    run_id = run_id or config.federation.run_id or new_run_id()
    hierarchy = _Hierarchy(config, pool, run_id, evaluate_all)
    return hierarchy.run(on_round or (lambda _: None))


class _Hierarchy:
    def __init__(
        self, config: FogflConfig, pool: ClientPool, run_id: str, evaluate_all: bool
    ) -> None:
        from fogfl.tasks import load_task
        from fogfl.tasks.base import model_tensors

        self.config = config
        self.pool = pool
        self.run_id = run_id
        self.evaluate_all = evaluate_all
        self.key = TaskKey.of(config)
        self.max_bytes = config.wire.max_payload_bytes
        task = load_task(config.task.name, config.task.options, config.python_path)
        self.initial = model_tensors(task.build_model(config.federation.seed))
        self.schema = ModelSchema.of(self.initial)
        self.population = config.federation.client_ids()
        self.network = SimulatedNetwork.of(config)
        self.clock_s = 0.0  # link time at the start of the next round
        # Each client's uploads on the simulated clock, for its adaptive codec's next choice.
        self.uploads: dict[str, list[Upload]] = {}
        self.owner = {
            client: index
            for index, client in enumerate(c for ids in self.population.values() for c in ids)
        }
        self.strategy = flower.make_strategy(
            config.server.strategy,
            self.schema.ordered(self.initial),
            config.federation.required_regions,
            flower.strategy_options(config),
            config.python_path,
        )

    def run(self, on_round: RoundDone) -> SimulatedRun:
        started = time.monotonic()
        rounds = self.config.federation.rounds
        result = SimulatedRun(self.config, self.run_id, [RoundRecord(round=0)], schema=self.schema)
        model = self.initial
        if self.evaluate_all:
            result.records[0].set_evaluation(self._evaluate_everyone(1, model, final=False)[1])
        for server_round in range(1, rounds + 1):
            round_started = time.monotonic()
            model, evaluation = self._round(server_round, model, result)
            if not self.evaluate_all:
                result.records[server_round - 1].set_evaluation(evaluation)
            elif server_round < rounds:
                _, everyone = self._evaluate_everyone(server_round + 1, model, final=False)
                result.records[server_round].set_evaluation(everyone)
            result.records[-1].round_seconds = time.monotonic() - round_started
            on_round(server_round)
        result.final_model, evaluation = self._evaluate_everyone(
            rounds, model, final=True, result=result
        )
        result.records[-1].set_evaluation(evaluation)
        result.seconds = time.monotonic() - started
        return result

    def _round(
        self, server_round: int, model: Tensors, result: SimulatedRun
    ) -> tuple[Tensors, dict[str, float]]:
        federation = self.config.federation
        chosen = round_participants(federation, server_round)
        participants = chosen or self.population
        config = self._round_config(chosen)
        global_payload = self._encode(
            Envelope(
                kind="global",
                run_id=self.run_id,
                round=server_round,
                sender="server",
                tensors=model,
                config=config,
                sent_at=SENT_AT,
            ),
            "global",
        )
        fog = {
            region: RegionRound(
                run_id=self.run_id,
                round=server_round,
                phase="fit",
                schema=self.schema,
                deadline=math.inf,
                expected=len(ids),
                participants=set(ids) if chosen is not None else None,
                uniform=federation.weighting == "uniform",
                edge_rounds=federation.edge_rounds,
                config=config,
                model=model_aggregate(self.schema, self.config.fog),
                fog=self.config.fog,
            )
            for region, ids in participants.items()
            if ids
        }
        starts = {region: global_payload for region in fog}
        opened = {region: self.clock_s for region in fog}  # when each edge round opened
        drifts: list[float] = []
        updates = 0
        wire_up = wire_down = 0  # what the clients' links carry, chunk headers included
        for edge_round in range(1, federation.edge_rounds + 1):
            if edge_round > 1:
                starts = {region: self._region_model(region, fog[region]) for region in fog}
            start_models = {r: self._decode(p, "global", "region") for r, p in starts.items()}
            references = {
                r: Reference(start.tensors, self.schema) for r, start in start_models.items()
            }
            for region, start in start_models.items():
                fog[region].reference = start.tensors  # what clipped_mean clips against
            jobs = [
                self._job(
                    client_id,
                    region,
                    starts[region],
                    upload_clock=self._upload_clock(client_id, opened[region], starts[region]),
                )
                for region in fog
                for client_id in participants[region]
            ]
            replies = list(self._replies(jobs))
            timings = [
                self.network.timing(
                    job.client_id,
                    opened[job.region],
                    len(starts[job.region]),
                    reply.train_seconds,
                    len(reply.payload),
                )
                for job, reply in zip(jobs, replies, strict=True)
            ]
            for job, reply, timing in zip(jobs, replies, timings, strict=True):
                # What the client measured of its upload, late or not.
                history = self.uploads.setdefault(job.client_id, [])
                history.append(Upload(len(reply.payload), timing.upload_s))
                del history[:-HISTORY]
                wire_down += self.network.sent_bytes(len(starts[job.region]))
                wire_up += self.network.sent_bytes(len(reply.payload))
            included = self._close_edge_rounds(fog, jobs, timings, opened)
            # Folded in job order, not arrival order: the same sums on every run.
            for job, reply, timing in zip(jobs, replies, timings, strict=True):
                if timing.client_id not in included:
                    continue
                update = self._fold_update(fog[job.region], reply, references[job.region])
                fog[job.region].transfers.add_upload(job.client_id, timing.upload_s)
                fog[job.region].transfers.add_download(job.client_id, timing.download_s)
                fog[job.region].transfers.add_choice(job.client_id, update.metrics)
                drifts.append(_distance(update.tensors, start_models[job.region].tensors))
                updates += 1
        # Flower carries the model as float32 arrays both ways on a fog site's cloud link.
        arrays_bytes = 4 * self.schema.num_values
        done = [
            self.network.region_done(region, self.clock_s, closed, arrays_bytes)
            for region, closed in opened.items()
        ]
        round_sim_s = max(done, default=self.clock_s) - self.clock_s
        self.clock_s += round_sim_s
        partials = [self._partial(region, fog[region]) for region in fog]
        model = self._cloud(server_round, partials, model)
        reports: list[tuple[int, Mapping[str, Any]]] = [
            (p.partial.num_examples, p.partial.metrics) for p in partials
        ]
        metrics = mean_metrics(reports)
        global_bytes = len(global_payload)
        clients = sum(p.contributors for p in partials)
        updates_bytes = sum(int(p.partial.stats["updates_bytes"]) for p in partials)
        region_bytes = sum(int(p.partial.stats["region_bytes"]) for p in partials)
        partial_bytes = sum(len(p.payload) for p in partials)
        result.records.append(
            RoundRecord(
                round=server_round,
                clients=clients,
                regions=len(partials),
                failed_regions=0,
                train_loss=metrics.get("train_loss"),
                bytes_up=updates_bytes + partial_bytes,
                bytes_down=global_bytes * clients + region_bytes,
                bytes_edge=updates_bytes + region_bytes + global_bytes * clients,
                bytes_cloud=partial_bytes + global_bytes * len(partials),
            )
        )
        result.records[-1].set_transfers(combine(region.transfers for region in fog.values()))
        # Every straggler of a simulation does arrive, after its round closed.
        result.records[-1].late_updates = result.records[-1].stragglers
        if self.network.emulated:
            result.records[-1].wire_bytes_up = wire_up
            result.records[-1].wire_bytes_down = wire_down
        if self.network.cloud_emulated:
            # Payload only: the runtime's links count gRPC's framing too.
            linked = sum(self.network.cloud.get(region) is not None for region in fog)
            result.records[-1].cloud_wire_bytes_up = arrays_bytes * linked
            result.records[-1].cloud_wire_bytes_down = arrays_bytes * linked
        result.sim_seconds.append(round_sim_s)
        result.client_updates.append(updates)
        result.partials.append(len(partials))
        result.update_drift.append(float(np.mean(drifts)) if drifts else math.nan)
        return model, metrics

    def _close_edge_rounds(
        self,
        fog: Mapping[str, RegionRound],
        jobs: Sequence[ClientJob],
        timings: Sequence[ClientTiming],
        opened: dict[str, float],
    ) -> set[str]:
        """Close each region's edge round on the simulated clock, by the fog broker's rule;
        the clients whose updates made it. `opened` moves on to each region's close."""
        by_region: dict[str, list[ClientTiming]] = {}
        for job, timing in zip(jobs, timings, strict=True):
            by_region.setdefault(job.region, []).append(timing)
        included: set[str] = set()
        for region, region_timings in by_region.items():
            close = close_edge_round(
                region_timings,
                opened[region],
                fog[region].expected,
                self.config.fog.deadline_s,
                self.config.fog.min_updates,
            )
            fog[region].transfers.stragglers += close.stragglers
            opened[region] = close.closed_s
            included |= close.included
        return included

    def _evaluate_everyone(
        self,
        server_round: int,
        model: Tensors,
        final: bool,
        result: SimulatedRun | None = None,
    ) -> tuple[bytes, dict[str, float]]:
        """Every client evaluates `model`; the fogs average, the server averages. `final`: the
        run's last model, as the server publishes it; otherwise the experimenter's look at a
        round's model, which no client of the runtime would send."""
        final_message = self._encode(
            Envelope(
                kind="global",
                run_id=self.run_id,
                round=server_round,
                sender="server",
                tensors=model,
                config=self._round_config(
                    final_population(self.config.federation) if final else None
                ),
                final=final,
                sent_at=SENT_AT,
            ),
            "global",
        )
        jobs = [
            self._job(client_id, region, final_message, final=True)
            for region, ids in self.population.items()
            for client_id in ids
        ]
        by_region: dict[str, tuple[MetricsMean, list[int]]] = {}
        for job, reply in zip(jobs, self._replies(jobs), strict=True):
            evaluation = decode(
                reply.payload, kinds={"evaluation"}, max_bytes=self.max_bytes, run_id=self.run_id
            )
            mean, examples = by_region.setdefault(job.region, (MetricsMean(), []))
            mean.add(evaluation.metrics, evaluation.num_examples)
            examples.append(evaluation.num_examples)
            if result is None:
                continue
            result.clients.append(
                ClientOutcome(
                    job.client_id,
                    job.region,
                    reply.description,
                    reply.num_train,
                    reply.num_test,
                    evaluation.metrics,
                )
            )
        reports: list[tuple[int, Mapping[str, Any]]] = [
            (sum(n), mean.result()) for mean, n in by_region.values()
        ]
        return final_message, mean_metrics(reports)

    def _replies(self, jobs: Sequence[ClientJob]) -> Iterator[ClientReply]:
        return self.pool.run(client_round, jobs, [self.owner[job.client_id] for job in jobs])

    def _job(
        self,
        client_id: str,
        region: str,
        start: bytes,
        final: bool = False,
        upload_clock: UploadClock | None = None,
    ) -> ClientJob:
        return ClientJob(
            task=self.key,
            client_id=client_id,
            region=region,
            start=start,
            settings=self.config.training,
            max_bytes=self.max_bytes,
            final=final,
            upload_clock=upload_clock,
        )

    def _upload_clock(self, client_id: str, opened_s: float, start: bytes) -> UploadClock | None:
        """What the client knows of its edge round when it picks an adaptive update's
        codec: its uploads so far and what downloading `start` took; the oracle its link.
        None under a fixed update codec."""
        wire = self.config.wire
        if wire.update_codec != ADAPTIVE:
            return None
        return UploadClock(
            wire,
            self.config.fog.deadline_s,
            tuple(self.uploads.get(client_id, ())),
            opened_s,
            self.network.download_time(client_id, opened_s, len(start)),
            self.network.links.get(client_id) if wire.controller == "oracle" else None,
        )

    def _fold_update(self, fog: RegionRound, reply: ClientReply, reference: Reference) -> Envelope:
        """What the fog broker does with a valid update: a delta is added to the model the
        region's clients trained from."""
        update = decode(
            reply.payload,
            kinds={"update"},
            max_bytes=self.max_bytes,
            schema=self.schema,
            run_id=self.run_id,
            reference=reference,
        )
        fog.add(update)
        return update

    def _region_model(self, region: str, fog: RegionRound) -> bytes:
        """End an edge round: the region's mean goes back down to its participants."""
        assert fog.model is not None
        payload = self._encode(replace(fog.region_model(region), sent_at=SENT_AT), "partial")
        fog.region_bytes += len(payload) * len(fog.contributors)
        fog.next_edge_round(math.inf)
        return payload

    def _partial(self, region: str, fog: RegionRound) -> _RegionPartial:
        """The region's partial as the fog broker publishes it and its bridge reads it."""
        assert fog.model is not None
        payload = self._encode(replace(fog.partial(region, {}), sent_at=SENT_AT), "partial")
        partial = decode(
            payload,
            kinds={"partial"},
            max_bytes=self.max_bytes,
            schema=self.schema,
            run_id=self.run_id,
        )
        return _RegionPartial(region, payload, partial, len(fog.contributors))

    def _cloud(self, server_round: int, partials: list[_RegionPartial], model: Tensors) -> Tensors:
        """The cloud tier: the configured Flower strategy over the regions' partials."""
        results = [
            (
                cast(ClientProxy, p.region),  # Flower's aggregation never looks at the proxy
                FitRes(
                    Status(Code.OK, "ok"),
                    ndarrays_to_parameters(self.schema.ordered(p.partial.tensors)),
                    int(p.partial.stats.get("weight", p.partial.num_examples)),
                    {},
                ),
            )
            for p in partials
        ]
        if not results:
            return model
        parameters, _ = self.strategy.aggregate_fit(server_round, results, [])
        if parameters is None:
            return model
        # FedAdam's arithmetic returns float64; the clients' schema is the model's dtypes.
        arrays = parameters_to_ndarrays(parameters)
        return {
            spec.name: np.asarray(array, dtype=spec.dtype)
            for spec, array in zip(self.schema.tensors, arrays, strict=True)
        }

    def _round_config(self, chosen: Mapping[str, list[str]] | None) -> dict[str, Any]:
        """The plan announced with the round, as the server announces it."""
        federation = self.config.federation
        plan = RoundPlan(
            **self.config.training.model_dump(),
            weighting=federation.weighting,
            edge_rounds=federation.edge_rounds,
            participants=None if chosen is None else dict(chosen),
            **self.config.wire.announced(),
        )
        return plan.model_dump(mode="json", exclude_none=True)

    def _encode(self, message: Envelope, tier: Tier) -> bytes:
        """`message` as the runtime's server (global) or fog broker (partial, region
        model) publishes it: in the tier's codec, absolute, signed as in a secure
        federation."""
        wire = self.config.wire
        codec = cast(Codec, wire.tier_codec(tier)) if message.tensors else "float32"
        return encode(message, codec, self._signer(message), compression=wire.compression)

    def _signer(self, message: Envelope) -> Signer | None:
        """Who would sign `message` in a secure federation (the default): the same
        metadata, so the same bytes on the wire; the key is a throwaway."""
        if self.config.security.insecure:
            return None
        name = TrustPolicy.signer_for(message.kind, message.region)
        return None if name is None else Signer(name, _SIGNING_KEY)

    def _decode(self, payload: bytes, *kinds: str) -> Envelope:
        return decode(payload, kinds=set(kinds), max_bytes=self.max_bytes, schema=self.schema)


_SIGNING_KEY = Ed25519PrivateKey.generate()


def _distance(update: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray]) -> float:
    """L2 distance between two models over their float tensors."""
    total = 0.0
    for name, values in update.items():
        if values.dtype.kind == "f":
            total += float(np.square(values.astype(np.float64) - start[name]).sum())
    return math.sqrt(total)
