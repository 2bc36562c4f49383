"""Link time series: the seed's synthetic datacenter and internet links, the QoE task's
home/rural/vehicular scenarios, and throughput trace files users bring.

Every series has the four features of the seed, one row per sample:
latency (ms), bandwidth (Mbit/s), packet loss (ratio) and reliability (ratio). A two-column
trace (`time_s  throughput_mbit_s`) carries throughput only; its latency, packet loss and
reliability are constants (0 ms, 0, 1), so a predictor sees its bandwidth alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fogfl.errors import BandwidthError
from fogfl.tasks.qoe import BASE_SCENARIOS, client_scenario, simulate_trace

FloatArray = npt.NDArray[np.float64]

FEATURES = ("latency_ms", "bandwidth_mbit_s", "packet_loss", "reliability")
BANDWIDTH = FEATURES.index("bandwidth_mbit_s")
# What a two-column trace's missing features are set to.
TRACE_CONSTANTS = {"latency_ms": 0.0, "packet_loss": 0.0, "reliability": 1.0}
COLUMNS = ("time_s", *FEATURES)


@dataclass(frozen=True)
class LinkSeries:
    """One link's samples: `time_s` (n,) rising, `features` (n, 4) in FEATURES order;
    `constant` names the features the source did not measure."""

    name: str
    time_s: FloatArray
    features: FloatArray
    constant: tuple[str, ...] = ()

    @property
    def bandwidth(self) -> FloatArray:
        return self.features[:, BANDWIDTH]

    def __len__(self) -> int:
        return len(self.time_s)


@dataclass(frozen=True)
class LinkProfile:
    """The seed's synthetic link kinds: the range of each feature, and how bandwidth moves.

    Bandwidth is `base` plus a slow cycle of `swing` × (high − base) over `period_s`, plus
    AR(1) noise (correlation 0.95, standard deviation `noise` × base), clipped to the range.
    Congestion u = (high − bandwidth) / (high − low) ∈ [0, 1] drives the other features:
    latency and loss rise with it, reliability falls (each with a little noise).
    """

    name: str
    bandwidth_mbit_s: tuple[float, float, float]  # low, base, high
    latency_ms: tuple[float, float]
    packet_loss: tuple[float, float]
    reliability: tuple[float, float]
    period_s: float
    swing: float
    noise: float


DATACENTER = LinkProfile(
    "datacenter", (8000.0, 10000.0, 12000.0), (0.1, 2.0), (0.0, 0.01), (0.99, 1.0),
    period_s=600.0, swing=0.8, noise=0.004,
)  # fmt: skip
INTERNET = LinkProfile(
    "internet", (80.0, 100.0, 120.0), (10.0, 200.0), (0.0, 0.05), (0.90, 0.99),
    period_s=300.0, swing=0.6, noise=0.03,
)  # fmt: skip
PROFILES = {p.name: p for p in (DATACENTER, INTERNET)}
SCENARIOS = {s.name: s for s in BASE_SCENARIOS}
SYNTHETIC_KINDS = (*PROFILES, *SCENARIOS)


AR_CORRELATION = 0.95


def _cycle_and_noise(
    profile: LinkProfile, samples: int, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """A profile's slow cycle and its AR(1) noise, in Mbit/s, before clipping."""
    _, base, high = profile.bandwidth_mbit_s
    t = np.arange(samples, dtype=np.float64)
    phase = rng.uniform(0, 2 * math.pi)
    cycle = profile.swing * (high - base) * np.sin(2 * math.pi * t / profile.period_s + phase)
    rho = AR_CORRELATION
    shocks = rng.normal(0.0, profile.noise * base * math.sqrt(1 - rho**2), samples)
    noise = np.empty(samples)
    level = rng.normal(0.0, profile.noise * base)
    for i in range(samples):  # AR(1): each step keeps most of the last step's deviation
        level = rho * level + shocks[i]
        noise[i] = level
    return cycle, noise


