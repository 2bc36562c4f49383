"""Codec controllers: from a client's measured upload history (and optionally a forecast)
to this round's byte share, codec and predicted upload time.

Every controller decides from the same inputs a client has each round: its past uploads
(bytes, seconds), the model's float32 size and the round's deadline. `rule` is the
throughput rule (the largest share whose upload at the harmonic mean of the last 5
measured throughputs fits the deadline), `robust-rule` divides that prediction by 1 + the
largest relative error the harmonic mean made over the last 5 uploads, `oracle` knows
the link's future (a callable: bytes → upload seconds from now), `ddqn` asks the trained
agent. Without any history the rules send the smallest share, to measure the link.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fogfl.bandwidth.baselines import HARMONIC_K
from fogfl.bandwidth.ladder import SHARES, CodecStep, codec_for_share, step_named, upload_bytes
from fogfl.errors import BandwidthError

FloatArray = npt.NDArray[np.float64]
# Seconds an upload of that many bytes would take if it started now.
LinkFuture = Callable[[int], float]
CONTROLLERS = ("ddqn", "rule", "robust-rule", "oracle")
STATE_FEATURES = (
    "last_throughput",
    "harmonic_throughput",
    "largest_recent_error",
    "lowest_recent_throughput",
)
FORECAST_FEATURE = "forecast_throughput"
# Throughputs in the state are in units of the rate that sends the float32 model in time,
# capped: far above it every codec fits.
STATE_CAP = 10.0


@dataclass(frozen=True)
class Upload:
    """One measured upload: its bytes and the seconds it took."""

    bytes: int
    seconds: float

    @property
    def mbit_s(self) -> float:
        return self.bytes * 8 / 1e6 / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Decision:
    """A controller's choice for one round."""

    controller: str
    share: float
    codec: CodecStep
    upload_bytes: int
    predicted_mbit_s: float | None
    predicted_upload_s: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "controller": self.controller,
            "share": self.share,
            "codec": self.codec.label,
            "upload_bytes": self.upload_bytes,
            "predicted_mbit_s": self.predicted_mbit_s,
            "predicted_upload_s": self.predicted_upload_s,
        }


def check_history(history: Sequence[Upload]) -> None:
    for upload in history:
        if not (upload.bytes > 0 and upload.seconds > 0 and np.isfinite(upload.seconds)):
            raise BandwidthError(
                f"a measured upload needs bytes > 0 and finite seconds > 0, got {upload}"
            )


def harmonic_prediction(history: Sequence[Upload], k: int = HARMONIC_K) -> float | None:
    """The harmonic mean of the last k measured throughputs (Mbit/s); None without history."""
    if not history:
        return None
    recent = [u.mbit_s for u in history[-k:]]
    return len(recent) / sum(1 / r for r in recent)


def largest_recent_error(history: Sequence[Upload], k: int = HARMONIC_K) -> float:
    """max |predicted − measured| / measured over the last k uploads that had a harmonic-mean
    prediction before them (robust MPC's discount); 0 with fewer than two uploads."""
    errors = []
    for index in range(max(1, len(history) - k), len(history)):
        predicted = harmonic_prediction(history[:index], k)
        actual = history[index].mbit_s
        if predicted is not None:
            errors.append(abs(predicted - actual) / actual)
    return max(errors, default=0.0)


def full_rate_mbit_s(model_bytes: int, deadline_s: float) -> float:
    """The throughput that uploads the float32 model exactly in time."""
    return model_bytes * 8 / 1e6 / deadline_s


