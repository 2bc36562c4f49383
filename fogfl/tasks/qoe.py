"""QoE under simulated network conditions: each client streams video over its own simulated
link (home, rural or vehicular, varied per client) and learns to predict the QoE score from
throughput, buffer, latency, loss, quality ratio and rebuffering."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field, model_validator
from torch import nn

from fogfl.links.scenarios import (  # noqa: F401  (re-exported: the QoE task's scenarios)
    BASE_SCENARIOS,
    SCENARIO_NAMES,
    NetworkScenario,
    client_scenario,
)
from fogfl.tasks.base import (
    Partition,
    SupervisedTask,
    TaskOptions,
    client_ordinal,
    client_seed,
    parse_options,
)

FloatArray = npt.NDArray[np.float64]


FEATURES = (
    "throughput_kbps",
    "buffer_level_s",
    "latency_ms",
    "loss_rate",
    "quality_ratio",
    "rebuffer_event",
)
# Fixed scales put every feature near unit range without sharing statistics between clients.
FEATURE_SCALE = np.array([1 / 1000.0, 1 / 10.0, 1 / 100.0, 10.0, 1.0, 1.0], dtype=np.float64)


class ScenarioOptions(TaskOptions):
    """A network scenario in config: a link's statistics and the video's bitrate."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    throughput_kbps: float = Field(gt=0)
    throughput_std: float = Field(ge=0)
    bitrate_kbps: float = Field(gt=0)
    latency_ms: float = Field(gt=0)
    latency_std: float = Field(ge=0)
    loss_rate: float = Field(ge=0, le=1)
    loss_std: float = Field(ge=0, le=1)
    initial_buffer_s: float = Field(gt=0)
    rebuffer_threshold_s: float = Field(0.5, ge=0)


