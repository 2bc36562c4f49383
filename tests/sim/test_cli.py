"""`fogfl sim` runs every shipped experiment (shrunk by its flags) into a complete output
folder, and `fogfl report` reads it back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fogfl.cli import app
from fogfl.run_dir import read_metrics
from fogfl.sim.experiment import Experiment, load_experiments, missing_agents

EXPERIMENTS = sorted((Path(__file__).parents[2] / "configs" / "experiments").glob("*.yaml"))
# A grid of more runs (per part) runs a spread of SPREAD of them, in every part.
MOST_RUNS, SPREAD = 24, 10
ECG_DATA = Path(__file__).parents[3] / "shared" / "data" / "ecg5000"
PLOTS = {"metric_per_round.png", "communication.png"}


def shrink(experiment: Path) -> tuple[list[str], dict[str, str]]:
    """Flags and environment for a run of a few seconds: 4 clients, 2 rounds of 1 epoch,
    short QoE traces, a spread of the runs of a large grid; ECG5000 runs on the real file
    when it is there (FOGFL_DATA_DIR, which only the tasks that read data look at), else
    the experiment runs on QoE."""
    raw = yaml.safe_load(experiment.read_text())
    parts = load_experiments(experiment)
    tasks = {v.config.task.name for part in parts for v in part.variants}
    flags = ["--clients", "4", "--rounds", "2", "--local-epochs", "1", "--workers", "0"]
    names = list(dict.fromkeys(v.name for part in parts for v in part.variants))
    if len(names) > MOST_RUNS:
        for name in names[:: -(-len(names) // SPREAD)]:
            flags += ["--only", name]
    if raw.get("centralized"):
        flags += ["--set", "centralized.epochs=2"]
    if "ecg5000" in tasks and (ECG_DATA / "ECG5000_TRAIN.txt").exists():
        return flags, {"FOGFL_DATA_DIR": str(ECG_DATA)}
    if tasks != {"qoe"}:
        flags += ["--task", "qoe"]
    return [*flags, "--set", "task.options.duration_s=30"], {}


def missing_traces(experiment: Path) -> list[Path]:
    """The trace files the experiment's links replay (relative to it, wherever in the file
    they are named) that are not here."""
    named: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("trace"), str):
                named.append(node["trace"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(experiment.read_text()))
    return [trace for trace in (experiment.parent / t for t in named) if not trace.exists()]


def test_experiments_are_shipped() -> None:
    assert {p.stem for p in EXPERIMENTS} >= {"comico", "reduction", "hierfavg"}


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_shipped_experiment_runs_in_a_reduced_form(experiment: Path, tmp_path: Path) -> None:
    absent = missing_traces(experiment)
    if absent:
        pytest.skip(f"{experiment.name} replays {absent[0]}, which is not here")
    out = tmp_path / "out"
    flags, env = shrink(experiment)
    arguments = ["sim", "--config", str(experiment), "--out", str(out), *flags]
    result = CliRunner().invoke(app, arguments, env=env)
    assert result.exit_code == 0, result.output
    parts = load_experiments(experiment)
    for part in parts:  # a file of parts writes a folder for each
        check_output(out if len(parts) == 1 else out / part.name, part, flags, result.output)


def check_output(out: Path, experiment: Experiment, flags: list[str], output: str) -> None:
    summary = json.loads((out / "summary.json").read_text())
    variants = [v["name"] for v in summary["variants"]]
    # A ddqn arm without its trained agent is left out, and the command says so.
    chosen = [flags[i + 1] for i, flag in enumerate(flags) if flag == "--only"]
    wanted = [v.name for v in experiment.variants if not chosen or v.name in chosen]
    untrained = [name for name in missing_agents(experiment) if name in wanted]
    assert all(f"leaving out variant {name}" in output for name in untrained)
    assert variants == [name for name in wanted if name not in untrained]
    history = read_metrics(out / "history.csv")
    assert len(history) == 3 * len(variants)  # rounds 0, 1, 2 of each
    assert all(row["variant"] in variants for row in history)
    assert all(float(row["client_updates"]) >= 2 for row in history if row["round"] != "0")
    clients = read_metrics(out / "clients.csv")
    assert len(clients) == 4 * len(variants)
    centralized = experiment.centralized is not None
    plots = PLOTS | ({"clients_central_vs_federated.png"} if centralized else set())
    assert {p.name for p in out.glob("*.png")} >= plots
    if centralized:
        assert all(row[next(k for k in row if k.endswith("_central"))] for row in clients)
    for name in variants:
        assert (out / "variants" / name / "global_model.safetensors").exists()
    # On QoE instead of ECG5000 (no data here), accuracy gives way to the regression metric.
    assert summary["metric"] == (experiment.metric if "--task" not in flags else "eval_mae")
    assert name in output  # the summary table names the variants


def test_report_reads_a_simulation_back(tmp_path: Path) -> None:
    experiment = next(p for p in EXPERIMENTS if p.stem == "hierfavg")
    out = tmp_path / "sim"
    runner = CliRunner()
    flags, env = shrink(experiment)
    arguments = ["sim", "-c", str(experiment), "--out", str(out), *flags, "--no-plots"]
    assert runner.invoke(app, arguments, env=env).exit_code == 0
    assert not list(out.glob("*.png"))
    result = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "kappa=5" in result.output and "cloud bytes" in result.output
    assert {p.name for p in (tmp_path / "plots").glob("*.png")} >= PLOTS
    # Each variant folder is a run directory of its own, as `fogfl up` writes one.
    variant = runner.invoke(app, ["report", str(out / "variants" / "kappa=2"), "--no-plots"])
    assert variant.exit_code == 0 and "MAE" in variant.output


def test_report_on_a_folder_without_results_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fogfl", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "neither history.csv" in result.stderr and "Traceback" not in result.stderr


def test_an_invalid_experiment_is_one_line_naming_the_key(tmp_path: Path) -> None:
    experiment = tmp_path / "bad.yaml"
    experiment.write_text("base: {training: {local_epochs: 0}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "fogfl", "sim", "--config", str(experiment), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "training.local_epochs" in result.stderr and "Traceback" not in result.stderr


METRICS_HEADER = (
    "round,clients,regions,failed_regions,train_loss,eval_loss,eval_mae,eval_rmse,"
    "eval_accuracy,bytes_up,bytes_down,bytes_edge,bytes_cloud,round_seconds\n"
)


def write_run(directory: Path, *, failed_round: int = 2, seconds: float = 180.0) -> Path:
    """A `fogfl up` run directory by hand: 4 rounds over 2 regions, one of which failed in
    `failed_round`, which took `seconds` where the others took about 2 s."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = ["0,,,,,0.12,0.30,0.33,,,,,,"]
    for number in range(1, 5):
        failed = int(number == failed_round)
        took = seconds if number == failed_round else 2.0 + number / 10
        traffic = "150000,130000,250000,40000" if not failed else "75000,65000,125000,20000"
        mae = 0.3 - 0.04 * number
        rows.append(
            f"{number},{6 - 3 * failed},{2 - failed},{failed},0.1,0.08,{mae},0.2,,{traffic},{took}"
        )
    (directory / "metrics.csv").write_text(METRICS_HEADER + "\n".join(rows) + "\n")
    summary = {
        "run_id": "demo",
        "rounds": 4,
        "regions": ["north", "south"],
        "short_rounds": [f"round {failed_round}: 1 of 2 regions"],
        "completed_rounds": 4,
        "failure": None,
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    (directory / "config.yaml").write_text("server: {round_timeout_s: 240}\n")
    return directory


def test_report_names_a_failed_region_and_a_long_round(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["report", str(run), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "failed regions 2; long 2" in result.output  # the table's marked rounds
    assert "round 2: 1 of 2 regions failed" in result.output
    assert "round 2: 1 of 2 regions, fewer than min_regions" in result.output
    assert "round 2: took 180 s" in result.output


def test_report_of_a_healthy_run_marks_nothing(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", failed_round=0, seconds=2.0)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "short_rounds": []}))
    result = CliRunner().invoke(app, ["report", str(run), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "problems" not in result.output and "marked rounds" not in result.output


def test_a_round_near_the_timeout_is_long_and_a_stopped_server_is_said(tmp_path: Path) -> None:
    from fogfl.sim.results import read_results

    run = write_run(tmp_path / "run", failed_round=3, seconds=200.0)
    summary = json.loads((run / "summary.json").read_text())
    summary.update(completed_rounds=3, failure="round 4: 0 of 2 regions answered")
    (run / "summary.json").write_text(json.dumps(summary))
    results = read_results(run)
    assert [str(p) for p in results.variants[0].problems] == [
        "round 3: 1 of 2 regions failed",
        "round 3: took 200 s of the 240 s timeout",
    ]
    assert "the server stopped: round 4: 0 of 2 regions answered" in results.failures
    assert "completed 3 of 4 rounds" in results.failures


def test_report_removes_the_plots_of_an_earlier_run(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    stale = run / "clients_central_vs_federated.png"  # this run has no clients.csv
    stale.write_bytes(b"an earlier run's plot")
    (run / "metric_per_round.png").write_bytes(b"an earlier run's plot")
    (run / "mine.png").write_bytes(b"the user's own")
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert (run / "metric_per_round.png").read_bytes().startswith(b"\x89PNG")
    assert (run / "rounds.png").exists()
    assert (run / "mine.png").read_bytes() == b"the user's own"


def test_sim_without_plots_removes_the_plots_of_an_earlier_run(tmp_path: Path) -> None:
    experiment = next(p for p in EXPERIMENTS if p.stem == "hierfavg")
    out = tmp_path / "sim"
    out.mkdir()
    (out / "communication.png").write_bytes(b"an earlier run's plot")
    flags, env = shrink(experiment)
    flags += ["--no-plots", "--only", "kappa=1"]
    arguments = ["sim", "-c", str(experiment), "--out", str(out), *flags]
    result = CliRunner().invoke(app, arguments, env=env)
    assert result.exit_code == 0, result.output
    assert not list(out.glob("*.png"))


QUICK = ["--clients", "4", "--rounds", "2", "--local-epochs", "1", "--workers", "0"]
QUICK += ["--set", "task.options.duration_s=30", "--no-plots"]


def test_sim_without_an_experiment_file_runs_one_plain_variant(tmp_path: Path) -> None:
    out = tmp_path / "plain"
    # The environment applies as in `fogfl up` (defaults ← YAML ← FOGFL_* ← flags).
    env = {"FOGFL_FEDERATION__EDGE_ROUNDS": "2", "FOGFL_FEDERATION__ROUNDS": "7"}
    arguments = ["sim", "--task", "qoe", "--regions", "2", "--out", str(out), *QUICK]
    result = CliRunner().invoke(app, arguments, env=env)
    assert result.exit_code == 0, result.output
    assert "configuration from the environment: FOGFL_FEDERATION__EDGE_ROUNDS" in result.output
    summary = json.loads((out / "summary.json").read_text())
    (variant,) = summary["variants"]
    assert variant["name"] == "qoe"
    assert variant["settings"]["edge_rounds"] == 2  # from the environment
    assert variant["settings"]["rounds"] == 2  # the flag beats FOGFL_FEDERATION__ROUNDS
    assert variant["settings"]["clients"] == 4 and variant["settings"]["regions"] == 2
    assert variant["client_updates"] == 4 * 2 * 2  # clients × rounds × κ


def test_sim_runs_a_plain_configuration_file(tmp_path: Path) -> None:
    config = tmp_path / "fogfl.yaml"
    config.write_text(
        "federation: {rounds: 1, regions: [a, b, c], clients_per_region: 1}\n"
        "training: {local_epochs: 1}\ntask: {options: {duration_s: 30}}\n"
    )
    out = tmp_path / "out"
    arguments = ["sim", "--config", str(config), "--workers", "0", "--no-plots", "--out", str(out)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    (variant,) = json.loads((out / "summary.json").read_text())["variants"]
    assert variant["settings"]["regions"] == 3 and variant["settings"]["rounds"] == 1


def test_sim_of_an_experiment_file_says_it_ignores_the_environment(tmp_path: Path) -> None:
    experiment = next(p for p in EXPERIMENTS if p.stem == "hierfavg")
    out = tmp_path / "sim"
    flags = [*shrink(experiment)[0], "--no-plots", "--only", "kappa=1"]
    env = {"FOGFL_FEDERATION__EDGE_ROUNDS": "3", "FOGFL_DATA_DIR": str(tmp_path)}
    arguments = ["sim", "-c", str(experiment), "--out", str(out), *flags]
    result = CliRunner().invoke(app, arguments, env=env)
    assert result.exit_code == 0, result.output
    assert "ignoring FOGFL_FEDERATION__EDGE_ROUNDS" in result.output
    assert "FOGFL_DATA_DIR" not in result.output  # a task's own variable, not a setting
    (variant,) = json.loads((out / "summary.json").read_text())["variants"]
    assert variant["settings"]["edge_rounds"] == 1


def test_a_file_mixing_experiment_and_configuration_keys_is_refused(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("name: x\nfederation: {rounds: 2}\n")
    result = CliRunner().invoke(app, ["sim", "--config", str(mixed), "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "put the configuration under `base:`" in str(result.exception or result.output)


def test_the_plots_mark_the_failed_round_and_read_at_a_glance(tmp_path: Path) -> None:
    from fogfl.sim.plots import (
        COMMUNICATION_PLOT,
        FAILED_LABEL,
        LONG_LABEL,
        METRIC_PLOT,
        ROUNDS_PLOT,
        figures,
    )
    from fogfl.sim.results import read_results

    drawn = figures(read_results(write_run(tmp_path / "run")))
    (metric,) = drawn[METRIC_PLOT].axes
    for figure in drawn.values():
        figure.canvas.draw()  # tick labels exist once drawn
    labels = metric.get_legend().get_texts()
    assert {FAILED_LABEL, LONG_LABEL} <= {t.get_text() for t in labels}
    rounds = [t.get_text() for t in metric.get_xticklabels() if t.get_text()]
    assert all(label.lstrip("−-").isdigit() for label in rounds), rounds
    updates, _uplink, edge, cloud = drawn[COMMUNICATION_PLOT].axes
    assert all(panel.get_legend() is not None for panel in (updates, edge, cloud))
    ticks = [t.get_text() for t in edge.get_xticklabels() if t.get_text()]
    assert ticks and all(t.endswith(("B", "kB", "MB", "GB")) for t in ticks), ticks
    assert FAILED_LABEL in {t.get_text() for t in cloud.get_legend().get_texts()}
    seconds, regions = drawn[ROUNDS_PLOT].axes
    assert seconds.get_yscale() == "log"  # 2 s rounds beside a 180 s one
    assert any("timeout" in t.get_text() for t in seconds.get_legend().get_texts())
    region_ticks = [t.get_text() for t in regions.get_yticklabels() if t.get_text()]
    assert all(t.isdigit() for t in region_ticks), region_ticks


def test_each_centralized_line_names_its_variants(tmp_path: Path) -> None:
    from fogfl.sim.plots import METRIC_PLOT, figures
    from fogfl.sim.results import Results, VariantHistory

    rows = [{"round": float(r), "eval_mae": 0.3 - 0.05 * r} for r in range(3)]
    results = Results(
        directory=tmp_path,
        kind="sim",
        title="t",
        metric="eval_mae",
        target=None,
        baseline="",
        variants=[VariantHistory(name, list(rows)) for name in ("few", "many", "more")],
        centralized={"few": {"eval_mae": 0.04}, "many": {"eval_mae": 0.02}},
    )
    (axes,) = figures(results)[METRIC_PLOT].axes
    texts = {t.get_text() for t in axes.get_legend().get_texts()}
    assert "centralized (few): 0.04" in texts and "centralized (many): 0.02" in texts


def test_a_float32_mean_at_the_target_reaches_it_as_history_csv_reads_back() -> None:
    import numpy as np

    from fogfl.sim.results import VariantHistory, summarize

    # 90 of 100 as a float32 mean, and as history.csv's 8 digits read it back.
    exact = float(np.float32(0.9))
    for value in (exact, float(f"{exact:.8g}")):
        rows = [{"round": 0.0, "eval_accuracy": 0.1}, {"round": 1.0, "eval_accuracy": value}]
        reached = summarize(VariantHistory("v", rows), 0.9, "eval_accuracy").reached
        assert reached is not None and reached.round == 1
    below = [{"round": 0.0, "eval_accuracy": 0.1}, {"round": 1.0, "eval_accuracy": 0.8999}]
    assert summarize(VariantHistory("v", below), 0.9, "eval_accuracy").reached is None
    mae = [{"round": 0.0, "eval_mae": 0.5}, {"round": 1.0, "eval_mae": float(np.float32(0.03))}]
    assert summarize(VariantHistory("v", mae), 0.03, "eval_mae").reached is not None
