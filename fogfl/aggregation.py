"""How a fog broker combines its region's updates: the rules, and the round that uses them.

`mean` (the default) folds each update into a running example-weighted mean as it arrives,
so memory is one model's worth of float64 sums however many clients a region has; averages
weighted by `num_examples` at the fog and again at the cloud give exactly flat FedAvg over
all clients. The robust rules (`median`, `trimmed_mean`, `clipped_mean`; one function each
below) need all of an edge round's updates at once: they keep one model per update, as it
arrived, and work in float64 one tensor at a time. docs/security.md says what each stops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fogfl.config import FogSettings
from fogfl.transfers import STATS_KEY, RegionTransfers
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
        return _as_schema(
            self.schema, {name: total / self.total_weight for name, total in self._sums.items()}
        )

    def aggregate(self, reference: Mapping[str, npt.NDArray[Any]] | None = None) -> Aggregate:
        """The weighted mean; `reference` is not needed."""
        return Aggregate(self.result(), {"rule": "mean"})


@dataclass
class Aggregate:
    """A region's combined model and what the rule did to get it (the partial's
    ``stats.aggregation``)."""

    tensors: Tensors
    stats: dict[str, Any]


class CollectedUpdates:
    """Every update of an edge round as it arrived, for the rules that need them all at
    once (`median`, `trimmed_mean`, `clipped_mean`): memory is one model per update."""

    def __init__(self, schema: ModelSchema, settings: FogSettings) -> None:
        if settings.aggregation == "mean":
            raise ValueError("the mean needs no collected updates: use WeightedModelMean")
        self.schema = schema
        self.settings = settings
        self.updates: list[Mapping[str, npt.NDArray[Any]]] = []
        self.weights: list[int] = []

    @property
    def total_weight(self) -> int:
        return sum(self.weights)

    def add(self, tensors: Mapping[str, npt.NDArray[Any]], weight: int) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight}")
        self.updates.append(tensors)
        self.weights.append(weight)

    def aggregate(self, reference: Mapping[str, npt.NDArray[Any]] | None = None) -> Aggregate:
        """The configured rule over the collected updates, cast to the schema's dtypes;
        `clipped_mean` clips against `reference`, the model the clients started from."""
        if not self.updates:
            raise ValueError("no model was added")
        rule = self.settings.aggregation
        weights = np.asarray(self.weights, dtype=np.int64)
        combined: dict[str, npt.NDArray[np.float64]] = {}
        stats: dict[str, Any] = {"rule": rule}
        if rule == "clipped_mean":
            if reference is None:
                raise ValueError("clipped_mean needs the model the clients started from")
            combined, clipped, bound = clipped_mean(
                self.updates, weights, reference, self.settings.clip_norm
            )
            stats |= {"clipped": clipped, "clip_norm": bound}
        elif rule == "median":
            for spec in self.schema.tensors:
                combined[spec.name] = weighted_median(self._stacked(spec.name), weights)
        else:
            cut = np.zeros(len(self.updates), dtype=np.int64)
            for spec in self.schema.tensors:
                combined[spec.name], cut_here = trimmed_mean(
                    self._stacked(spec.name), weights, self.settings.trim_fraction
                )
                cut += cut_here
            coordinates = self.schema.num_values
            stats |= {
                "trim_fraction": self.settings.trim_fraction,
                # Updates cut away at most coordinates: the ones that looked like outliers.
                "trimmed": int((2 * cut > coordinates).sum()),
            }
        shapes = {spec.name: tuple(spec.shape) for spec in self.schema.tensors}
        reshaped = {name: values.reshape(shapes[name]) for name, values in combined.items()}
        return Aggregate(_as_schema(self.schema, reshaped), stats)

    def _stacked(self, name: str) -> npt.NDArray[np.float64]:
        """One tensor of every update, flattened: a row per update, in float64."""
        return np.stack(
            [np.asarray(update[name], dtype=np.float64).reshape(-1) for update in self.updates]
        )


ModelAggregate = WeightedModelMean | CollectedUpdates


def model_aggregate(schema: ModelSchema, settings: FogSettings) -> ModelAggregate:
    """An empty aggregate for one edge round under `settings.aggregation`."""
    if settings.aggregation == "mean":
        return WeightedModelMean(schema)
    return CollectedUpdates(schema, settings)


def weighted_median(
    values: npt.NDArray[np.float64], weights: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Per column of `values` (a row per update), the weighted median: the value with at
    most half the total weight below it and at most half above. Where the two halves meet
    exactly between two values (an even count of equal weights), their midpoint."""
    order = np.argsort(values, axis=0, kind="stable")
    ordered = np.take_along_axis(values, order, axis=0)
    cumulative = np.cumsum(weights[order], axis=0)
    total = cumulative[-1:]
    # Integer weights, compared doubled: exact, no half-weights rounded either way.
    lower = np.argmax(2 * cumulative >= total, axis=0)
    upper = np.argmax(2 * cumulative > total, axis=0)
    columns = np.arange(values.shape[1])
    result: npt.NDArray[np.float64] = (ordered[lower, columns] + ordered[upper, columns]) / 2
    return result


