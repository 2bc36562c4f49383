"""The clients' side of the simulation, run in worker processes.

A client job is what a runtime client does with one message: decode the global model (or
its region's model), evaluate it on the test split when it is a new global model, train
with the round's settings and seed, and encode its update. Each worker process owns a fixed
share of the clients and keeps their data and one model per task, so a client's data is
loaded once per experiment however many rounds and variants it takes part in. Results come
back in the order the jobs were given, so the aggregates do not depend on the number of
workers.

Under `wire.update_codec: adaptive` a client picks its update's codec after training, as
`fogfl client` does (`fogfl.bandwidth.adaptive`), from what the coordinator tells it of its
simulated clock (`UploadClock`): the uploads it has measured, what the download took and,
for the oracle, its link.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from fogfl.bandwidth.adaptive import ADAPTIVE, AdaptiveCodec, Choice, upload_budget
from fogfl.bandwidth.controllers import LinkFuture, Upload
from fogfl.codecs import ErrorFeedback
from fogfl.config import FogflConfig, RoundPlan, TrainingSettings, WireSettings, read_round_plan
from fogfl.errors import FogflError
from fogfl.links.model import LinkModel
from fogfl.logs import role_logger
from fogfl.transfers import DOWNLOAD_METRIC
from fogfl.wire import ModelSchema, decode, encode

if TYPE_CHECKING:
    from torch import nn

    from fogfl.tasks.base import Partition, Task

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")
StateT = TypeVar("StateT")

# Wall-clock fields of a message (its sent_at, the client's train_seconds) take fixed values
# of the runtime's usual length, so that simulated byte counts are the same on every run.
SENT_AT = 1_700_000_000.123456
TRAIN_SECONDS = 0.123456789012345
DOWNLOAD_SECONDS = 0.0123456789012345
JOBS_AHEAD_PER_WORKER = 8
# Error feedback and adaptive codecs are per client and run; a worker keeps those of its
# last few runs.
FEEDBACK_RUNS = 4


@dataclass(frozen=True)
class TaskKey:
    """Which task, with which options and data seed: what a worker's cache is keyed by."""

    name: str
    options: str
    seed: int
    python_path: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: FogflConfig) -> TaskKey:
        options = json.dumps(config.task.options, sort_keys=True, default=str)
        python_path = tuple(str(d) for d in config.python_path)
        return cls(config.task.name, options, config.federation.seed, python_path)


@dataclass(frozen=True)
class UploadClock:
    """What a client under `wire.update_codec: adaptive` knows of its edge round on the
    simulated clock when it picks its codec: its measured uploads (oldest first), when the
    round opened and what the start model's download took (link time, seconds); for the
    oracle controller, its link."""

    wire: WireSettings
    fog_deadline_s: float
    uploads: tuple[Upload, ...]
    opened_s: float
    download_s: float
    link: LinkModel | None = None

    def budget_s(self, plan: RoundPlan, train_s: float) -> float:
        """The seconds left for the upload after `train_s` of training, as the runtime's
        client reckons them from when the round opened."""
        return upload_budget(plan, self.fog_deadline_s, self.download_s + train_s)

    def link_future(self, train_s: float) -> Callable[[], LinkFuture] | None:
        """The oracle's knowledge: bytes → seconds the upload takes from when it starts."""
        link = self.link
        if link is None:
            return None
        upload_start_s = self.opened_s + self.download_s + train_s
        return lambda: lambda n_bytes: link.transfer_time(n_bytes, upload_start_s, "uplink")


@dataclass
class ClientJob:
    """One client receiving one model: train on it (`final` False) or only evaluate it.
    `upload_clock` is set when the round's update codec is adaptive."""

    task: TaskKey
    client_id: str
    region: str
    start: bytes
    settings: TrainingSettings
    max_bytes: int
    final: bool = False
    upload_clock: UploadClock | None = None


@dataclass
class ClientReply:
    """A client's answer: the encoded update (or evaluation) and what the client is."""

    payload: bytes
    description: str
    num_train: int
    num_test: int
    train_seconds: float = 0.0  # as measured here, for the simulated clock


@dataclass
class _TaskState:
    task: Task
    model: nn.Module
    schema: ModelSchema
    partitions: dict[str, Partition] = field(default_factory=dict)


_STATE: dict[TaskKey, _TaskState] = {}
_FEEDBACK: OrderedDict[str, dict[str, ErrorFeedback]] = OrderedDict()
_ADAPTIVE: OrderedDict[str, dict[str, AdaptiveCodec]] = OrderedDict()


def client_round(job: ClientJob) -> ClientReply:
    """Everything one client does with one model, as `fogfl client` does it."""
    from fogfl.local_round import encode_update, evaluate_final, train_from

    state = _task_state(job.task)
    data = _partition(state, job.task, job.client_id)
    start = decode(
        job.start, kinds={"global", "region"}, max_bytes=job.max_bytes, schema=state.schema
    )
    if job.final:
        message = evaluate_final(state.task, state.model, data, start, job.client_id, job.region)
        message.sent_at = SENT_AT
        payload = encode(message)
    else:
        plan = read_round_plan(start.config, job.settings)
        message = train_from(
            state.task,
            state.model,
            data,
            start,
            job.client_id,
            job.region,
            plan.training,
            job.task.seed,
        )
        measured = message.metrics["train_seconds"]
        message.metrics["train_seconds"] = TRAIN_SECONDS
        message.metrics[DOWNLOAD_METRIC] = DOWNLOAD_SECONDS
        message.sent_at = SENT_AT
        feedback = _feedback(start.run_id, job.client_id)
        coding, choice = plan, None
        if plan.update_codec == ADAPTIVE:
            # The choice travels in the update's metrics, as the runtime client sends it.
            choice = _choose_codec(job, plan, start.run_id, 4 * state.schema.num_values, measured)
            coding = choice.plan(plan)
            message.metrics.update(choice.metrics)
            if choice.fresh_feedback:
                feedback.reset()
        payload = encode_update(message, start, coding, state.schema, feedback)
        if choice is not None:
            _of_run(_ADAPTIVE, start.run_id)[job.client_id].encoded(choice, len(payload))
        return ClientReply(payload, data.description, data.num_train, data.num_test, measured)
    return ClientReply(payload, data.description, data.num_train, data.num_test)


