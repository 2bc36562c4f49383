"""Example-weighted averaging of models and metrics, one update at a time.

A fog broker folds each update in as it arrives, so memory is one model's worth of float64
sums however many clients a region has. Averages weighted by `num_examples` at the fog and
again at the cloud give exactly flat FedAvg over all clients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fogfl.wire import MAX_METRIC, Envelope, ModelSchema, Tensors

EVAL_PREFIX = "eval_"
EVAL_COUNT = "eval_examples"


class WeightedModelMean:
    """Running Σ wᵢ·xᵢ / Σ wᵢ over models with the given schema."""

    def __init__(self, schema: ModelSchema) -> None:
        self.schema = schema
        self._sums = {s.name: np.zeros(s.shape, dtype=np.float64) for s in schema.tensors}
        self.total_weight = 0

    def add(self, tensors: Mapping[str, npt.NDArray[Any]], weight: int) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight}")
        for name, total in self._sums.items():
            total += np.multiply(tensors[name], weight, dtype=np.float64)
        self.total_weight += weight

    def result(self) -> Tensors:
        """The weighted mean, cast back to each tensor's dtype (ints are rounded)."""
        if self.total_weight == 0:
            raise ValueError("no model was added")
        mean: Tensors = {}
        for spec in self.schema.tensors:
            values = self._sums[spec.name] / self.total_weight
            if np.dtype(spec.dtype).kind in "iub":
                values = np.rint(values)
            mean[spec.name] = values.astype(spec.dtype)
        return mean


class MetricsMean:
    """Running example-weighted means of client metrics.

    Metrics named ``eval_*`` are weighted by the sender's ``eval_examples``, the others by its
    `num_examples`; counts (names ending in ``examples``) are summed, not averaged. Sums are
    exact fractions, so no product of a large value and a large weight can overflow to inf;
    results are floats within ±`MAX_METRIC`, the largest the wire carries.
    """

    def __init__(self) -> None:
        self._sums: dict[str, Fraction] = {}
        self._weights: dict[str, int | Fraction] = {}
        self._counts: dict[str, Fraction] = {}

    def add(self, metrics: Mapping[str, float], num_examples: int) -> None:
        """Fold in one sender's metrics; non-finite values are skipped."""
        finite = {name: float(v) for name, v in metrics.items() if math.isfinite(v)}
        eval_weight = Fraction(finite.get(EVAL_COUNT, 0.0))
        for name, value in finite.items():
            if name.endswith("examples"):
                self._counts[name] = self._counts.get(name, Fraction(0)) + Fraction(value)
                continue
            weight = eval_weight if name.startswith(EVAL_PREFIX) else Fraction(num_examples)
            if weight <= 0:
                continue
            self._sums[name] = self._sums.get(name, Fraction(0)) + weight * Fraction(value)
            self._weights[name] = self._weights.get(name, 0) + weight

    def result(self) -> dict[str, float]:
        means = {name: _bounded(self._sums[name] / self._weights[name]) for name in self._sums}
        return {**means, **{name: _bounded(count) for name, count in self._counts.items()}}


def _bounded(value: Fraction) -> float:
    """The nearest float, saturated at ±MAX_METRIC (a mean never exceeds its largest value;
    a sum of counts could, and a partial must stay readable by its own bridge)."""
    return float(max(-Fraction(MAX_METRIC), min(Fraction(MAX_METRIC), value)))


def mean_metrics(weighted: list[tuple[int, Mapping[str, Any]]]) -> dict[str, float]:
    """Example-weighted means of numeric metrics over (num_examples, metrics) pairs."""
    mean = MetricsMean()
    for num_examples, metrics in weighted:
        numeric = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and _finite_number(v)
        }
        mean.add(numeric, num_examples)
    return mean.result()


def _finite_number(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


Phase = Literal["fit", "evaluate"]


@dataclass
class RegionRound:
    """The updates of one round (or the final evaluation) collected so far.

    With κ edge rounds per cloud round, the region model is averaged κ times: after each
    edge round but the last, it goes back down to the clients to train on again.
    """

    run_id: str
    round: int
    phase: Phase
    schema: ModelSchema
    deadline: float
    expected: int
    participants: set[str] | None
    uniform: bool
    edge_rounds: int
    config: dict[str, Any]
    model: WeightedModelMean | None
    edge_round: int = 1
    metrics: MetricsMean = field(default_factory=MetricsMean)
    contributors: list[str] = field(default_factory=list)
    num_examples: int = 0
    updates_bytes: int = 0
    region_bytes: int = 0
    deadline_logged: bool = False

    @property
    def final(self) -> bool:
        return self.phase == "evaluate"

    @property
    def last_edge_round(self) -> bool:
        return self.edge_round >= self.edge_rounds

    def weight(self, num_examples: int) -> int:
        return 1 if self.uniform else num_examples

    def add(self, update: Envelope) -> None:
        """Fold in a valid update (or evaluation) of this round."""
        if self.model is not None:
            self.model.add(update.tensors, self.weight(update.num_examples))
        self.metrics.add(update.metrics, update.num_examples)
        self.contributors.append(update.sender)
        self.num_examples += update.num_examples
        self.updates_bytes += update.payload_bytes

    def region_model(self, region: str) -> Envelope:
        """The region's mean after this edge round, sent back down to train on again."""
        assert self.model is not None
        return Envelope(
            kind="region",
            run_id=self.run_id,
            round=self.round,
            edge_round=self.edge_round + 1,
            sender=f"fog-{region}",
            region=region,
            num_examples=self.num_examples,
            tensors=self.model.result(),
            config=self.config,
        )

    def partial(self, region: str, rejected: Mapping[str, int]) -> Envelope:
        """The region's partial aggregate (or aggregated final evaluation) for the cloud.
        Its `weight` is what the cloud weighs it by: its examples, or its clients."""
        weight = self.model.total_weight if self.model is not None else self.num_examples
        return Envelope(
            kind="partial",
            run_id=self.run_id,
            round=self.round,
            sender=f"fog-{region}",
            region=region,
            num_examples=self.num_examples,
            tensors=self.model.result() if self.model is not None else {},
            metrics=self.metrics.result(),
            contributors=self.contributors,
            stats={
                "updates_bytes": self.updates_bytes,
                "region_bytes": self.region_bytes,
                "weight": weight,
                "expected": self.expected,
                "rejected": dict(rejected),
            },
            final=self.final,
        )

    def next_edge_round(self, deadline: float) -> None:
        self.edge_round += 1
        self.deadline = deadline
        self.model = WeightedModelMean(self.schema)
        self.contributors = []
        self.num_examples = 0
        self.deadline_logged = False