def state_features(
    history: Sequence[Upload],
    model_bytes: int,
    deadline_s: float,
    forecast_mbit_s: float | None = None,
    with_forecast: bool = False,
) -> FloatArray:
    """The agent's state: STATE_FEATURES (and FORECAST_FEATURE when `with_forecast`),
    throughputs divided by full_rate_mbit_s and capped at STATE_CAP; zeros without
    history. A missing forecast falls back to the harmonic mean."""
    size = len(STATE_FEATURES) + int(with_forecast)
    state = np.zeros(size, dtype=np.float64)
    if history:
        full = full_rate_mbit_s(model_bytes, deadline_s)
        recent = [u.mbit_s for u in history[-HARMONIC_K:]]
        harmonic = harmonic_prediction(history) or 0.0
        state[:4] = [
            recent[-1] / full,
            harmonic / full,
            largest_recent_error(history),
            min(recent) / full,
        ]
        if with_forecast:
            state[4] = (forecast_mbit_s if forecast_mbit_s is not None else harmonic) / full
    return np.clip(state, 0.0, STATE_CAP)


class Controller:
    """Chooses a share of the model's bytes each round; see the module's docstring."""

    name = "controller"

    def __init__(
        self, model_bytes: int, deadline_s: float, overhead: Mapping[str, int] | None = None
    ) -> None:
        if model_bytes < 1 or not deadline_s > 0:
            raise BandwidthError("a controller needs a model of ≥ 1 byte and a deadline > 0 s")
        self.model_bytes = model_bytes
        self.deadline_s = deadline_s
        # What a message adds to its codec's bytes (its envelope), by codec, as the client
        # last saw it; a codec not seen yet counts the largest seen.
        self.overhead = dict(overhead or {})

    def overhead_of(self, codec: CodecStep) -> int:
        return self.overhead.get(codec.codec, max(self.overhead.values(), default=0))

    def size(self, codec: CodecStep) -> int:
        """The bytes an update in `codec` takes: the codec's, and the envelope's."""
        return upload_bytes(self.model_bytes, codec) + self.overhead_of(codec)

    def decide(
        self,
        history: Sequence[Upload],
        forecast_mbit_s: float | None = None,
        link_future: LinkFuture | None = None,
    ) -> Decision:
        check_history(history)
        return self._decide(history, forecast_mbit_s, link_future)

    def _decide(
        self,
        history: Sequence[Upload],
        forecast_mbit_s: float | None,
        link_future: LinkFuture | None,
    ) -> Decision:
        raise NotImplementedError

    def decision(self, share: float, predicted_mbit_s: float | None) -> Decision:
        """The decision for `share`, its upload time predicted at `predicted_mbit_s`."""
        codec = codec_for_share(share)
        n_bytes = self.size(codec)
        seconds = None
        if predicted_mbit_s is not None:
            seconds = n_bytes * 8 / 1e6 / predicted_mbit_s if predicted_mbit_s > 0 else np.inf
        return Decision(self.name, share, codec, n_bytes, predicted_mbit_s, seconds)

    def largest_fitting(self, upload_seconds: Callable[[int], float]) -> float:
        """The largest share whose codec's upload takes at most the deadline (else the
        smallest share)."""
        for share in reversed(SHARES):
            if upload_seconds(self.size(codec_for_share(share))) <= self.deadline_s:
                return share
        return SHARES[0]


class ThroughputRule(Controller):
    """The largest share that fits the deadline at the predicted throughput: the forecast
    when one is given, else the harmonic mean of the last 5 measured throughputs."""

    name = "rule"

    def prediction(self, history: Sequence[Upload], forecast: float | None) -> float | None:
        return forecast if forecast is not None else harmonic_prediction(history)

    def _decide(
        self,
        history: Sequence[Upload],
        forecast_mbit_s: float | None,
        link_future: LinkFuture | None,
    ) -> Decision:
        predicted = self.prediction(history, forecast_mbit_s)
        if predicted is None:
            return self.decision(SHARES[0], None)
        rate = predicted
        share = self.largest_fitting(lambda n: n * 8 / 1e6 / rate if rate > 0 else float("inf"))
        return self.decision(share, predicted)


class RobustRule(ThroughputRule):
    """The throughput rule at the prediction ÷ (1 + the largest recent relative error)."""

    name = "robust-rule"

    def prediction(self, history: Sequence[Upload], forecast: float | None) -> float | None:
        predicted = super().prediction(history, forecast)
        if predicted is None:
            return None
        return predicted / (1 + largest_recent_error(history))


