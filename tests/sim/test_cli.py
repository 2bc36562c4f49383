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

EXPERIMENTS = sorted((Path(__file__).parents[2] / "configs" / "experiments").glob("*.yaml"))
ECG_DATA = Path(__file__).parents[3] / "shared" / "data" / "ecg5000"
PLOTS = {"metric_per_round.png", "communication.png"}


def shrink(experiment: Path) -> list[str]:
    """Flags for a run of a few seconds: 4 clients, 2 rounds of 1 epoch, short QoE traces;
    ECG5000 runs on the real file when it is there, else the experiment runs on QoE."""
    raw = yaml.safe_load(experiment.read_text())
    task = raw["base"]["task"]["name"]
    flags = ["--clients", "4", "--rounds", "2", "--local-epochs", "1", "--workers", "0"]
    if raw.get("centralized"):
        flags += ["--set", "centralized.epochs=2"]
    if task == "ecg5000" and (ECG_DATA / "ECG5000_TRAIN.txt").exists():
        return [*flags, "--data-dir", str(ECG_DATA)]
    if task != "qoe":
        flags += ["--task", "qoe"]
    return [*flags, "--set", "task.options.duration_s=30"]


def test_experiments_are_shipped() -> None:
    assert {p.stem for p in EXPERIMENTS} >= {"comico", "reduction", "hierfavg"}


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_shipped_experiment_runs_in_a_reduced_form(experiment: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flags = shrink(experiment)
    arguments = ["sim", "--config", str(experiment), "--out", str(out), *flags]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    variants = [v["name"] for v in summary["variants"]]
    raw = yaml.safe_load(experiment.read_text())
    sweep_points = 1
    for values in raw.get("sweep", {}).values():
        sweep_points *= len(values)
    assert len(variants) == max(1, len(raw.get("variants", []))) * sweep_points
    history = read_metrics(out / "history.csv")
    assert len(history) == 3 * len(variants)  # rounds 0, 1, 2 of each
    assert all(row["variant"] in variants for row in history)
    assert all(float(row["client_updates"]) >= 2 for row in history if row["round"] != "0")
    clients = read_metrics(out / "clients.csv")
    assert len(clients) == 4 * len(variants)
    plots = PLOTS | ({"clients_central_vs_federated.png"} if raw.get("centralized") else set())
    assert {p.name for p in out.glob("*.png")} >= plots
    if raw.get("centralized"):
        assert all(row[next(k for k in row if k.endswith("_central"))] for row in clients)
    for name in variants:
        assert (out / "variants" / name / "global_model.safetensors").exists()
    # On QoE instead of ECG5000 (no data here), accuracy gives way to the regression metric.
    assert summary["metric"] == (raw["metric"] if "--task" not in flags else "eval_mae")
    assert name in result.output  # the summary table names the variants


def test_report_reads_a_simulation_back(tmp_path: Path) -> None:
    experiment = next(p for p in EXPERIMENTS if p.stem == "hierfavg")
    out = tmp_path / "sim"
    runner = CliRunner()
    flags = [*shrink(experiment), "--no-plots"]
    assert (
        runner.invoke(app, ["sim", "-c", str(experiment), "--out", str(out), *flags]).exit_code == 0
    )
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