def _choose_codec(
    job: ClientJob, plan: RoundPlan, run_id: str, model_bytes: int, train_s: float
) -> Choice:
    """The codec the client sends this update in, picked after `train_s` seconds of
    training from its uploads so far and the time left before its fog broker's deadline."""
    clock = job.upload_clock
    if clock is None:
        raise FogflError(f"client {job.client_id}'s job under an adaptive codec has no clock")
    clients = _of_run(_ADAPTIVE, run_id)
    adaptive = clients.get(job.client_id)
    if adaptive is None:
        # One per client and run, as each runtime client has one: its agent and predictor
        # load once, and a controller it cannot run is reported once.
        log = role_logger("client", job.region, job.client_id)
        adaptive = clients[job.client_id] = AdaptiveCodec(clock.wire, model_bytes, log)
    # The coordinator's clock measured the uploads; they replace what this one had.
    adaptive.history.clear()
    for upload in clock.uploads:
        adaptive.measured(upload.bytes, upload.seconds)
    adaptive.link_future = clock.link_future(train_s)
    return adaptive.choose(plan, clock.budget_s(plan, train_s))


def _feedback(run_id: str, client_id: str) -> ErrorFeedback:
    """The client's error feedback in this run (kept in the worker that owns the client)."""
    return _of_run(_FEEDBACK, run_id).setdefault(client_id, ErrorFeedback())


def _of_run(store: OrderedDict[str, dict[str, StateT]], run_id: str) -> dict[str, StateT]:
    """The clients' state of this run in `store`, which keeps the last FEEDBACK_RUNS runs."""
    clients = store.setdefault(run_id, {})
    store.move_to_end(run_id)
    while len(store) > FEEDBACK_RUNS:
        store.popitem(last=False)
    return clients


def load_partitions(key: TaskKey, client_ids: Sequence[str]) -> dict[str, Partition]:
    """The clients' data in this process (for the centralized baseline)."""
    state = _task_state(key)
    return {client_id: _partition(state, key, client_id) for client_id in client_ids}


def task_of(key: TaskKey) -> Task:
    return _task_state(key).task


class ClientPool:
    """Worker processes for client jobs; with ``workers=0`` jobs run in this process.

    Use as a context manager: the workers end when it exits.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(0, workers)
        context = multiprocessing.get_context("spawn")
        # One single-process executor per worker: a client always goes to the same worker,
        # which keeps its data, and each worker takes its jobs in the order given.
        self._executors = [
            ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_start_worker)
            for _ in range(self.workers)
        ]
        # Start them now (each imports torch), in parallel, rather than inside the first round.
        for started in [executor.submit(_ready) for executor in self._executors]:
            started.result()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers and wait until every one has exited (in parallel)."""
        stopping = [
            threading.Thread(target=executor.shutdown, kwargs={"cancel_futures": True})
            for executor in self._executors
        ]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        self._executors = []
        _STATE.clear()
        _FEEDBACK.clear()
        _ADAPTIVE.clear()

    def run(
        self,
        work: Callable[[JobT], ResultT],
        jobs: Sequence[JobT],
        owners: Sequence[int],
    ) -> Iterator[ResultT]:
        """`work(job)` for every job, yielded in job order; `owners[i]` picks job i's worker
        (the same number always picks the same worker). A few jobs per worker are in
        flight at a time, so memory stays small however many jobs there are."""
        if not self._executors:
            with _one_thread():
                for job in jobs:
                    yield work(job)
            return
        queued = iter(zip(jobs, owners, strict=True))
        in_flight: deque[Future[ResultT]] = deque()

        def submit_next() -> None:
            following = next(queued, None)
            if following is not None:
                job, owner = following
                executor = self._executors[owner % len(self._executors)]
                in_flight.append(executor.submit(work, job))

        for _ in range(JOBS_AHEAD_PER_WORKER * len(self._executors)):
            submit_next()
        while in_flight:
            result = in_flight.popleft().result()
            submit_next()
            yield result


def _task_state(key: TaskKey) -> _TaskState:
    state = _STATE.get(key)
    if state is None:
        from fogfl.tasks import load_task
        from fogfl.tasks.base import model_tensors

        task = load_task(key.name, json.loads(key.options), key.python_path)
        model = task.build_model(key.seed)
        task.warm_up(model)
        state = _STATE[key] = _TaskState(task, model, ModelSchema.of(model_tensors(model)))
    return state


def _partition(state: _TaskState, key: TaskKey, client_id: str) -> Partition:
    data = state.partitions.get(client_id)
    if data is None:
        data = state.partitions[client_id] = state.task.load_partition(client_id, key.seed)
    return data


def _ready() -> bool:
    return True


def _start_worker() -> None:
    import torch

    # Ctrl-C is the coordinator's to handle; it shuts the workers down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The workers share the cores; one thread each, like the runtime's clients.
    torch.set_num_threads(1)


@contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
