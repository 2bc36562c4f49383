"""`fogfl bandwidth` and `fogfl agent` end to end on tiny settings, with --json, and their
refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogfl.cli import app
from fogfl.errors import BandwidthError
from tests.bandwidth.conftest import write_trace

PREDICTORS = {"lstm", "last_value", "ewma", "harmonic_mean", "rls"}
CONTROLLERS = {"ddqn", "rule", "robust_rule", "oracle", "random", "fixed_float32", "fixed_int8"}


def run(*arguments: str) -> dict:
    result = CliRunner(mix_stderr=False).invoke(app, list(arguments))
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def test_predictor_commands(tmp_path: Path) -> None:
    traces, model = tmp_path / "traces", tmp_path / "model"
    generated = run("bandwidth", "generate", "--out", str(traces), "--synthetic", "internet",
                    "--synthetic", "rural_unstable", "--samples", "200", "--json")  # fmt: skip
    assert len(generated["files"]) == 2
    trained = run("bandwidth", "train", "--traces", str(traces), "--out", str(model),
                  "--epochs", "2", "--json")  # fmt: skip
    assert trained["epochs_run"] == 2 and {"mse", "mae", "mape", "accuracy"} <= set(trained)
    assert set(trained["baselines"]) == PREDICTORS - {"lstm"}
    assert {Path(p).name for p in trained["plots"]} == {"predicted_vs_actual.png", "error_cdf.png"}
    evaluated = run("bandwidth", "evaluate", "--model", str(model), "--json", "--no-plots")
    assert set(evaluated["predictors"]) == PREDICTORS
    assert evaluated["windows"] == 2 * 30
    assert set(evaluated["datasets"]) == {"internet", "rural_unstable"}
    assert evaluated["predictors"]["lstm"]["mse"] == pytest.approx(trained["mse"])
    forecast = run("bandwidth", "predict", "--model", str(model), "--traces", str(traces), "--json")
    assert [f["trace"] for f in forecast["forecasts"]] == ["internet", "rural_unstable_v1"]
    assert all(f["predicted_mbit_s"] > 0 for f in forecast["forecasts"])


def test_agent_commands(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    trained = run("agent", "train", "--out", str(agent), "--episodes", "3", "--rounds", "4",
                  "--samples", "120", "--variants", "2", "--json")  # fmt: skip
    assert trained["episodes"] == 3 and 0 < trained["final_epsilon"] < 1
    assert len(trained["held_out"]) == 1  # 20% of 6 scenario series
    evaluated = run("agent", "evaluate", "--model", str(agent), "--starts", "2", "--json")
    assert evaluated["traces"] == trained["held_out"]
    assert set(evaluated["controllers"]) >= CONTROLLERS
    oracle = evaluated["controllers"]["oracle"]
    assert oracle["rounds"] == 2 * 4 and oracle["deadline_miss_rate"] == 0.0
    for summary in evaluated["controllers"].values():
        assert summary["reward"] <= oracle["reward"] + 1e-9  # nobody beats knowing the future
        assert {"reward", "deadline_miss_rate", "bytes_per_round"} <= set(summary)
    assert Path(evaluated["plots"][0]).name == "choices.png"


def test_bad_inputs_end_in_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    write_trace(bad / "t.txt", [(0, 1), (0, 2)])
    result = CliRunner().invoke(app, ["bandwidth", "train", "--traces", str(bad), "--out",
                                      str(tmp_path / "m"), "--epochs", "1"])  # fmt: skip
    assert isinstance(result.exception, BandwidthError)
    assert "time_s does not rise" in str(result.exception)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "predictor.json").write_text("[]")
    (tmp_path / "m" / "predictor.safetensors").write_bytes(b"junk")
    result = CliRunner().invoke(app, ["bandwidth", "evaluate", "--model", str(tmp_path / "m")])
    assert isinstance(result.exception, BandwidthError) and "format" in str(result.exception)
    result = CliRunner().invoke(app, ["agent", "evaluate", "--model", str(tmp_path / "m")])
    assert isinstance(result.exception, BandwidthError) and "DDQN agent" in str(result.exception)
