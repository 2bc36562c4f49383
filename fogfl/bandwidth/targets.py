"""What the LSTM is trained to output, and how its output becomes a forecast in Mbit/s.

- `level` (the seed's): the next bandwidth, min-max normalised with the training split's
  range; inputs are the normalised features.
- `residual`: the next bandwidth minus the window's last one, in the same normalised units;
  the forecast is the last value plus the output, so an output of 0 is the last-value
  baseline. Inputs as for `level`.
- `window`: the same change divided by the window's own scale (the mean of its bandwidth,
  at least 1 % of the training range, so that a window of zeros stays finite); the
  bandwidth input is (bᵢ − b_last) / that scale too, so a link at 1 Mbit/s and one at
  100 Mbit/s that move alike look alike. The other three features stay min-max normalised.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fogfl.bandwidth.series import BANDWIDTH
from fogfl.bandwidth.windows import Normalisation
from fogfl.errors import BandwidthError

FloatArray = npt.NDArray[np.float64]

TARGETS = ("level", "residual", "window")
SEED_TARGET = "level"
# With the same layers the residual is far better than the level on the seed's smooth
# links and better on real throughput traces; only on the QoE scenarios, independent draws
# around a mean, is it a little worse (docs/bandwidth.md).
DEFAULT_TARGET = "residual"
# The window scale's floor, as a share of the training split's bandwidth range.
WINDOW_SCALE_FLOOR = 0.01


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise BandwidthError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return target


def window_scale(windows: FloatArray, normalisation: Normalisation) -> FloatArray:
    """Each window's own bandwidth scale in Mbit/s (n,): its mean, floored."""
    floor = WINDOW_SCALE_FLOOR * float(normalisation.scale[BANDWIDTH])
    return np.maximum(windows[:, :, BANDWIDTH].mean(axis=1), floor)


def network_inputs(target: str, windows: FloatArray, normalisation: Normalisation) -> FloatArray:
    """Raw windows (n, steps, 4) → what the network reads."""
    scaled = normalisation.features(windows)
    if check_target(target) == "window":
        bandwidth = windows[:, :, BANDWIDTH]
        scale = window_scale(windows, normalisation)[:, None]
        scaled[:, :, BANDWIDTH] = (bandwidth - bandwidth[:, -1:]) / scale
    return scaled


def network_targets(
    target: str, windows: FloatArray, next_mbit_s: FloatArray, normalisation: Normalisation
) -> FloatArray:
    """The value the network learns to output for each window (n,)."""
    check_target(target)
    if target == "level":
        return normalisation.bandwidth(next_mbit_s)
    change = next_mbit_s - windows[:, -1, BANDWIDTH]
    if target == "residual":
        return change / float(normalisation.scale[BANDWIDTH])
    return change / window_scale(windows, normalisation)


def forecasts(
    target: str, windows: FloatArray, outputs: FloatArray, normalisation: Normalisation
) -> FloatArray:
    """The network's outputs for these raw windows → next bandwidth in Mbit/s (n,)."""
    check_target(target)
    if target == "level":
        return normalisation.bandwidth_mbit_s(outputs)
    last = windows[:, -1, BANDWIDTH]
    if target == "residual":
        return last + outputs * float(normalisation.scale[BANDWIDTH])
    return last + outputs * window_scale(windows, normalisation)
