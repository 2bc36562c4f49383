"""`fogfl up --links`: the clients talk through emulated links, metrics.csv says how long
their transfers took and what the links carried, and the links runner is gone afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fogfl.broker import mosquitto_binary
from fogfl.run_dir import LINKS_COUNTERS_FILE, LINKS_DIR, METRICS_FILE, read_metrics
from tests.reaper import run_reaped

pytestmark = pytest.mark.integration

RATE_MBIT = 0.8
CLOUD_MBIT = 4.0
# A 50 kB model: each transfer takes about half a second at 0.8 Mbit/s.
CONFIG = """
task: {name: synthetic, options: {megabytes: 0.05}}
federation: {rounds: 2, regions: [north], clients_per_region: 2}
"""


def test_a_round_over_emulated_links_takes_the_time_the_links_predict(tmp_path: Path) -> None:
    (tmp_path / "fogfl.yaml").write_text(CONFIG)
    (tmp_path / "links.yaml").write_text(
        f"links:\n  default: {{rate_mbit: {RATE_MBIT}}}\n  cloud: {{rate_mbit: {CLOUD_MBIT}}}\n"
    )
    run_dir = tmp_path / "run"
    # With Mosquitto over TLS too: the proxies carry it through untouched.
    broker = ["--broker", "mosquitto", "--tls"] if mosquitto_binary() else ["--broker", "embedded"]
    up = run_reaped(
        [
            sys.executable,
            "-m",
            "fogfl",
            "up",
            "--config",
            str(tmp_path / "fogfl.yaml"),
            "--links",
            str(tmp_path / "links.yaml"),
            "--run-dir",
            str(run_dir),
            *broker,
        ],
        timeout=180,
    )
    assert up.returncode == 0, up.output
    assert up.leftovers == []  # the links runner among them

    rows = read_metrics(run_dir / METRICS_FILE)
    assert [row["round"] for row in rows] == ["0", "1", "2"]
    bytes_per_s = RATE_MBIT * 1e6 / 8
    for row in rows[1:]:
        clients = int(row["clients"])
        global_bytes = int(row["bytes_down"]) / clients
        updates_bytes = int(row["bytes_edge"]) - int(row["bytes_down"])
        upload_floor = updates_bytes / clients / bytes_per_s * 0.9
        assert upload_floor > 0.4
        assert upload_floor <= float(row["upload_s_median"]) <= float(row["upload_s_max"]) < 5
        assert row["stragglers"] == "0" and row["late_updates"] == "0"
        # The links counted the payloads, and a little MQTT framing around them.
        wire_up, wire_down = int(row["wire_bytes_up"]), int(row["wire_bytes_down"])
        assert updates_bytes <= wire_up <= updates_bytes * 1.05 + 20_000, row
        assert global_bytes * clients <= wire_down <= global_bytes * clients * 1.05 + 20_000, row
        assert 0 <= float(row["cloud_upload_s"]) < 1  # fog broker → bridge: one broker
        # The fog site's cloud link carried the global model down to the bridge and the
        # partial up to the Flower server (gRPC framing and the final evaluation on top).
        cloud_up, cloud_down = int(row["cloud_wire_bytes_up"]), int(row["cloud_wire_bytes_down"])
        assert global_bytes * 0.95 <= cloud_up <= global_bytes * 2 + 20_000, row
        assert global_bytes * 0.95 <= cloud_down <= global_bytes * 3 + 20_000, row
    # The clients had subscribed before round 2's model was published: no retained copy.
    download_floor = int(rows[2]["bytes_down"]) / 2 / bytes_per_s * 0.9
    assert download_floor <= float(rows[2]["download_s_median"]) < 5

    counters = json.loads((run_dir / LINKS_DIR / LINKS_COUNTERS_FILE).read_text())
    links = counters["links"]
    assert set(links) == {"north-01", "north-02", "cloud-north"}
    assert all(links[c]["rate_mbit"]["uplink"] == RATE_MBIT for c in ("north-01", "north-02"))
    assert links["cloud-north"]["rate_mbit"]["uplink"] == CLOUD_MBIT
    bridge = (run_dir / "logs" / "fog-bridge-north.log").read_text()
    assert f"127.0.0.1:{links['cloud-north']['port']}" in bridge, bridge


def test_a_links_file_that_cannot_work_is_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "links.yaml").write_text("links:\n  clients:\n    north-01: {scenario: moon}\n")
    links, run_dir = str(tmp_path / "links.yaml"), tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "fogfl", "up", "--run-dir", str(run_dir), "--links", links],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "links.clients.north-01.scenario" in result.stderr
    assert "unknown scenario 'moon'" in result.stderr
    assert not run_dir.exists()


# A 200 kB model on a 0.4 Mbit/s uplink: float32 takes 4 s, float16 2 s, int8 about 1 s,
# and the update has 3 s from when its round opened.
ADAPTIVE_CONFIG = """
task: {name: synthetic, options: {megabytes: 0.2}}
federation: {rounds: 2, regions: [north], clients_per_region: 2}
wire: {update_codec: adaptive, controller: CONTROLLER, upload_deadline_s: 3.0}
links: {default: {uplink_mbit: 0.4, downlink_mbit: 40}}
"""
SMALLEST = "topk_0.05"


@pytest.mark.parametrize("controller", ["robust-rule", "oracle"])
def test_clients_choose_their_codec_from_their_link(tmp_path: Path, controller: str) -> None:
    (tmp_path / "fogfl.yaml").write_text(ADAPTIVE_CONFIG.replace("CONTROLLER", controller))
    run_dir = tmp_path / "run"
    broker = ["--broker", "mosquitto"] if mosquitto_binary() else ["--broker", "embedded"]
    config = ["--config", str(tmp_path / "fogfl.yaml"), "--run-dir", str(run_dir)]
    up = run_reaped([sys.executable, "-m", "fogfl", "up", *config, *broker], timeout=180)
    assert up.returncode == 0, up.output
    assert up.leftovers == []

    rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
    chosen = {r: rows[r]["codecs"] for r in (1, 2)}
    if controller == "robust-rule":
        # Nothing measured yet: the smallest codec, which measures the link; then the
        # largest that the measured throughput fits into what is left of the 3 s.
        assert chosen[1] == f"{SMALLEST}:2", rows[1]
        assert rows[1]["predicted_upload_s_median"] == ""
        assert SMALLEST not in chosen[2] and "float32" not in chosen[2], rows[2]
    else:
        # The oracle reads the emulated link: float32 cannot fit, a smaller codec does,
        # from round 1 on.
        for r in (1, 2):
            assert SMALLEST not in chosen[r] and "float32" not in chosen[r], rows[r]
            assert float(rows[r]["predicted_upload_s_median"]) > 0.5
    predicted = float(rows[2]["predicted_upload_s_median"])
    assert 0 < predicted < 3.0, rows[2]
    assert float(rows[2]["upload_prediction_error"]) >= 0
    assert rows[2]["stragglers"] == "0"
    log = (run_dir / "logs" / "client-north-01.log").read_text()
    assert "; sent " in log and "budget" in log, log
