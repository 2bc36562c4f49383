"""The simulation and the runtime agree: one `fogfl up` round — real processes over a real
broker — and one simulated round of the same configuration give the same global model, the
same metrics, and about the same traffic: with float32 updates over emulated links, every
message in 4 kB chunks, where the links carry the bytes the simulation counts; and with
int8 updates (deltas the fog brokers decode against the global model) on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fogfl.broker import mosquitto_binary
from fogfl.cli import app
from fogfl.config import load_config
from fogfl.run_dir import METRICS_FILE, MODEL_FILE, read_metrics
from fogfl.sim.hierarchy import SimulatedRun, simulate
from fogfl.sim.workers import ClientPool
from fogfl.wire import decode
from tests.sim.helpers import assert_same_model

pytestmark = pytest.mark.integration

CONFIG = {
    "federation": {"rounds": 1, "regions": ["north", "south"], "clients_per_region": 2, "seed": 7},
    "training": {"local_epochs": 2},
    "task": {"name": "qoe", "options": {"duration_s": 120}},
}
UP_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def runtime_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A one-round `fogfl up` run over emulated links, every message over 4 kB in chunks:
    (its config file, its run directory)."""
    links = {"default": {"rate_mbit": 20}}
    yield from _up(tmp_path_factory, {**CONFIG, "links": links, "wire": {"chunk_bytes": 4096}})


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The same round with int8 updates, on loopback, whole messages."""
    yield from _up(tmp_path_factory, {**CONFIG, "wire": {"update_codec": "int8"}})


def _up(
    tmp_path_factory: pytest.TempPathFactory, settings: dict[str, object]
) -> Iterator[tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("runtime")
    config, run_dir = folder / "config.yaml", folder / "run"
    config.write_text(yaml.safe_dump(settings))
    broker = "mosquitto" if mosquitto_binary() else "embedded"
    arguments = ["--config", str(config), "--rounds", "1", "--broker", broker]
    up = subprocess.Popen(
        [sys.executable, "-m", "fogfl", "up", *arguments, "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = up.communicate(timeout=UP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # `fogfl up` stops everything it started on SIGTERM; SIGKILL only if it does not.
        os.kill(up.pid, signal.SIGTERM)
        try:
            output, _ = up.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(up.pid, signal.SIGKILL)
            output, _ = up.communicate()
        pytest.fail(f"fogfl up did not finish in {UP_TIMEOUT_S} s:\n{output}")
    assert up.returncode == 0, output
    yield config, run_dir


def test_one_round_gives_the_same_global_model_in_both(runtime_run: tuple[Path, Path]) -> None:
    check_the_same_round(runtime_run)


def test_one_round_of_int8_updates_gives_the_same_global_model_in_both(
    int8_run: tuple[Path, Path], runtime_run: tuple[Path, Path]
) -> None:
    check_the_same_round(int8_run)
    int8_up = read_metrics(int8_run[1] / METRICS_FILE)[1]
    float32_up = read_metrics(runtime_run[1] / METRICS_FILE)[1]
    # The updates shrink to about a quarter; the partials stay float32.
    assert int(int8_up["bytes_up"]) < 0.75 * int(float32_up["bytes_up"])


def test_the_links_carry_the_chunks_the_simulation_counts(
    runtime_run: tuple[Path, Path],
) -> None:
    """Chunked messages over emulated links: the runtime's links carry what the simulation
    says they do, chunk headers included, plus only MQTT's framing and acknowledgements."""
    simulated = check_the_same_round(runtime_run)
    row, record = read_metrics(runtime_run[1] / METRICS_FILE)[1], simulated.records[1]
    assert record.wire_bytes_up is not None and record.wire_bytes_down is not None
    headers = record.wire_bytes_down - record.bytes_down  # the global model's chunk headers
    assert headers > 1000 * record.clients
    for column, simulated_bytes in (
        ("wire_bytes_up", record.wire_bytes_up),
        ("wire_bytes_down", record.wire_bytes_down),
    ):
        framing = int(row[column]) - simulated_bytes
        assert 0 <= framing < headers / 2, (column, row[column], simulated_bytes)


def check_the_same_round(run: tuple[Path, Path]) -> SimulatedRun:
    config_path, run_dir = run
    config = load_config(config_path, environ={})
    with ClientPool(0) as pool:
        simulated = simulate(config, pool)
    runtime_model = decode(
        (run_dir / MODEL_FILE).read_bytes(), kinds={"global"}, max_bytes=10**8
    ).tensors
    assert_same_model(simulated.final_tensors(), runtime_model, tolerance=1e-6)

    runtime = read_metrics(run_dir / METRICS_FILE)
    assert [row["round"] for row in runtime] == ["0", "1"]
    for row, record in zip(runtime, simulated.records, strict=True):
        for column in ("eval_loss", "eval_mae", "eval_rmse"):
            assert float(row[column]) == pytest.approx(getattr(record, column), rel=1e-5)
    row, record = runtime[1], simulated.records[1]
    assert float(row["train_loss"]) == pytest.approx(record.train_loss, rel=1e-5)
    assert (int(row["clients"]), int(row["regions"])) == (record.clients, record.regions)
    for column in ("bytes_up", "bytes_down", "bytes_edge", "bytes_cloud"):
        # Only the senders' clocks differ (sent_at, train and transfer seconds in the
        # metadata): a few bytes per message, however small the model.
        assert int(row[column]) == pytest.approx(getattr(record, column), rel=0.002, abs=200)
    return simulated


def test_report_reads_a_runtime_run_directory(
    runtime_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, run_dir = runtime_run
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "MAE" in result.output and "client updates" in result.output
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "metric_per_round.png",
        "communication.png",
        "rounds.png",
    }
