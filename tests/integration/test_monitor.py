"""The monitor shows every message, including ones it cannot decode, and never crashes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fogfl.broker import LocalBroker
from fogfl.mqtt import Topics
from fogfl.roles.monitor import MonitorState, Observation
from fogfl.wire import Envelope, encode
from tests.integration.harness import publisher

pytestmark = pytest.mark.integration
TOPICS = Topics("fl")


def test_monitor_json_lists_every_message(fresh_broker: LocalBroker, tmp_path: Path) -> None:
    monitor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fogfl",
            "monitor",
            "--json",
            "--duration",
            "6",
            "--mqtt-host",
            fresh_broker.host,
            "--mqtt-port",
            str(fresh_broker.port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)  # let it subscribe
    session = publisher(fresh_broker)
    update = Envelope(
        kind="update",
        run_id="r1",
        round=2,
        sender="north-01",
        region="north",
        num_examples=1440,
        tensors={"w": np.ones(10, np.float32)},
    )
    session.publish(TOPICS.updates("north"), encode(update))
    session.publish(TOPICS.updates("north"), b"garbage")
    session.publish(TOPICS.partial("south"), b"")
    session.close()
    out, err = monitor.communicate(timeout=30)
    assert monitor.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert (
        first["kind"],
        first["round"],
        first["sender"],
        first["region"],
        first["num_examples"],
    ) == ("update", 2, "north-01", "north", 1440)
    assert first["bytes"] > 40 and not first["error"]
    assert lines[1]["error"] and lines[2]["error"]


def test_monitor_state_counts_updates_per_region() -> None:
    state = MonitorState(expected_per_region=3)
    topics = Topics("fl")

    def seen(kind: str, round_: int, sender: str, region: str = "north") -> Observation:
        return Observation(
            time=0,
            topic=f"fl/updates/{region}",
            bytes=10,
            kind=kind,
            run_id="r",
            round=round_,
            sender=sender,
            region=region,
        )

    state.add(
        Observation(
            time=0, topic="fl/round", bytes=10, kind="round", run_id="r", round=1, sender="server"
        ),
        topics,
    )
    for sender in ("a", "b", "b"):
        state.add(seen("update", 1, sender), topics)
    state.add(Observation(time=0, topic="fl/updates/north", bytes=3, error="malformed"), topics)
    assert state.regions["north"].updates == 2 and state.regions["north"].expected == 3
    state.add(seen("update", 2, "a"), topics)
    assert (state.regions["north"].round, state.regions["north"].updates) == (2, 1)
    assert state.undecodable == 1 and state.round == 1
