"""Forecasting windows: 10 samples of the four features in, the next sample's bandwidth out;
the chronological 70/15/15 split; min-max normalisation from the training split only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fogfl.bandwidth.series import BANDWIDTH, FEATURES, LinkSeries
from fogfl.errors import BandwidthError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SEQUENCE_LENGTH = 10
SPLIT = (0.70, 0.15, 0.15)
SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class Normalisation:
    """Per-feature min-max scaling to [0, 1] with the training split's extremes (a feature
    that never changes there is only shifted)."""

    low: FloatArray
    high: FloatArray

    @property
    def scale(self) -> FloatArray:
        span = self.high - self.low
        return np.where(span > 0, span, 1.0)

    def features(self, raw: FloatArray) -> FloatArray:
        return (raw - self.low) / self.scale

    def bandwidth(self, raw: FloatArray) -> FloatArray:
        return (raw - self.low[BANDWIDTH]) / self.scale[BANDWIDTH]

    def bandwidth_mbit_s(self, scaled: FloatArray) -> FloatArray:
        return scaled * self.scale[BANDWIDTH] + self.low[BANDWIDTH]

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "min-max of the training split",
            "features": list(FEATURES),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
        }

    @classmethod
    def from_json(cls, document: Any, where: str) -> Normalisation:
        try:
            low = np.array(document["low"], dtype=np.float64)
            high = np.array(document["high"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise BandwidthError(
                f"{where}: the normalisation needs 'low' and 'high' lists"
            ) from None
        shape = (len(FEATURES),)
        if low.shape != shape or high.shape != shape or not np.all(np.isfinite([low, high])):
            raise BandwidthError(
                f"{where}: the normalisation needs {len(FEATURES)} finite lows and highs"
            )
        return cls(low, high)


@dataclass(frozen=True)
class Windows:
    """Raw windows: `inputs` (n, 10, 4), `targets` (n,) in Mbit/s; where each came from
    (`series` index, `position` of its target sample)."""

    inputs: FloatArray
    targets: FloatArray
    series: IntArray
    position: IntArray

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def history(self) -> FloatArray:
        """The windows' bandwidth columns, (n, 10) in Mbit/s."""
        return self.inputs[:, :, BANDWIDTH]


@dataclass(frozen=True)
class WindowedData:
    train: Windows
    validation: Windows
    test: Windows
    normalisation: Normalisation
    names: tuple[str, ...]

    def split(self, name: str) -> Windows:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def split_bounds(samples: int) -> tuple[int, int]:
    """The first sample of the validation and of the test part of a series."""
    return int(samples * SPLIT[0]), int(samples * (SPLIT[0] + SPLIT[1]))


def windowed(series: Sequence[LinkSeries], length: int = SEQUENCE_LENGTH) -> WindowedData:
    """Each series cut into windows and split by time: a window belongs to the part its
    target sample lies in (inputs may reach back into the part before, as a forecaster's
    history does); each part of every series is used, so tests cover every trace."""
    minimum = 2 * length
    for s in series:
        if len(s) < minimum:
            raise BandwidthError(
                f"trace {s.name} has {len(s)} samples; the predictor needs at least {minimum} "
                f"({length}-sample windows, split {'/'.join(str(round(f * 100)) for f in SPLIT)})"
            )
    train_rows = np.concatenate([s.features[: split_bounds(len(s))[0]] for s in series])
    normalisation = Normalisation(train_rows.min(axis=0), train_rows.max(axis=0))
    parts: dict[str, list[tuple[FloatArray, FloatArray, IntArray, IntArray]]] = {
        name: [] for name in SPLIT_NAMES
    }
    for index, s in enumerate(series):
        positions = np.arange(length, len(s))
        inputs = np.lib.stride_tricks.sliding_window_view(s.features, (length, len(FEATURES)))
        inputs = inputs[: len(positions), 0]
        first_validation, first_test = split_bounds(len(s))
        labels = np.digitize(positions, [first_validation, first_test])
        for code, name in enumerate(SPLIT_NAMES):
            chosen = labels == code
            parts[name].append(
                (
                    inputs[chosen],
                    s.bandwidth[positions[chosen]],
                    np.full(int(chosen.sum()), index),
                    positions[chosen],
                )
            )
    built = {
        name: Windows(
            np.concatenate([p[0] for p in pieces]).astype(np.float64),
            np.concatenate([p[1] for p in pieces]),
            np.concatenate([p[2] for p in pieces]).astype(np.int64),
            np.concatenate([p[3] for p in pieces]).astype(np.int64),
        )
        for name, pieces in parts.items()
    }
    return WindowedData(
        built["train"],
        built["validation"],
        built["test"],
        normalisation,
        tuple(s.name for s in series),
    )