def synthetic_profile_series(
    profile: LinkProfile, samples: int, seed: int, name: str | None = None
) -> LinkSeries:
    """`samples` one-second samples of a seed link kind (datacenter or internet)."""
    rng = np.random.default_rng(seed)
    low, base, high = profile.bandwidth_mbit_s
    t = np.arange(samples, dtype=np.float64)
    cycle, noise = _cycle_and_noise(profile, samples, rng)
    bandwidth = np.clip(base + cycle + noise, low, high)
    congestion = (high - bandwidth) / (high - low)

    def rising(bounds: tuple[float, float], shape: FloatArray) -> FloatArray:
        jittered = np.clip(shape + rng.normal(0.0, 0.05, samples), 0.0, 1.0)
        return bounds[0] + (bounds[1] - bounds[0]) * jittered

    latency = rising(profile.latency_ms, congestion)
    loss = rising(profile.packet_loss, congestion**2)
    reliability = profile.reliability[1] - (
        rising(profile.reliability, congestion) - profile.reliability[0]
    )
    features = np.stack([latency, bandwidth, loss, reliability], axis=1)
    return LinkSeries(name or profile.name, t, features)


def scenario_series(kind: str, samples: int, seed: int, variant: int = 1) -> LinkSeries:
    """One-second samples of a QoE task scenario (fogfl.tasks.qoe), varied like its client
    number `variant`: throughput, latency and loss as the task simulates them; reliability
    is 1 − the task's rebuffering indicator (the link kept the video playing)."""
    rng = _scenario_rng(seed, variant)
    scenario = client_scenario(variant, rng, BASE_SCENARIOS, kind)
    trace = simulate_trace(scenario, samples, rng)
    features = np.stack(
        [
            trace["latency_ms"],
            trace["throughput_kbps"] / 1000.0,
            trace["loss_rate"],
            1.0 - trace["rebuffer_event"],
        ],
        axis=1,
    )
    return LinkSeries(scenario.name, np.arange(samples, dtype=np.float64), features)


def _scenario_rng(seed: int, variant: int) -> np.random.Generator:
    return np.random.default_rng([seed, variant])


def _profile_seed(seed: int, variant: int) -> int:
    return seed * 1000 + variant


def synthetic_series(kind: str, samples: int, seed: int, variant: int = 1) -> LinkSeries:
    """A series of any synthetic kind (SYNTHETIC_KINDS); variants differ in their draws."""
    if samples < 1:
        raise BandwidthError(f"--samples {samples}: a series needs at least one sample")
    if kind in PROFILES:
        name = kind if variant == 1 else f"{kind}_v{variant}"
        return synthetic_profile_series(PROFILES[kind], samples, _profile_seed(seed, variant), name)
    if kind in SCENARIOS:
        return scenario_series(kind, samples, seed, variant)
    raise BandwidthError(
        f"unknown synthetic link kind {kind!r}; choose one of {', '.join(SYNTHETIC_KINDS)}"
    )


def generator_forecast(kind: str, samples: int, seed: int, variant: int = 1) -> FloatArray:
    """What a forecaster that knew the generator would predict for each sample of the series
    `synthetic_series(kind, samples, seed, variant)` from the samples before it. Datacenter
    and internet: base + cycle(t) + ρ·noise(t − 1), clipped to the range (sample 0: base +
    cycle(0)). A QoE scenario draws every sample independently around its variant's mean
    throughput, so that mean is the forecast. Its error is the series' own unpredictable
    part, a floor for every forecaster's."""
    if kind in SCENARIOS:
        scenario = client_scenario(variant, _scenario_rng(seed, variant), BASE_SCENARIOS, kind)
        return np.full(samples, scenario.throughput_kbps / 1000.0)
    if kind not in PROFILES:
        raise BandwidthError(
            f"{kind!r} has no generator forecast; choose one of {', '.join(SYNTHETIC_KINDS)}"
        )
    profile = PROFILES[kind]
    low, base, high = profile.bandwidth_mbit_s
    cycle, noise = _cycle_and_noise(
        profile, samples, np.random.default_rng(_profile_seed(seed, variant))
    )
    carried = AR_CORRELATION * np.concatenate([[0.0], noise[:-1]])
    return np.clip(base + cycle + carried, low, high)


