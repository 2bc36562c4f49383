"""Speed of the bandwidth predictor and the codec controllers on this machine: training time
per LSTM epoch and per DDQN episode at the seed's sizes, and the time of one decision.

    python benchmarks/bandwidth.py [--epochs 2] [--episodes 20]
    python benchmarks/bandwidth.py --ceiling

Prints a table; the full trainings themselves are `fogfl bandwidth train` and `fogfl agent
train` (docs/bandwidth.md). `--ceiling` instead scores, on exactly the test windows of
`fogfl bandwidth train --synthetic KIND` (default samples and seed) for every synthetic
kind, the forecast of someone who knows the generator (`series.generator_forecast`)
beside the last value: how much better than the last value any predictor can be there.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fogfl.bandwidth.agent import DDQNSettings, train_agent
from fogfl.bandwidth.controllers import DDQNController, RobustRule, ThroughputRule, Upload
from fogfl.bandwidth.environment import EnvironmentSettings, LinkTrace
from fogfl.bandwidth.metrics import forecast_metrics
from fogfl.bandwidth.predictor import TrainSettings, train_predictor
from fogfl.bandwidth.series import (
    BANDWIDTH,
    SYNTHETIC_KINDS,
    generator_forecast,
    synthetic_series,
)
from fogfl.bandwidth.windows import windowed


def per_call(function: object, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        function()  # type: ignore[operator]
    return (time.perf_counter() - started) / repeats


def ceiling(samples: int = 10_000, seed: int = 0) -> None:
    """The generator's own forecast and the last value on the same test windows."""
    print(f"{'data':<18} {'forecaster':<20} {'mse':>10} {'mae':>8} {'within 2%':>10}")
    for kind in SYNTHETIC_KINDS:
        data = windowed([synthetic_series(kind, samples, seed)])
        test = data.test
        scale = float(data.normalisation.scale[BANDWIDTH])
        known = generator_forecast(kind, samples, seed)[test.position]
        for name, forecast in (("generator (ceiling)", known), ("last value", test.history[:, -1])):
            m = forecast_metrics(forecast, test.targets, scale)
            print(f"{kind:<18} {name:<20} {m['mse']:10.4g} {m['mae']:8.4g} {m['accuracy']:10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--ceiling", action="store_true", help="only the forecast ceiling")
    options = parser.parse_args()
    if options.ceiling:
        ceiling()
        return
    torch.set_num_threads(1)
    data = windowed([synthetic_series("internet", 10_000, 0)])
    predictor, report = train_predictor(
        data, TrainSettings(epochs=options.epochs, patience=options.epochs)
    )
    epoch_s = report.seconds / report.epochs_run
    traces = [LinkTrace.of(synthetic_series("vehicular_variable", 900, 0, v)) for v in (1, 2)]
    environment = EnvironmentSettings()
    agent, agent_report = train_agent(traces, environment, DDQNSettings(episodes=options.episodes))
    episode_s = agent_report.seconds / options.episodes
    rng = np.random.default_rng(0)
    size, deadline = environment.model_bytes, environment.deadline_s
    history = [Upload(size, float(s)) for s in rng.uniform(2, 12, 20)]
    window = data.test.inputs[:1]
    rule = ThroughputRule(size, deadline)
    robust = RobustRule(size, deadline)
    ddqn = DDQNController(size, deadline, agent)
    rows = [
        ("LSTM epoch, 6,990 windows, batch 32", epoch_s, "s"),
        ("LSTM, 100 epochs (upper bound)", 100 * epoch_s / 60, "min"),
        (f"DDQN episode, {environment.rounds} rounds", episode_s, "s"),
        ("DDQN, 2,000 episodes", 2000 * episode_s / 60, "min"),
        ("LSTM forecast, one window", 1e3 * per_call(lambda: predictor.predict(window), 200), "ms"),
        ("rule decision", 1e3 * per_call(lambda: rule.decide(history), 2000), "ms"),
        ("robust-rule decision", 1e3 * per_call(lambda: robust.decide(history), 2000), "ms"),
        ("ddqn decision", 1e3 * per_call(lambda: ddqn.decide(history), 500), "ms"),
    ]
    for name, value, unit in rows:
        print(f"{name:<40} {value:10.3f} {unit}")


if __name__ == "__main__":
    main()
