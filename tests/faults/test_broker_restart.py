"""Mosquitto restarted mid-round: every role rides it out and the run completes as if
nothing had happened (each round with every region and every client)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fogfl.broker import LocalBroker
from fogfl.mqtt import Received, Topics
from fogfl.run_dir import METRICS_FILE, read_metrics
from tests.integration.harness import Recorder, roles
from tests.integration.test_federation import start_federation

pytestmark = pytest.mark.integration
TOPICS = Topics("fl")
ROUNDS = 3
DOWNTIME_S = 3.0


def test_a_run_survives_mosquitto_restarted_mid_round(
    restartable_broker: LocalBroker, tmp_path: Path
) -> None:
    clients = {
        "north": [("north-1", 300), ("north-2", 200)],
        "south": [("south-3", 250), ("south-4", 150)],
    }
    stopped = threading.Event()

    def stop_at_the_first_update_of_round_2(received: Received, meta: dict[str, str]) -> None:
        if not stopped.is_set() and meta.get("kind") == "update" and meta.get("round") == "2":
            restartable_broker.stop()  # SIGTERM: Mosquitto saves sessions and queued messages
            stopped.set()

    recorder = Recorder(
        restartable_broker, [TOPICS.all_updates], on_message=stop_at_the_first_update_of_round_2
    )
    # Training long enough (clients of different sizes) that the other updates of round 2
    # come while the broker is down.
    slow = {"training": {"local_epochs": 60}}
    with roles(tmp_path / "logs") as started:
        run_dir = start_federation(
            started, tmp_path, restartable_broker, clients, ROUNDS, extra=slow
        )
        assert stopped.wait(240), "round 2 never began"
        time.sleep(DOWNTIME_S)
        restartable_broker.start()  # the same port, the same persistence directory
        assert started.wait("server", 300) == 0, started.log("server")
        for name in started.children:
            assert started.wait(name, 60) == 0, f"{name} died:\n{started.log(name)}"
        logs = {name: started.log(name) for name in started.children}
    recorder.close()

    rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
    for round_ in range(1, ROUNDS + 1):
        assert rows[round_]["regions"] == "2", rows[round_]
        assert rows[round_]["failed_regions"] in ("", "0"), rows[round_]
        assert rows[round_]["clients"] == "4", rows[round_]
    # The outage really reached every role while it ran.
    for name, text in logs.items():
        assert "back on the MQTT broker" in text, f"{name} never saw the outage:\n{text}"