class QoEOptions(TaskOptions):
    duration_s: int = Field(600, ge=10, le=1_000_000, description="seconds of trace per client")
    replays: int = Field(2, ge=0, le=100, description="noisy replays added to each trace")
    replay_noise: float = Field(0.07, ge=0, le=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    scenarios: list[ScenarioOptions] = Field(
        default_factory=lambda: [ScenarioOptions(**vars(s)) for s in BASE_SCENARIOS],
        min_length=1,
        description="the base scenarios clients cycle through by client number",
    )
    scenario: str | None = Field(
        None, description="pin every client to the base scenario of this name"
    )
    variation: float = Field(
        1.0, ge=0, le=10, description="scale of each client's random variation of its scenario"
    )

    @model_validator(mode="after")
    def _pinned_scenario_exists(self) -> QoEOptions:
        names = [s.name for s in self.scenarios]
        if self.scenario is not None and self.scenario not in names:
            raise ValueError(f"scenario {self.scenario!r} is not one of {names}")
        return self

    def base_scenarios(self) -> list[NetworkScenario]:
        return [NetworkScenario(**s.model_dump()) for s in self.scenarios]


def simulate_trace(
    scenario: NetworkScenario, duration_s: int, rng: np.random.Generator
) -> dict[str, FloatArray]:
    """One second per sample of link state, player buffer and the resulting QoE score."""
    throughput = np.clip(
        rng.normal(scenario.throughput_kbps, scenario.throughput_std, duration_s), 200.0, None
    )
    latency = np.clip(rng.normal(scenario.latency_ms, scenario.latency_std, duration_s), 5.0, None)
    loss = np.clip(rng.normal(scenario.loss_rate, scenario.loss_std, duration_s), 0.0, 1.0)
    buffer_delta = 1.0 - scenario.bitrate_kbps / np.maximum(throughput, 1.0)
    buffer_level = np.empty(duration_s)
    rebuffer = np.zeros(duration_s)
    level = scenario.initial_buffer_s
    for t in range(duration_s):  # the buffer is a running state; a stall refills it
        level = max(level + buffer_delta[t], 0.0)
        if level <= scenario.rebuffer_threshold_s:
            rebuffer[t] = 1.0
            level = scenario.initial_buffer_s * 0.6
        buffer_level[t] = level
    return _samples(scenario, throughput, buffer_level, latency, loss, rebuffer)


def _samples(
    scenario: NetworkScenario,
    throughput: FloatArray,
    buffer_level: FloatArray,
    latency: FloatArray,
    loss: FloatArray,
    rebuffer: FloatArray,
) -> dict[str, FloatArray]:
    """The features of a stretch of playback, with its quality ratio and QoE score."""
    return {
        "throughput_kbps": throughput,
        "buffer_level_s": buffer_level,
        "latency_ms": latency,
        "loss_rate": loss,
        "quality_ratio": np.clip(throughput / scenario.bitrate_kbps, 0.1, 3.0),
        "rebuffer_event": rebuffer,
        "qoe_score": qoe_score(scenario.bitrate_kbps, throughput, latency, loss, rebuffer),
    }


def qoe_score(
    bitrate_kbps: float,
    throughput_kbps: FloatArray,
    latency_ms: FloatArray,
    loss_rate: FloatArray,
    rebuffer: FloatArray,
) -> FloatArray:
    """QoE in [0, 1]: one minus penalties for under-delivered bitrate, latency, loss, stalls."""
    penalty = (
        0.5 * (bitrate_kbps / np.maximum(throughput_kbps, bitrate_kbps))
        + 0.3 * (latency_ms / (latency_ms + 40.0))
        + 0.2 * loss_rate
        + 0.35 * rebuffer
    )
    return np.clip(1.0 - penalty, 0.0, 1.0)


def with_replays(
    trace: dict[str, FloatArray],
    scenario: NetworkScenario,
    replays: int,
    noise: float,
    rng: np.random.Generator,
) -> dict[str, FloatArray]:
    """The trace plus `replays` noisy re-plays of it (the same viewer, a slightly other day)."""
    copies = [trace]
    n = len(trace["qoe_score"])
    for _ in range(replays):
        throughput = np.clip(trace["throughput_kbps"] * (1 + rng.normal(0, noise, n)), 200.0, None)
        latency = np.clip(trace["latency_ms"] * (1 + rng.normal(0, noise / 2, n)), 5.0, None)
        loss = np.clip(trace["loss_rate"] * (1 + rng.normal(0, noise, n)), 0.0, 1.0)
        buffer_level = np.clip(
            trace["buffer_level_s"] * (1 + rng.normal(0, noise / 2, n)), 0.0, None
        )
        rebuffer = (buffer_level <= scenario.rebuffer_threshold_s).astype(np.float64)
        copies.append(_samples(scenario, throughput, buffer_level, latency, loss, rebuffer))
    return {key: np.concatenate([c[key] for c in copies]) for key in trace}


class QoEModel(nn.Module):
    """MLP 64-32-1 regressing the QoE score."""

    def __init__(self, inputs: int = len(FEATURES)) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class QoETask(SupervisedTask):
    name: ClassVar[str] = "qoe"
    problem: ClassVar[Literal["regression", "classification"]] = "regression"

    def __init__(self, options: dict[str, object]) -> None:
        self.options = parse_options(QoEOptions, options, self.name)

    def build_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return QoEModel()

    def load_partition(self, client_id: str, seed: int) -> Partition:
        # The base scenario cycles with the client's number, so each region gets a mix; its
        # variation and trace follow from the whole id, so north-01 and south-01 differ.
        ordinal = client_ordinal(client_id)
        rng = np.random.default_rng([seed, client_seed(client_id)])
        scenario = client_scenario(
            ordinal,
            rng,
            self.options.base_scenarios(),
            self.options.scenario,
            self.options.variation,
        )
        trace = simulate_trace(scenario, self.options.duration_s, rng)
        trace = with_replays(trace, scenario, self.options.replays, self.options.replay_noise, rng)
        features = (np.stack([trace[f] for f in FEATURES], axis=1) * FEATURE_SCALE).astype(
            np.float32
        )
        target = trace["qoe_score"].astype(np.float32)
        order = rng.permutation(len(target))
        n_test = max(1, round(len(target) * self.options.test_fraction))
        test, train = order[:n_test], order[n_test:]
        return Partition(
            features[train], target[train], features[test], target[test], scenario.name
        )