class Oracle(Controller):
    """The largest share whose true upload time (from `link_future`) fits the deadline."""

    name = "oracle"

    def _decide(
        self,
        history: Sequence[Upload],
        forecast_mbit_s: float | None,
        link_future: LinkFuture | None,
    ) -> Decision:
        if link_future is None:
            raise BandwidthError(
                "the oracle controller needs the link's future (emulated links and the "
                "simulation only); use rule, robust-rule or ddqn on a real link"
            )
        share = self.largest_fitting(link_future)
        decision = self.decision(share, None)
        seconds = link_future(decision.upload_bytes)
        rate = decision.upload_bytes * 8 / 1e6 / seconds if seconds > 0 else None
        return Decision(self.name, share, decision.codec, decision.upload_bytes, rate, seconds)


class Policy(Protocol):
    """What the DDQN controller needs of a trained agent."""

    with_forecast: bool

    def greedy_action(self, state: FloatArray) -> int: ...


class DDQNController(Controller):
    """The share the trained agent's online network values most in this state."""

    name = "ddqn"

    def __init__(
        self,
        model_bytes: int,
        deadline_s: float,
        agent: Policy,
        overhead: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(model_bytes, deadline_s, overhead)
        self.agent = agent

    def _decide(
        self,
        history: Sequence[Upload],
        forecast_mbit_s: float | None,
        link_future: LinkFuture | None,
    ) -> Decision:
        state = state_features(
            history, self.model_bytes, self.deadline_s, forecast_mbit_s, self.agent.with_forecast
        )
        share = SHARES[self.agent.greedy_action(state)]
        predicted = forecast_mbit_s if forecast_mbit_s is not None else harmonic_prediction(history)
        return self.decision(share, predicted)


class FixedCodec(Controller):
    """Always the same codec (the comparison's fixed_<codec> controllers)."""

    def __init__(self, model_bytes: int, deadline_s: float, label: str) -> None:
        super().__init__(model_bytes, deadline_s)
        self.codec = step_named(label)
        self.name = f"fixed_{label}"

    def _decide(
        self,
        history: Sequence[Upload],
        forecast_mbit_s: float | None,
        link_future: LinkFuture | None,
    ) -> Decision:
        n_bytes = self.size(self.codec)
        predicted = harmonic_prediction(history)
        seconds = n_bytes * 8 / 1e6 / predicted if predicted else None
        return Decision(self.name, self.codec.byte_ratio, self.codec, n_bytes, predicted, seconds)


class RandomShare(Controller):
    """A share drawn uniformly each round."""

    name = "random"

    def __init__(self, model_bytes: int, deadline_s: float, seed: int = 0) -> None:
        super().__init__(model_bytes, deadline_s)
        self.rng = np.random.default_rng(seed)

    def _decide(
        self,
        history: Sequence[Upload],
        forecast_mbit_s: float | None,
        link_future: LinkFuture | None,
    ) -> Decision:
        return self.decision(float(self.rng.choice(SHARES)), harmonic_prediction(history))


def make_controller(
    name: str,
    model_bytes: int,
    deadline_s: float,
    agent: Policy | None = None,
    overhead: Mapping[str, int] | None = None,
) -> Controller:
    """A controller by its configuration name: ddqn (needs `agent`), rule, robust-rule,
    oracle (its decide needs `link_future`)."""
    if name == "ddqn":
        if agent is None:
            raise BandwidthError("the ddqn controller needs a trained agent (fogfl agent train)")
        return DDQNController(model_bytes, deadline_s, agent, overhead)
    simple: dict[str, type[Controller]] = {
        "rule": ThroughputRule,
        "robust-rule": RobustRule,
        "oracle": Oracle,
    }
    if name not in simple:
        raise BandwidthError(f"unknown controller {name!r}; choose one of {', '.join(CONTROLLERS)}")
    return simple[name](model_bytes, deadline_s, overhead)
