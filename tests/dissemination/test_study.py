"""A study run writes one CSV and one PNG per experiment and a summary.json; the command
line reports bad input in one readable line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogfl.cli import app
from fogfl.dissemination.experiments import StudyParams
from fogfl.dissemination.study import MODEL_EXPERIMENTS, choose_experiments, run_study
from fogfl.errors import ConfigError

SMALL = StudyParams(
    nodes=40,
    trials=3,
    load_nodes=(10, 40),
    failure_rates=(0.0, 0.3),
    publishers=4,
    fog_brokers=(1, 2, 4),
)


def test_study_writes_csv_png_and_summary(tmp_path: Path) -> None:
    started: dict[str, int] = {}

    def progress(name: str, steps: int) -> Callable[[int], None]:
        started[name] = steps
        return lambda done: None

    report = run_study(MODEL_EXPERIMENTS, SMALL, tmp_path, progress)
    assert set(started) == set(MODEL_EXPERIMENTS)
    for name in MODEL_EXPERIMENTS:
        rows = list(csv.DictReader((tmp_path / f"{name}.csv").open()))
        assert rows, name
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(report.summary_path.read_text())
    assert summary["params"]["nodes"] == 40
    assert set(summary["results"]) == set(MODEL_EXPERIMENTS)
    assert summary["results"]["load"]["summary"]["messages"]["mqtt"] == 40


def test_experiments_run_in_the_study_order_and_default_to_the_models() -> None:
    assert choose_experiments([]) == list(MODEL_EXPERIMENTS)
    assert choose_experiments(["fog", "load"]) == ["load", "fog"]
    with pytest.raises(ConfigError, match="unknown experiment gosip; choose from load"):
        choose_experiments(["gosip"])


def test_command_runs_one_experiment(tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = CliRunner().invoke(
        app,
        ["dissemination", "load", "--trials", "2", "--load-nodes", "10,20", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "messages per event, N=20" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["load.csv", "load.png", "summary.json"]


def test_command_reports_a_bad_flag_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fogfl",
            "dissemination",
            "failure",
            "--failure-rates",
            "0,x",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--failure-rates '0,x': give comma-separated numbers" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_failure_plot_shows_every_trial_not_only_the_mean() -> None:
    from matplotlib.figure import Figure

    from fogfl.dissemination.experiments import run_failure
    from fogfl.dissemination.plots import draw_failure

    params = StudyParams(
        nodes=40, trials=12, failure_rates=(0.0, 0.3), broker_failure=0.5, fog_brokers=(1, 2)
    )
    result = run_failure(params, lambda done: None)
    per_trial = result.summary["coverage_per_trial"]
    mqtt = [c for rate in per_trial.values() for c in rate["mqtt"]]
    # The broker fails in some trials and not in others: MQTT reaches all or almost none.
    assert min(mqtt) < 0.1 and max(mqtt) > 0.7
    axes = Figure().subplots()
    draw_failure(axes, result)
    dots = sum(
        len(collection.get_offsets())
        for collection in axes.collections
        if str(collection.get_gid()).startswith("trials-")
    )
    assert dots == 3 * 12 * 2  # every protocol's every trial at every rate
    labels = axes.get_legend_handles_labels()[1]
    assert "median" in labels and "mean" in labels
    assert [t.get_text() for t in axes.get_xticklabels()] == ["0", "0.3"]
