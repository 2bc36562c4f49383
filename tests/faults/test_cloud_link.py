"""A fog site's cloud link that keeps dropping: `fogfl up` with `links.cloud` resetting the
bridges' connections to the Flower server every few seconds, mid-round too. The bridges
rejoin, the server waits for them, every round has every region, and the final model is
the one an undisturbed run ends with (the simulation's)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fogfl.broker import mosquitto_binary
from fogfl.config import load_config
from fogfl.run_dir import CONFIG_FILE, METRICS_FILE, MODEL_FILE, read_metrics
from fogfl.sim.hierarchy import simulate
from fogfl.sim.workers import ClientPool
from fogfl.wire import decode
from tests.reaper import run_reaped

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_binary() is None, reason="needs the mosquitto binary"),
]

ROUNDS = 3
CONFIG = {
    "task": {"name": "synthetic", "options": {"megabytes": 0.5}},
    "federation": {"rounds": ROUNDS, "regions": ["north", "south"], "clients_per_region": 1},
    # The clients' links make a round take about 2.2 s (0.5 MB each way at 4 Mbit/s); every
    # 3 s from 2 s on, each fog site's cloud link resets its connections and refuses new
    # ones for 0.5 s: every round's fits are cut at least once, most of them mid-round.
    "links": {
        "default": {"rate_mbit": 4},
        "cloud": {
            "rate_mbit": 40,
            "outages": [{"at_s": 2, "duration_s": 0.5, "kind": "reset", "every_s": 3}],
        },
    },
}


def test_bridges_rejoin_across_a_dropping_cloud_link_and_nothing_is_lost(tmp_path: Path) -> None:
    (tmp_path / "fogfl.yaml").write_text(yaml.safe_dump(CONFIG))
    run_dir = tmp_path / "run"
    arguments = ["--config", str(tmp_path / "fogfl.yaml"), "--run-dir", str(run_dir)]
    up = run_reaped(
        [sys.executable, "-m", "fogfl", "up", *arguments, "--broker", "mosquitto"], timeout=240
    )
    assert up.returncode == 0, up.output
    assert up.leftovers == []

    rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
    assert [rows[r]["regions"] for r in range(1, ROUNDS + 1)] == ["2"] * ROUNDS
    assert [rows[r]["failed_regions"] for r in range(1, ROUNDS + 1)] == ["0"] * ROUNDS
    links_log = (run_dir / "logs" / "links.log").read_text()
    assert "link cloud-north: reset" in links_log and "link cloud-south: reset" in links_log
    bridges = [(run_dir / "logs" / f"fog-bridge-{r}.log").read_text() for r in ("north", "south")]
    assert all("lost the Flower server" in log for log in bridges)
    server = (run_dir / "logs" / "server.log").read_text()
    assert "its bridge's connection closed during round" in server, server

    config = load_config(run_dir / CONFIG_FILE, environ={})
    with ClientPool(0) as pool:
        expected = simulate(config, pool).final_tensors()
    final = decode((run_dir / MODEL_FILE).read_bytes(), kinds={"global"}, max_bytes=10**8)
    assert final.tensors.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(final.tensors[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
