"""`fogfl new DIR` writes a project that `fogfl up --config DIR/fogfl.yaml` runs as it is:
its task (and a strategy beside it) found through the config's python_path by every process
`fogfl up` starts, from whatever directory it is run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fogfl.config import load_config
from fogfl.run_dir import CONFIG_FILE, METRICS_FILE, MODEL_FILE, read_metrics
from fogfl.sim.hierarchy import simulate
from fogfl.sim.workers import ClientPool
from fogfl.wire import decode
from tests.integration.test_up import broker_mode, fogfl_up
from tests.sim.helpers import assert_same_model

pytestmark = pytest.mark.integration

# A strategy of the project's own, named by import path: FedAvg that notes each round it
# aggregated in the file its `marker` option names.
MARKING_STRATEGY = """
from pathlib import Path

from flwr.server.strategy import FedAvg


class MarkingFedAvg(FedAvg):
    def __init__(self, *, marker, **kwargs):
        super().__init__(**kwargs)
        self.marker = Path(marker)

    def aggregate_fit(self, server_round, results, failures):
        with self.marker.open("a") as notes:
            notes.write(f"{server_round} {sorted(r.num_examples for _, r in results)}\\n")
        return super().aggregate_fit(server_round, results, failures)
"""


def fogfl_new(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fogfl", "new", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_new_project_runs_with_fogfl_up(tmp_path: Path) -> None:
    project = tmp_path / "digits"
    new = fogfl_new(project)
    assert new.returncode == 0, new.stderr
    assert {p.name for p in project.iterdir()} == {"digits_task.py", "fogfl.yaml", "README.md"}
    assert f"fogfl up --config {project}/fogfl.yaml" in (project / "README.md").read_text()
    (project / "marking_strategy.py").write_text(textwrap.dedent(MARKING_STRATEGY))
    marker = tmp_path / "rounds.txt"
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "FOGFL_SERVER__STRATEGY": "marking_strategy:MarkingFedAvg",
        "FOGFL_SERVER__STRATEGY_OPTIONS": f"{{marker: '{marker}'}}",
    }
    up = fogfl_up(
        "--config",
        str(project / "fogfl.yaml"),
        "--rounds",
        "2",
        "--clients-per-region",
        "1",
        "--run-dir",
        str(run_dir),
        "--broker",
        broker_mode(),
        env=env,
    )
    assert up.returncode == 0, up.output
    rows = read_metrics(run_dir / METRICS_FILE)
    assert [row["round"] for row in rows] == ["0", "1", "2"]
    assert all(row["clients"] == "2" for row in rows[1:])
    # Untrained, ten classes: about one digit in ten; two rounds teach it most digits.
    assert float(rows[0]["eval_accuracy"]) < 0.3 < 0.6 < float(rows[2]["eval_accuracy"])
    # The project's strategy ran in the server, the regions weighted by their examples.
    assert marker.read_text().splitlines() == ["1 [240, 240]", "2 [240, 240]"]
    assert up.leftovers == []
    # fogfl sim finds the same task and strategy (in a worker process) and agrees.
    config = load_config(run_dir / CONFIG_FILE, environ={})
    with ClientPool(1) as pool:
        simulated = simulate(config, pool)
    runtime_model = decode((run_dir / MODEL_FILE).read_bytes(), kinds={"global"}, max_bytes=10**8)
    assert_same_model(simulated.final_tensors(), runtime_model.tensors, tolerance=1e-6)
    assert simulated.records[2].eval_accuracy == pytest.approx(float(rows[2]["eval_accuracy"]))


def test_fogfl_new_refuses_a_directory_that_holds_anything(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    refused = fogfl_new(tmp_path)
    assert refused.returncode != 0
    assert refused.stderr.strip().count("\n") == 0
    assert "is not empty" in refused.stderr and "nothing was written" in refused.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fogfl_new(empty).returncode == 0