def read_trace(path: Path) -> LinkSeries:
    """A trace file: whitespace-separated columns, `#` comments. Two columns are
    `time_s throughput_mbit_s` (other features constant, TRACE_CONSTANTS); five are
    `time_s latency_ms bandwidth_mbit_s packet_loss reliability` (what `generate` writes)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise BandwidthError(f"cannot read trace {path}: {error}") from None
    rows: list[list[float]] = []
    width = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"trace {path}, line {number}"
        if len(fields) not in (2, 5):
            raise BandwidthError(
                f"{where} has {len(fields)} columns; a trace has 2 (time_s throughput_mbit_s) "
                f"or 5 ({' '.join(COLUMNS)})"
            )
        if width and len(fields) != width:
            raise BandwidthError(f"{where} has {len(fields)} columns, earlier lines {width}")
        width = len(fields)
        try:
            values = [float(field) for field in fields]
        except ValueError:
            raise BandwidthError(f"{where}: {line.strip()!r} is not numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise BandwidthError(f"{where}: {line.strip()!r} holds a non-finite number")
        rows.append(values)
    if len(rows) < 2:
        raise BandwidthError(f"trace {path} has {len(rows)} samples; it needs at least 2")
    table = np.array(rows, dtype=np.float64)
    time_s = table[:, 0]
    if np.any(np.diff(time_s) <= 0):
        sample = int(np.argmax(np.diff(time_s) <= 0)) + 2
        raise BandwidthError(f"trace {path}: time_s does not rise at sample {sample}")
    if width == 2:
        features = np.empty((len(rows), len(FEATURES)))
        for index, feature in enumerate(FEATURES):
            features[:, index] = TRACE_CONSTANTS.get(feature, 0.0)
        features[:, BANDWIDTH] = table[:, 1]
        constant = tuple(TRACE_CONSTANTS)
    else:
        features, constant = table[:, 1:], ()
    if np.any(features[:, BANDWIDTH] < 0):
        raise BandwidthError(f"trace {path}: negative throughput")
    return LinkSeries(path.stem, time_s - time_s[0], features, constant)


def trace_files(path: Path) -> list[Path]:
    """The trace files at `path`: the file itself, or every file under the folder (sorted;
    README*, LICENSE* and hidden files skipped)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise BandwidthError(f"--traces {path}: no such file or folder")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not p.name.startswith((".", "README", "LICENSE"))
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise BandwidthError(f"--traces {path}: the folder holds no trace files")
    return files


def read_traces(path: Path) -> list[LinkSeries]:
    """Every trace at `path` (a file or a folder), named by their path below it."""
    files = trace_files(path)
    series = [read_trace(f) for f in files]
    if path.is_dir():
        series = [
            LinkSeries(str(f.relative_to(path).with_suffix("")), s.time_s, s.features, s.constant)
            for f, s in zip(files, series, strict=True)
        ]
    return series


def write_series(path: Path, series: LinkSeries) -> None:
    """The series as a five-column trace file that `read_trace` reads back."""
    table = np.column_stack([series.time_s, series.features])
    header = " ".join(COLUMNS)
    np.savetxt(path, table, fmt="%.10g", header=header, comments="# ")


def load_sources(
    traces: Path | None, synthetic: Sequence[str], samples: int, seed: int, variants: int = 1
) -> list[LinkSeries]:
    """The series of the command line's data sources: trace files, synthetic kinds, or both."""
    series = read_traces(traces) if traces is not None else []
    for kind in synthetic:
        series += [synthetic_series(kind, samples, seed, v) for v in range(1, variants + 1)]
    if not series:
        raise BandwidthError("no data: give --traces PATH or --synthetic KIND")
    return series
