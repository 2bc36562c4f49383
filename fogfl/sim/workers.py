"""The clients' side of the simulation, run in worker processes.

A client job is what a runtime client does with one message: decode the global model (or
its region's model), evaluate it on the test split when it is a new global model, train
with the round's settings and seed, and encode its update. Each worker process owns a fixed
share of the clients and keeps their data and one model per task, so a client's data is
loaded once per experiment however many rounds and variants it takes part in. Results come
back in the order the jobs were given, so the aggregates do not depend on the number of
workers.
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

from fogfl.codecs import ErrorFeedback
from fogfl.config import FogflConfig, TrainingSettings, read_round_plan
from fogfl.transfers import DOWNLOAD_METRIC
from fogfl.wire import ModelSchema, decode, encode

if TYPE_CHECKING:
    from torch import nn

    from fogfl.tasks.base import Partition, Task

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")

# Wall-clock fields of a message (its sent_at, the client's train_seconds) take fixed values
# of the runtime's usual length, so that simulated byte counts are the same on every run.
SENT_AT = 1_700_000_000.123456
TRAIN_SECONDS = 0.123456789012345
DOWNLOAD_SECONDS = 0.0123456789012345
JOBS_AHEAD_PER_WORKER = 8
# Error feedback is per client and run; a worker keeps that of its last few runs.
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


@dataclass
class ClientJob:
    """One client receiving one model: train on it (`final` False) or only evaluate it."""

    task: TaskKey
    client_id: str
    region: str
    start: bytes
    settings: TrainingSettings
    max_bytes: int
    final: bool = False


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
        payload = encode_update(message, start, plan, state.schema, feedback)
        return ClientReply(payload, data.description, data.num_train, data.num_test, measured)
    return ClientReply(payload, data.description, data.num_train, data.num_test)


def _feedback(run_id: str, client_id: str) -> ErrorFeedback:
    """The client's error feedback in this run (kept in the worker that owns the client)."""
    clients = _FEEDBACK.setdefault(run_id, {})
    _FEEDBACK.move_to_end(run_id)
    while len(_FEEDBACK) > FEEDBACK_RUNS:
        _FEEDBACK.popitem(last=False)
    return clients.setdefault(client_id, ErrorFeedback())


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