def trimmed_mean(
    values: npt.NDArray[np.float64], weights: npt.NDArray[np.int64], fraction: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per column of `values` (a row per update), the weighted mean of what is left after
    cutting `fraction` of the total weight off each end; an update that straddles a cut
    counts with the part of its weight inside. With equal weights and a whole number of
    updates to cut, that is the ordinary trimmed mean. Also, per update, the number of
    columns it was cut from entirely."""
    if not 0 <= fraction < 0.5:
        raise ValueError(f"trim fraction must be in [0, 0.5), got {fraction}")
    order = np.argsort(values, axis=0, kind="stable")
    ordered = np.take_along_axis(values, order, axis=0)
    weight = weights[order].astype(np.float64)
    above = np.cumsum(weight, axis=0)
    below = above - weight
    total = float(weights.sum())
    low, high = fraction * total, (1 - fraction) * total
    kept = np.clip(np.minimum(above, high) - np.maximum(below, low), 0.0, None)
    means: npt.NDArray[np.float64] = (kept * ordered).sum(axis=0) / (high - low)
    cut = kept <= 1e-9 * weight
    cut_counts = np.bincount(order[cut], minlength=len(weights)).astype(np.int64)
    return means, cut_counts


def clipped_mean(
    updates: Sequence[Mapping[str, npt.NDArray[Any]]],
    weights: npt.NDArray[np.int64],
    reference: Mapping[str, npt.NDArray[Any]],
    clip_norm: float | None,
) -> tuple[dict[str, npt.NDArray[np.float64]], int, float]:
    """The weighted mean of the updates after shrinking each one's change from `reference`
    (over all its tensors) to an L2 norm of at most `clip_norm`, by default the median of
    the changes' norms (every update counted once, whatever its weight). Returns the
    flattened mean per tensor, how many updates were shrunk, and the bound used."""
    norms = np.array([_change_norm(update, reference) for update in updates])
    bound = float(np.median(norms)) if clip_norm is None else float(clip_norm)
    scales = np.ones(len(updates))
    over = norms > bound
    scales[over] = bound / norms[over]
    shares = weights.astype(np.float64) * scales / float(weights.sum())
    combined: dict[str, npt.NDArray[np.float64]] = {}
    for name, base in reference.items():
        start = np.asarray(base, dtype=np.float64).reshape(-1)
        change = np.zeros_like(start)
        for update, share in zip(updates, shares, strict=True):
            change += share * (np.asarray(update[name], dtype=np.float64).reshape(-1) - start)
        combined[name] = start + change
    return combined, int(over.sum()), bound


def _change_norm(
    update: Mapping[str, npt.NDArray[Any]], reference: Mapping[str, npt.NDArray[Any]]
) -> float:
    total = 0.0
    for name, base in reference.items():
        change = np.asarray(update[name], dtype=np.float64) - np.asarray(base, dtype=np.float64)
        total += float(np.square(change).sum())
    return math.sqrt(total)


def _as_schema(schema: ModelSchema, values: Mapping[str, npt.NDArray[np.float64]]) -> Tensors:
    """float64 results cast back to each tensor's dtype (ints are rounded)."""
    cast: Tensors = {}
    for spec in schema.tensors:
        tensor = values[spec.name]
        if np.dtype(spec.dtype).kind in "iub":
            tensor = np.rint(tensor)
        cast[spec.name] = tensor.astype(spec.dtype)
    return cast


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
    edge round but the last, it goes back down to the clients to train on again. `fog`
    says how (`fog.aggregation`) and caps what an update may claim; `reference` is the
    model the edge round's clients started from, which `clipped_mean` clips against.
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
    model: ModelAggregate | None
    fog: FogSettings = field(default_factory=FogSettings)
    reference: Tensors | None = None
    capped: int = 0
    edge_round: int = 1
    metrics: MetricsMean = field(default_factory=MetricsMean)
    contributors: list[str] = field(default_factory=list)
    num_examples: int = 0
    updates_bytes: int = 0
    region_bytes: int = 0
    deadline_logged: bool = False
    transfers: RegionTransfers = field(default_factory=RegionTransfers)

    @property
    def final(self) -> bool:
        return self.phase == "evaluate"

    @property
    def last_edge_round(self) -> bool:
        return self.edge_round >= self.edge_rounds

    @property
    def waiting_for_reference(self) -> bool:
        """Whether the rule cannot aggregate yet: `clipped_mean` without the start model."""
        return (
            self.model is not None
            and self.fog.aggregation == "clipped_mean"
            and self.reference is None
        )

    def weight(self, num_examples: int) -> int:
        return 1 if self.uniform else num_examples

    def add(self, update: Envelope) -> None:
        """Fold in a valid update (or evaluation) of this round; an update's num_examples
        counts at most `fog.max_examples_per_client`, for its weight and the region's sum."""
        num_examples = update.num_examples
        if self.model is not None:
            cap = self.fog.max_examples_per_client
            if cap is not None and num_examples > cap:
                num_examples = cap
                self.capped += 1
            self.model.add(update.tensors, self.weight(num_examples))
        self.metrics.add(update.metrics, num_examples)
        self.contributors.append(update.sender)
        self.num_examples += num_examples
        self.updates_bytes += update.payload_bytes

    def aggregate(self) -> Aggregate:
        """This edge round's updates combined by the rule, with what the rule did."""
        assert self.model is not None
        combined = self.model.aggregate(self.reference)
        combined.stats |= {"updates": len(self.contributors), "capped": self.capped}
        return combined

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
            tensors=self.aggregate().tensors,
            config=self.config,
        )

    def partial(self, region: str, rejected: Mapping[str, int]) -> Envelope:
        """The region's partial aggregate (or aggregated final evaluation) for the cloud.
        Its `weight` is what the cloud weighs it by: its examples, or its clients."""
        weight = self.model.total_weight if self.model is not None else self.num_examples
        combined = self.aggregate() if self.model is not None else None
        stats: dict[str, Any] = {
            "updates_bytes": self.updates_bytes,
            "region_bytes": self.region_bytes,
            "weight": weight,
            "expected": self.expected,
            "rejected": dict(rejected),
            STATS_KEY: self.transfers.as_stats(),
        }
        if combined is not None:
            stats["aggregation"] = combined.stats
        return Envelope(
            kind="partial",
            run_id=self.run_id,
            round=self.round,
            sender=f"fog-{region}",
            region=region,
            num_examples=self.num_examples,
            tensors=combined.tensors if combined is not None else {},
            metrics=self.metrics.result(),
            contributors=self.contributors,
            stats=stats,
            final=self.final,
        )

    def next_edge_round(self, deadline: float) -> None:
        self.edge_round += 1
        self.deadline = deadline
        self.model = model_aggregate(self.schema, self.fog)
        self.reference = None
        self.capped = 0
        self.contributors = []
        self.num_examples = 0
        self.deadline_logged = False
