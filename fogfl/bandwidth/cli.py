"""`fogfl bandwidth generate | train | evaluate | predict` and `fogfl agent train | evaluate`.

Only typer and the standard library are imported at module level, so that `fogfl --help`
stays fast; torch, numpy and matplotlib load when a command runs. With `--json` a command
prints one JSON document on stdout and nothing else there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from fogfl.errors import BandwidthError

if TYPE_CHECKING:
    from rich.table import Table

    from fogfl.bandwidth.evaluation import PredictorComparison
    from fogfl.bandwidth.series import LinkSeries

bandwidth_app = typer.Typer(
    help="The LSTM bandwidth predictor: generate link data, train, evaluate beside the "
    "baselines, forecast (docs/bandwidth.md).",
    no_args_is_help=True,
)
agent_app = typer.Typer(
    help="The DDQN agent that picks each round's update codec: train on link traces, "
    "compare with the rules, the oracle, random and fixed codecs (docs/bandwidth.md).",
    no_args_is_help=True,
)

Traces = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--traces",
        help="A trace file or a folder of them: `time_s throughput_mbit_s` per line (or the "
        "five columns `generate` writes).",
        show_default=False,
    ),
]
Synthetic = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--synthetic",
        help="A synthetic link kind: datacenter, internet, home_stable, rural_unstable, "
        "vehicular_variable. Repeatable.",
        show_default=False,
    ),
]
Samples = Annotated[int, typer.Option(help="Samples (seconds) per synthetic series.")]
Seed = Annotated[int, typer.Option(help="Random seed; the same seed gives the same results.")]
Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
NoPlots = Annotated[bool, typer.Option("--no-plots", help="Write no PNGs.")]
Model = Annotated[
    Path, typer.Option("--model", help="A folder written by `train`.", show_default=False)
]


# What `bandwidth train` teaches the LSTM unless --target says otherwise: the residual
# (fogfl.bandwidth.targets.DEFAULT_TARGET, spelt out to keep numpy out of `fogfl --help`).
DEFAULT_TARGET = "residual"


def _setup() -> None:
    import torch

    torch.set_num_threads(1)


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _emit(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, allow_nan=False, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _finite(document: Any) -> Any:
    """NaN and infinities as null, so that the JSON stays standard."""
    import math

    if isinstance(document, dict):
        return {k: _finite(v) for k, v in document.items()}
    if isinstance(document, list | tuple):
        return [_finite(v) for v in document]
    if isinstance(document, float) and not math.isfinite(document):
        return None
    return document


@contextmanager
def _bars(label: str, total: int, shown: bool) -> Iterator[Any]:
    """A rich progress bar on stderr (none with --json); yields `advance(description)`."""
    if not shown:
        yield lambda _text="": None
        return
    from fogfl.views import progress_bars

    bars = progress_bars(34)
    bars.console.stderr = True
    with bars:
        task = bars.add_task(label, total=total)
        yield lambda text="": bars.update(task, advance=1, description=text or label)


def _sources(
    traces: Path | None, synthetic: list[str] | None, samples: int, seed: int, variants: int = 1
) -> tuple[list[LinkSeries], dict[str, Any]]:
    from fogfl.bandwidth.series import load_sources

    if samples < 1:
        raise BandwidthError(f"--samples {samples}: give at least 1")
    series = load_sources(traces, synthetic or [], samples, seed, variants)
    spec = {
        "traces": None if traces is None else str(traces.resolve()),
        "synthetic": list(synthetic or []),
        "samples": samples,
        "seed": seed,
        "variants": variants,
    }
    return series, spec


def _spec_sources(spec: Any, where: str) -> list[LinkSeries]:
    """The series a saved model recorded as its data."""
    if not isinstance(spec, dict):
        raise BandwidthError(f"{where} records no data source; give --traces or --synthetic")
    try:
        traces = Path(spec["traces"]) if spec.get("traces") else None
        return _sources(
            traces, list(spec["synthetic"]), int(spec["samples"]), int(spec["seed"]),
            int(spec.get("variants", 1)),
        )[0]  # fmt: skip
    except (KeyError, TypeError, ValueError):
        raise BandwidthError(f"{where}: its data source is malformed") from None


def _group(name: str) -> str:
    """The data set a series belongs to: its top folder, or its synthetic kind."""
    return name.split("/", 1)[0] if "/" in name else re.sub(r"_v\d+$", "", name)


@bandwidth_app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Folder for the trace files.", show_default=False)],
    synthetic: Synthetic = None,
    samples: Samples = 10_000,
    seed: Seed = 0,
    variants: Annotated[int, typer.Option(help="Series per kind, each drawn anew.")] = 1,
    as_json: Json = False,
) -> None:
    """Write synthetic link series as five-column trace files (default: every kind)."""
    from fogfl.bandwidth.series import SYNTHETIC_KINDS, write_series

    if variants < 1:
        raise BandwidthError(f"--variants {variants}: give at least 1")
    kinds = synthetic or list(SYNTHETIC_KINDS)
    series, _ = _sources(None, kinds, samples, seed, variants)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in series:
        path = out / f"{s.name}.txt"
        write_series(path, s)
        written.append(
            {
                "path": str(path),
                "samples": len(s),
                "mean_mbit_s": float(s.bandwidth.mean()),
                "min_mbit_s": float(s.bandwidth.min()),
                "max_mbit_s": float(s.bandwidth.max()),
            }
        )
    if as_json:
        _emit({"files": written})
        return
    for entry in written:
        typer.echo(
            f"{entry['path']}: {entry['samples']} samples, mean {entry['mean_mbit_s']:.4g} Mbit/s"
        )


@bandwidth_app.command()
def train(
    out: Annotated[Path, typer.Option(help="Folder for the model.", show_default=False)],
    traces: Traces = None,
    synthetic: Synthetic = None,
    samples: Samples = 10_000,
    seed: Seed = 0,
    epochs: Annotated[int, typer.Option(help="At most this many epochs.")] = 100,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without a better validation loss.")
    ] = 10,
    batch_size: Annotated[int, typer.Option(help="Windows per batch.")] = 32,
    target: Annotated[
        str,
        typer.Option(
            help="What the network outputs: residual (the next bandwidth's change from the "
            "last sample), level (the next bandwidth: the seed's exact model) or window (the "
            "change in units of the window's mean); docs/bandwidth.md."
        ),
    ] = DEFAULT_TARGET,
    as_json: Json = False,
    no_plots: NoPlots = False,
) -> None:
    """Train the LSTM on 70% of each series (early stopping on the next 15%), score it and
    the baselines on the last 15%, save predictor.safetensors + predictor.json."""
    _setup()
    from fogfl.bandwidth.evaluation import compare_predictors
    from fogfl.bandwidth.predictor import Architecture, TrainSettings, train_predictor
    from fogfl.bandwidth.targets import check_target
    from fogfl.bandwidth.windows import windowed

    settings = TrainSettings(epochs, patience, batch_size, seed=seed)
    architecture = Architecture(target=check_target(target))
    series, spec = _sources(traces, synthetic, samples, seed)
    data = windowed(series)
    with _bars("epochs", epochs, not as_json) as advance:
        predictor, report = train_predictor(
            data,
            settings,
            architecture,
            on_epoch=lambda e, t, v: advance(f"epoch {e}: train {t:.4f} val {v:.4f}"),
        )
    comparison = compare_predictors(data, predictor)
    predictor.metadata = {
        "data": spec,
        "constant_features": sorted({f for s in series for f in s.constant}),
        "training": {
            **vars(settings),
            "optimizer": "Adam",
            "loss": f"MSE of the network's target ({target})",
        },
        "report": {
            "epochs_run": report.epochs_run,
            "best_epoch": report.best_epoch,
            "stopped_early": report.stopped_early,
            "seconds": report.seconds,
            "windows": report.windows,
            "train_loss": report.train_loss,
            "validation_loss": report.validation_loss,
            **report.test,
            "baselines": {k: v for k, v in comparison.metrics.items() if k != "lstm"},
        },
    }
    predictor.save(out)
    plots = [] if no_plots else _predictor_plots(comparison, out)
    result = {
        "model": str(out),
        "target": target,
        **{k: v for k, v in predictor.metadata["report"].items() if not k.endswith("_loss")},
        "plots": [str(p) for p in plots],
    }
    if as_json:
        _emit(_finite(result))
        return
    from rich.console import Console

    Console().print(_predictor_table(comparison, "test split"))
    Console().print(
        f"{report.epochs_run} epochs (best {report.best_epoch}) in {report.seconds:.1f} s; "
        f"model in [bold]{out}[/]",
        highlight=False,
    )


def _predictor_plots(comparison: PredictorComparison, out: Path) -> list[Path]:
    from fogfl.bandwidth.plots import ERROR_CDF_PLOT, FORECAST_PLOT, error_cdf_plot, forecast_plot

    return [
        forecast_plot(comparison, out / FORECAST_PLOT),
        error_cdf_plot(comparison, out / ERROR_CDF_PLOT),
    ]


def _predictor_table(comparison: PredictorComparison, title: str) -> Table:
    from rich.table import Table

    table = Table(title=f"{title}: {comparison.windows} windows", title_justify="left")
    for column in ("predictor", "mse", "mae", "mape %", "within 2%", "within 10%"):
        table.add_column(column, justify="left" if column == "predictor" else "right")
    for name, m in comparison.metrics.items():
        table.add_row(
            name, f"{m['mse']:.4g}", f"{m['mae']:.4g}", f"{m['mape']:.2f}",
            f"{m['accuracy']:.1f}", f"{m['within_10pct']:.1f}",
        )  # fmt: skip
    return table


@bandwidth_app.command()
def evaluate(
    model: Model,
    traces: Traces = None,
    synthetic: Synthetic = None,
    samples: Samples = 10_000,
    seed: Seed = 0,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Folder for the plots [default: the model's].", show_default=False),
    ] = None,
    as_json: Json = False,
    no_plots: NoPlots = False,
) -> None:
    """The LSTM and every baseline on the same test windows (the last 15% of each series),
    overall and per data set; default data: what the model was trained on."""
    _setup()
    from fogfl.bandwidth.evaluation import compare_predictors
    from fogfl.bandwidth.predictor import Predictor
    from fogfl.bandwidth.windows import windowed

    predictor = Predictor.load(model)
    if traces is None and not synthetic:
        series = _spec_sources(predictor.metadata.get("data"), str(model / "predictor.json"))
    else:
        series = _sources(traces, synthetic, samples, seed)[0]
    data = windowed(series)
    overall = compare_predictors(data, predictor)
    groups: dict[str, list[LinkSeries]] = {}
    for s in series:
        groups.setdefault(_group(s.name), []).append(s)
    per_set = {}
    if len(groups) > 1:
        for name, members in groups.items():
            per_set[name] = compare_predictors(
                _with_normalisation(windowed(members), data), predictor
            ).summary()
    plots = [] if no_plots else _predictor_plots(overall, out or model)
    result = {
        "model": str(model),
        **overall.summary(),
        "datasets": per_set,
        "plots": [str(p) for p in plots],
    }
    if as_json:
        _emit(_finite(result))
        return
    from rich.console import Console

    Console().print(_predictor_table(overall, "all test windows"))
    beats = result["lstm_beats_best_baseline"]
    Console().print(
        f"best baseline: {result['best_baseline']}; the LSTM "
        f"{'beats' if beats['mse'] else 'does not beat'} it in MSE",
        highlight=False,
    )


def _with_normalisation(part: Any, whole: Any) -> Any:
    """A subset's windows with the whole data's normalisation (the RLS baseline works in it)."""
    from dataclasses import replace

    return replace(part, normalisation=whole.normalisation)


@bandwidth_app.command()
def predict(
    model: Model,
    traces: Annotated[
        Path, typer.Option("--traces", help="A trace file or a folder of them.", show_default=False)
    ],
    as_json: Json = False,
) -> None:
    """Forecast the next bandwidth of each trace from its last 10 samples."""
    _setup()
    from fogfl.bandwidth.baselines import harmonic_mean
    from fogfl.bandwidth.predictor import Predictor
    from fogfl.bandwidth.series import read_traces

    predictor = Predictor.load(model)
    steps = predictor.architecture.sequence_length
    forecasts = []
    for s in read_traces(traces):
        if len(s) < steps:
            raise BandwidthError(f"trace {s.name} has {len(s)} samples; a forecast needs {steps}")
        window = s.features[-steps:][None]
        forecasts.append(
            {
                "trace": s.name,
                "last_time_s": float(s.time_s[-1]),
                "predicted_mbit_s": float(predictor.predict(window)[0]),
                "last_mbit_s": float(s.bandwidth[-1]),
                "harmonic_mean_mbit_s": float(harmonic_mean(window[:, :, 1])[0]),
            }
        )
    if as_json:
        _emit({"model": str(model), "forecasts": forecasts})
        return
    for f in forecasts:
        typer.echo(
            f"{f['trace']}: next {f['predicted_mbit_s']:.4g} Mbit/s "
            f"(last {f['last_mbit_s']:.4g}, harmonic mean {f['harmonic_mean_mbit_s']:.4g})"
        )


DEFAULT_AGENT_DATA = ["home_stable", "rural_unstable", "vehicular_variable"]


@agent_app.command("train")
def agent_train(
    out: Annotated[Path, typer.Option(help="Folder for the agent.", show_default=False)],
    traces: Traces = None,
    synthetic: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--synthetic",
            help="A synthetic link kind (repeatable) [default without --traces: home_stable, "
            "rural_unstable, vehicular_variable].",
            show_default=False,
        ),
    ] = None,
    samples: Samples = 900,
    variants: Annotated[int, typer.Option(help="Series per synthetic kind.")] = 5,
    seed: Seed = 0,
    episodes: Annotated[int, typer.Option(help="Training episodes.")] = 2000,
    rounds: Annotated[int, typer.Option(help="Rounds per episode.")] = 20,
    model_mb: Annotated[
        float,
        typer.Option(
            help="The model's float32 size in MB (10⁶ B); the default needs 4 Mbit/s to meet "
            "the default deadline in float32."
        ),
    ] = 5.0,
    deadline_s: Annotated[float, typer.Option(help="The round's upload deadline.")] = 10.0,
    interval_s: Annotated[float, typer.Option(help="Seconds from one round to the next.")] = 15.0,
    miss_penalty: Annotated[float, typer.Option(help="Reward lost by a missed deadline.")] = 1.0,
    held_out: Annotated[
        float, typer.Option(help="Share of the traces kept out of training for evaluate.")
    ] = 0.2,
    predictor: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="A trained predictor folder: its forecast of the next upload's throughput "
            "joins the state.",
            show_default=False,
        ),
    ] = None,
    as_json: Json = False,
    no_plots: NoPlots = False,
) -> None:
    """Train the Double DQN on replayed link traces (some held out for `agent evaluate`)."""
    _setup()
    import numpy as np

    from fogfl.bandwidth.agent import DDQNSettings, train_agent
    from fogfl.bandwidth.environment import EnvironmentSettings, LinkTrace

    if not 0 <= held_out < 1:
        raise BandwidthError(f"--held-out {held_out}: give a share in [0, 1)")
    if variants < 1:
        raise BandwidthError(f"--variants {variants}: give at least 1")
    kinds = synthetic if synthetic or traces is not None else DEFAULT_AGENT_DATA
    series, spec = _sources(traces, kinds, samples, seed, variants)
    environment = EnvironmentSettings(
        round(model_mb * 1e6), deadline_s, interval_s, rounds, miss_penalty
    )
    settings = DDQNSettings(episodes=episodes, seed=seed)
    order = np.random.default_rng(seed).permutation(len(series))
    count = round(held_out * len(series)) if len(series) > 1 else 0
    count = min(max(count, 1 if held_out > 0 and len(series) > 1 else 0), len(series) - 1)
    kept = sorted(series[i].name for i in order[:count])
    training = [LinkTrace.of(s) for s in series if s.name not in kept]
    forecaster = _forecaster(predictor)
    with _bars("episodes", episodes, not as_json) as advance:
        agent, report = train_agent(
            training,
            environment,
            settings,
            forecaster,
            on_episode=lambda e, r, eps: advance(f"episode {e}: reward {r:+.3f} ε {eps:.3f}"),
        )
    summary = {
        "avg_reward_last_100": report.avg_reward_last_100,
        "final_epsilon": report.final_epsilon,
        "episodes": report.episodes,
        "learning_steps": report.learning_steps,
        "seconds": report.seconds,
    }
    agent.save(
        out,
        {
            "environment": environment.to_json(),
            "data": spec,
            "training_traces": len(training),
            "held_out": kept,
            "predictor": None if predictor is None else str(predictor.resolve()),
            "report": {**summary, "episode_rewards": report.episode_rewards},
        },
    )
    plots = []
    if not no_plots:
        from fogfl.bandwidth.plots import REWARD_PLOT, reward_curve_plot

        plots.append(reward_curve_plot(report.episode_rewards, out / REWARD_PLOT))
    result = {"model": str(out), **summary, "held_out": kept, "plots": [str(p) for p in plots]}
    if as_json:
        _emit(result)
        return
    typer.echo(
        f"{episodes} episodes in {report.seconds:.1f} s: average reward over the last 100 "
        f"episodes {report.avg_reward_last_100:.3f}, final ε {report.final_epsilon:.4f}; "
        f"agent in {out}; {len(kept)} traces held out"
    )


def _forecaster(predictor: Path | None) -> Any:
    if predictor is None:
        return None
    from fogfl.bandwidth.predictor import Predictor

    return Predictor.load(predictor).forecast_from_throughputs


@agent_app.command("evaluate")
def agent_evaluate(
    model: Model,
    traces: Traces = None,
    synthetic: Synthetic = None,
    samples: Samples = 900,
    seed: Seed = 0,
    starts: Annotated[int, typer.Option(help="Episodes per trace, from evenly spaced starts.")] = 5,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Folder for the plots [default: the agent's].", show_default=False),
    ] = None,
    as_json: Json = False,
    no_plots: NoPlots = False,
) -> None:
    """The agent beside the throughput rule, the robust rule, the oracle, random and every
    fixed codec, on the same rounds of the held-out traces (or those given)."""
    _setup()
    from fogfl.bandwidth.agent import DDQNAgent
    from fogfl.bandwidth.controllers import (
        DDQNController,
        FixedCodec,
        Oracle,
        RandomShare,
        RobustRule,
        ThroughputRule,
    )
    from fogfl.bandwidth.environment import EnvironmentSettings, LinkTrace
    from fogfl.bandwidth.evaluation import compare_controllers
    from fogfl.bandwidth.ladder import LADDER

    if starts < 1:
        raise BandwidthError(f"--starts {starts}: give at least 1")
    agent, document = DDQNAgent.load(model)
    where = str(model / "agent.json")
    environment = EnvironmentSettings.from_json(document.get("environment"), where)
    if traces is None and not synthetic:
        held = document.get("held_out") or []
        series = [s for s in _spec_sources(document.get("data"), where) if s.name in held]
        if not series:
            raise BandwidthError(f"{where} holds out no traces; give --traces or --synthetic")
    else:
        series = _sources(traces, synthetic, samples, seed)[0]
    predictor_path = document.get("predictor")
    forecaster = _forecaster(Path(predictor_path)) if predictor_path else None
    size, deadline = environment.model_bytes, environment.deadline_s
    controllers = [
        DDQNController(size, deadline, agent),
        ThroughputRule(size, deadline),
        RobustRule(size, deadline),
        Oracle(size, deadline),
        RandomShare(size, deadline, seed),
        *(FixedCodec(size, deadline, step.label) for step in LADDER),
    ]
    links = [LinkTrace.of(s) for s in series]
    results = compare_controllers(
        controllers, links, environment, starts, {"ddqn": forecaster} if forecaster else {}
    )
    plots = []
    if not no_plots:
        from fogfl.bandwidth.plots import CHOICES_PLOT, choices_plot

        plots.append(choices_plot(results, environment.rounds, (out or model) / CHOICES_PLOT))
    saved = document.get("report")
    report: dict[str, Any] = saved if isinstance(saved, dict) else {}
    summaries = {n.replace("-", "_"): r.summary() for n, r in results.items()}
    result = {
        "model": str(model),
        "traces": [s.name for s in series],
        "environment": environment.to_json(),
        "avg_reward_last_100": report.get("avg_reward_last_100"),
        "final_epsilon": report.get("final_epsilon"),
        "controllers": summaries,
        "plots": [str(p) for p in plots],
    }
    if as_json:
        _emit(_finite(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(series)} held-out traces × {starts} episodes", title_justify="left")
    for column in ("controller", "reward", "misses %", "kB per round", "byte ratio"):
        table.add_column(column, justify="left" if column == "controller" else "right")
    for name, summary in summaries.items():
        table.add_row(
            name, f"{summary['reward']:+.3f}", f"{100 * summary['deadline_miss_rate']:.1f}",
            f"{summary['bytes_per_round'] / 1e3:,.0f}", f"{summary['mean_byte_ratio']:.3f}",
        )  # fmt: skip
    Console().print(table)
