"""The agent's environment: a client uploading its update once per round over a replayed
link trace, against the round's deadline.

A trace's throughput holds from one sample to the next (the last sample for the median
interval) and the trace replays in a loop. Round k starts at `start_s + k·round_interval_s`;
uploading n bytes takes the time the trace needs to carry 8·n bits from that moment (no
latency, slow start or contention: an upload that overruns does not delay the next round's).
The reward of a round is exactly

    reward = fidelity(codec)   if upload_seconds ≤ deadline_s
           = −miss_penalty     otherwise (the fog broker closed the round without it)

where fidelity is the codec's from fogfl.bandwidth.ladder (1 for float32).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fogfl.bandwidth.controllers import Upload
from fogfl.bandwidth.ladder import CodecStep, upload_bytes
from fogfl.bandwidth.series import LinkSeries
from fogfl.errors import BandwidthError

FloatArray = npt.NDArray[np.float64]


class LinkTrace:
    """A link's throughput over time, replayed in a loop, as upload times."""

    def __init__(self, name: str, time_s: FloatArray, mbit_s: FloatArray) -> None:
        if len(time_s) < 2 or np.any(np.diff(time_s) <= 0):
            raise BandwidthError(f"link trace {name}: needs at least 2 samples at rising times")
        self.name = name
        self.start = np.asarray(time_s, dtype=np.float64) - time_s[0]
        self.mbit_s = np.clip(np.asarray(mbit_s, dtype=np.float64), 0.0, None)
        last = float(np.median(np.diff(self.start)))
        self.duration_s = float(self.start[-1] + last)
        lengths = np.diff(np.append(self.start, self.duration_s))
        # Mbit carried from the trace's start to each sample's start, and over one loop.
        self.carried = np.concatenate([[0.0], np.cumsum(self.mbit_s * lengths)])
        self.per_loop_mbit = float(self.carried[-1])
        if self.per_loop_mbit <= 0:
            raise BandwidthError(f"link trace {name} carries nothing: its throughput is all 0")

    @classmethod
    def of(cls, series: LinkSeries) -> LinkTrace:
        return cls(series.name, series.time_s, series.bandwidth)

    def _carried_at(self, offset_s: float) -> float:
        index = int(np.searchsorted(self.start, offset_s, side="right")) - 1
        return float(self.carried[index] + self.mbit_s[index] * (offset_s - self.start[index]))

    def upload_seconds(self, start_s: float, n_bytes: int) -> float:
        """Seconds to carry `n_bytes` starting at `start_s` (any time; the trace loops)."""
        offset = start_s % self.duration_s
        goal = self._carried_at(offset) + n_bytes * 8 / 1e6
        whole, rest = divmod(goal, self.per_loop_mbit)
        # The sample during which the carried total reaches the rest: carried[i] < rest ≤
        # carried[i + 1], so its rate is positive.
        index = max(int(np.searchsorted(self.carried, rest, side="left")) - 1, 0)
        within = self.start[index] + (rest - self.carried[index]) / self.mbit_s[index]
        return float(whole * self.duration_s + within - offset)

    def mean_mbit_s(self, start_s: float, seconds: float) -> float:
        """The average throughput over [start_s, start_s + seconds)."""
        loops, offset = divmod(start_s, self.duration_s)
        end_loops, end_offset = divmod(start_s + seconds, self.duration_s)
        carried = (end_loops - loops) * self.per_loop_mbit + self._carried_at(end_offset)
        return (carried - self._carried_at(offset)) / seconds


@dataclass(frozen=True)
class EnvironmentSettings:
    """One client's rounds. The default 5 MB model needs 4 Mbit/s to arrive within the
    10 s deadline in float32: the home scenario (6.5 Mbit/s) carries it every round, the
    rural one (2.8) never, the vehicular one (4.2 ± 1.4) about half of the rounds; on the
    HSDPA traces (per-trace means 0.6–4.6 Mbit/s) it hardly ever fits. So the codec is a
    real choice on every data set the agent is trained on."""

    model_bytes: int = 5_000_000
    deadline_s: float = 10.0
    round_interval_s: float = 15.0
    rounds: int = 20
    miss_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.model_bytes < 1:
            raise BandwidthError("the model needs at least one byte")
        if not (self.deadline_s > 0 and self.round_interval_s > 0):
            raise BandwidthError("the deadline and the round interval must be positive")
        if self.rounds < 1:
            raise BandwidthError("an episode needs at least one round")
        if not (self.miss_penalty >= 0 and math.isfinite(self.miss_penalty)):
            raise BandwidthError("the miss penalty must be a finite number ≥ 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: Any, where: str) -> EnvironmentSettings:
        try:
            return cls(
                model_bytes=int(document["model_bytes"]),
                deadline_s=float(document["deadline_s"]),
                round_interval_s=float(document["round_interval_s"]),
                rounds=int(document["rounds"]),
                miss_penalty=float(document["miss_penalty"]),
            )
        except (KeyError, TypeError, ValueError):
            raise BandwidthError(f"{where}: the environment settings are incomplete") from None


def reward(fidelity: float, upload_s: float, deadline_s: float, miss_penalty: float) -> float:
    """The codec's fidelity when the upload meets the deadline, else −miss_penalty."""
    return fidelity if upload_s <= deadline_s else -miss_penalty


@dataclass(frozen=True)
class RoundOutcome:
    round: int
    start_s: float
    codec: CodecStep
    upload: Upload
    missed: bool
    reward: float
    mean_mbit_s: float  # what the link offered during the upload


class UploadEnvironment:
    """One client's rounds over one trace; `history` is its measured uploads so far."""

    def __init__(self, trace: LinkTrace, settings: EnvironmentSettings, start_s: float = 0.0):
        self.trace = trace
        self.settings = settings
        self.start_s = start_s
        self.round = 0
        self.history: list[Upload] = []

    @property
    def now_s(self) -> float:
        return self.start_s + self.round * self.settings.round_interval_s

    @property
    def done(self) -> bool:
        return self.round >= self.settings.rounds

    def upload_seconds(self, n_bytes: int) -> float:
        """What uploading n bytes would take if it started now (what the oracle knows)."""
        return self.trace.upload_seconds(self.now_s, n_bytes)

    def step(self, codec: CodecStep) -> RoundOutcome:
        n_bytes = upload_bytes(self.settings.model_bytes, codec)
        start = self.now_s
        seconds = self.trace.upload_seconds(start, n_bytes)
        missed = seconds > self.settings.deadline_s
        outcome = RoundOutcome(
            self.round,
            start,
            codec,
            Upload(n_bytes, seconds),
            missed,
            reward(codec.fidelity, seconds, self.settings.deadline_s, self.settings.miss_penalty),
            self.trace.mean_mbit_s(start, seconds),
        )
        self.history.append(outcome.upload)
        self.round += 1
        return outcome
