"""`wire.update_codec: adaptive`: a client picks its update's codec every round.

The round's plan names the controller (`wire.controller`, announced by the server). Before
each upload the client asks it for a byte share of the float32 model, from the uploads it
has measured so far (bytes, seconds), the time left before its fog broker's deadline and,
with `wire.predictor`, the LSTM's forecast; the share becomes a codec of the ladder
(`fogfl.bandwidth.ladder`). After the upload the client records what it really took. The
runtime's client and `fogfl sim` both decide through `AdaptiveCodec`.

Time left: `upload_deadline_s` (default `fog.deadline_s`) counted from when the round
opened, minus what the client has already spent on it (download and training). `oracle`
needs the link's future (`LinkFuture`): an emulated link's model, or the simulation's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fogfl.bandwidth.controllers import (
    Controller,
    Decision,
    LinkFuture,
    Policy,
    Upload,
    make_controller,
)
from fogfl.config import RoundPlan, WireSettings
from fogfl.errors import BandwidthError
from fogfl.transfers import PREDICTED_METRIC, SHARE_METRIC

if TYPE_CHECKING:
    from fogfl.bandwidth.predictor import Predictor

ADAPTIVE = "adaptive"
# Enough for the rules' last 5, the robust rule's errors over them and the LSTM's 10 steps.
HISTORY = 32
# A budget already spent still asks the controller, which then sends its smallest share.
MIN_BUDGET_S = 1e-3
# The update metrics an adaptive choice adds (docs/protocol.md, "Update metrics").
BUDGET_METRIC = "upload_budget_s"
FALLBACK_CONTROLLER = "robust-rule"


@dataclass(frozen=True)
class Choice:
    """One round's pick: the controller's decision and the budget it was made for.

    `fresh_feedback`: the client leaves top-k for a dense codec, and starts its error
    feedback afresh. What top-k held back is most of several rounds' updates, each from an
    older model; added to one dense update all at once it is a jump the federation does
    not recover from within a run (measured in `configs/experiments/adaptive.yaml`,
    docs/bandwidth.md), where the dense codecs' own residuals are small. Not after a
    top-k chosen blind (no prediction: a rule's first round, which measures the link):
    its residual is one round's, and the next update sends it."""

    decision: Decision
    budget_s: float
    overhead_bytes: int = 0
    fresh_feedback: bool = False

    def plan(self, plan: RoundPlan) -> RoundPlan:
        """The round's plan with the chosen codec in place of `adaptive`."""
        step = self.decision.codec
        changes: dict[str, object] = {"update_codec": step.codec}
        if step.topk_fraction is not None:
            changes["topk_fraction"] = step.topk_fraction
        return plan.model_copy(update=changes)

    @property
    def metrics(self) -> dict[str, float]:
        metrics = {SHARE_METRIC: self.decision.share, BUDGET_METRIC: self.budget_s}
        if self.decision.predicted_upload_s is not None:
            metrics[PREDICTED_METRIC] = float(self.decision.predicted_upload_s)
        return metrics


class AdaptiveCodec:
    """One client's codec choices, round after round, and the uploads they led to.

    The agent and the predictor load from `wire.agent` / `wire.predictor` when first
    needed. A plan naming a controller this client cannot run (ddqn without an agent,
    oracle without a known link) falls back to the robust rule, with one warning."""

    def __init__(
        self,
        wire: WireSettings,
        model_bytes: int,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        link_future: Callable[[], LinkFuture] | None = None,
    ) -> None:
        if model_bytes < 1:
            raise BandwidthError("an adaptive codec needs a model of at least one byte")
        self.wire = wire
        self.model_bytes = model_bytes
        self.log = log if log is not None else logging.getLogger(__name__)
        self.link_future = link_future
        self.history: list[Upload] = []
        self._agent: Policy | None = None
        self._predictor: Predictor | None = None
        self._predictor_loaded = False
        self._warned: set[str] = set()
        # A message's bytes beyond its codec's (the envelope), by codec, from the last
        # update encoded in it: float32's and float16's name every tensor, the others few.
        self.overhead: dict[str, int] = {}
        self._last_codec: str | None = None
        self._last_was_probe = False

    def load_models(self) -> None:
        """Load the agent and the predictor the configuration names now, so a missing or
        damaged file stops a client as it starts (BandwidthError), not in a round."""
        self._load_agent()
        self._forecast()

    def choose(self, plan: RoundPlan, budget_s: float) -> Choice:
        """The codec for this round's upload, with `budget_s` seconds left for it."""
        budget = max(MIN_BUDGET_S, budget_s)
        controller = self._controller(plan.controller, budget)
        future = self.link_future() if controller.name == "oracle" and self.link_future else None
        decision = controller.decide(self.history, self._forecast(), future)
        codec = decision.codec.codec
        # Top-k held back most of its updates; a rule's first top-k only measured the link.
        fresh = self._last_codec == "topk" and codec != "topk" and not self._last_was_probe
        self._last_codec = codec
        self._last_was_probe = decision.predicted_upload_s is None
        return Choice(decision, budget, controller.overhead_of(decision.codec), fresh)

    def encoded(self, choice: Choice, n_bytes: int) -> None:
        """The update of `choice` came to `n_bytes`: what beyond its codec's bytes the next
        choices of that codec count on."""
        codec_bytes = choice.decision.upload_bytes - choice.overhead_bytes
        self.overhead[choice.decision.codec.codec] = max(0, n_bytes - codec_bytes)

    def measured(self, n_bytes: int, seconds: float) -> None:
        """Record an upload that took `seconds` for `n_bytes` (ignored when not a time)."""
        if n_bytes > 0 and 0 < seconds < float("inf"):
            self.history.append(Upload(n_bytes, seconds))
            del self.history[:-HISTORY]

    def _controller(self, name: str, budget_s: float) -> Controller:
        agent = None
        if name == "ddqn":
            agent = self._load_agent()
            if agent is None:
                return self._fallback(name, budget_s, "wire.agent is not set")
        if name == "oracle" and self.link_future is None:
            return self._fallback(name, budget_s, "this client's link is not emulated")
        return make_controller(name, self.model_bytes, budget_s, agent, self.overhead)

    def _fallback(self, name: str, budget_s: float, why: str) -> Controller:
        if name not in self._warned:
            self._warned.add(name)
            self.log.warning(
                "the round asks for the %s controller, but %s; using %s",
                name,
                why,
                FALLBACK_CONTROLLER,
            )
        return make_controller(
            FALLBACK_CONTROLLER, self.model_bytes, budget_s, overhead=self.overhead
        )

    def _load_agent(self) -> Policy | None:
        if self._agent is None and self.wire.agent is not None:
            from fogfl.bandwidth.agent import DDQNAgent

            self._agent, _ = DDQNAgent.load(Path(self.wire.agent))
        return self._agent

    def _forecast(self) -> float | None:
        """The predictor's forecast of the next upload's throughput (Mbit/s), if any."""
        if not self._predictor_loaded:
            self._predictor_loaded = True
            if self.wire.predictor is not None:
                from fogfl.bandwidth.predictor import Predictor

                self._predictor = Predictor.load(Path(self.wire.predictor))
        if self._predictor is None:
            return None
        return self._predictor.forecast_from_throughputs([u.mbit_s for u in self.history])


def upload_budget(plan: RoundPlan, fog_deadline_s: float, spent_s: float) -> float:
    """Seconds left for the upload: the plan's upload deadline (else the fog's) minus the
    seconds already spent since the round opened."""
    deadline = plan.upload_deadline_s if plan.upload_deadline_s is not None else fog_deadline_s
    return deadline - max(0.0, spent_s)
