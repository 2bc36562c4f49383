"""The monitor shows every message, including ones it cannot decode, and never crashes."""

from __future__ import annotations

import json
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from fogfl.aggregation import RegionRound
from fogfl.broker import LocalBroker
from fogfl.codecs import Reference
from fogfl.mqtt import Received, Topics
from fogfl.roles.monitor import MonitorState, Observation, observe
from fogfl.views import monitor_view
from fogfl.wire import Envelope, ModelSchema, encode
from tests.integration.harness import publisher

pytestmark = pytest.mark.integration
TOPICS = Topics("fl")


def framed(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def test_monitor_json_lists_every_message(fresh_broker: LocalBroker, tmp_path: Path) -> None:
    monitor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fogfl",
            "monitor",
            "--json",
            "--duration",
            "300",
            "--mqtt-host",
            fresh_broker.host,
            "--mqtt-port",
            str(fresh_broker.port),
            "--insecure",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed: queue.Queue[dict[str, Any]] = queue.Queue()
    assert monitor.stdout is not None
    reader = threading.Thread(
        target=lambda out: [printed.put(json.loads(line)) for line in out], args=(monitor.stdout,)
    )
    reader.start()
    session = publisher(fresh_broker)
    try:
        # Subscribed once it shows a probe (however long a loaded machine takes to start it).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            session.publish("fl/probe", b"probe")
            try:
                if printed.get(timeout=0.5)["topic"] == "fl/probe":
                    break
            except queue.Empty:
                continue
        else:
            raise AssertionError("the monitor showed no probe in 120 s")
        update = Envelope(
            kind="update",
            run_id="r1",
            round=2,
            sender="north-01",
            region="north",
            num_examples=1440,
            tensors={"w": np.ones(10, np.float32)},
        )
        session.publish(TOPICS.updates("north", "north-01"), encode(update))
        session.publish(TOPICS.updates("north", "north-01"), b"garbage")
        session.publish(TOPICS.partial("south"), b"")  # clears a retained message: not shown
        session.publish(
            TOPICS.updates("north", "north-01"), framed(b'{"__metadata__":{"round":3}}')
        )
        session.publish(TOPICS.updates("north", "north-01"), encode(update))
        session.publish("fl/probe", b"last")  # after the four, in order: the end of the list
        lines: list[dict[str, Any]] = []
        while not lines or lines[-1]["topic"] != "fl/probe":
            lines.append(printed.get(timeout=30))
        lines = [line for line in lines if line["topic"] != "fl/probe"]
    finally:
        session.close()
        monitor.send_signal(signal.SIGINT)
        monitor.wait(timeout=30)
        reader.join(timeout=10)
    assert monitor.stderr is not None
    assert monitor.returncode == 130, monitor.stderr.read()  # Ctrl-C
    assert len(lines) == 4
    assert "too short" in lines[1]["error"]
    assert "not a map of strings" in lines[2]["error"]
    assert lines[3]["kind"] == "update" and not lines[3]["error"]  # and it carried on
    first = lines[0]
    assert (
        first["kind"],
        first["round"],
        first["sender"],
        first["region"],
        first["num_examples"],
    ) == ("update", 2, "north-01", "north", 1440)
    assert first["bytes"] > 40 and not first["error"]


def test_monitor_state_counts_updates_per_region() -> None:
    state = MonitorState()
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
    assert state.regions["north"].updates == 2
    state.add(seen("update", 2, "a"), topics)
    assert (state.regions["north"].round, state.regions["north"].updates) == (2, 1)
    assert state.undecodable == 1 and state.round == 1


def test_observe_is_total() -> None:
    hostile = {
        "metadata not a string map": framed(b'{"__metadata__":{"round":3}}'),
        "nested 100,000 deep": framed(b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "not safetensors": b"\x00" * 3,
        "huge header length": struct.pack("<Q", 2**63) + b"{}",
    }
    for name, payload in hostile.items():
        seen = observe(Received(TOPICS.updates("north", "north-01"), payload, False))
        assert seen.error, name
    odd = Envelope(kind="update", run_id="r", round=1, sender="c" * 5000, region="north")
    encoded = encode(odd)
    (length,) = struct.unpack("<Q", encoded[:8])
    # Arabic-Indic 3: a byte longer than "1", so the header is framed again with its length.
    header = encoded[8 : 8 + length].replace(b'"round":"1"', b'"round":"\xd9\xa3"')
    payload = struct.pack("<Q", len(header)) + header + encoded[8 + length :]
    seen = observe(Received(TOPICS.updates("north", "north-01"), payload, False))
    assert seen.round is None and len(seen.sender) <= 128 and not seen.error


def test_monitor_shows_the_current_run_only() -> None:
    state = MonitorState()

    def add(kind: str, run_id: str, round_: int, sender: str, topic: str, **extra: object) -> None:
        message = Envelope(kind=kind, run_id=run_id, round=round_, sender=sender, **extra)  # type: ignore[arg-type]
        state.add(observe(Received(topic, encode(message), False)), TOPICS)

    north = {"region": "north"}
    # A retained partial of the finished run arrives first, then the new run's announcement.
    add("partial", "old", 5, "fog-north", TOPICS.partial("north"), num_examples=9, **north)
    add("round", "new", 1, "server", TOPICS.round_announcement)
    add(
        "update", "new", 1, "north-01", TOPICS.updates("north", "north-01"), num_examples=3, **north
    )
    add(
        "update", "old", 5, "north-02", TOPICS.updates("north", "north-01"), num_examples=3, **north
    )
    add("partial", "old", 5, "fog-south", TOPICS.partial("south"), region="south")
    add("round", "new", 2, "server", TOPICS.round_announcement)
    add(
        "update", "new", 2, "north-02", TOPICS.updates("north", "north-01"), num_examples=3, **north
    )
    assert (state.run_id, state.round, state.other_runs, state.messages) == ("new", 2, 2, 7)
    assert sorted(state.regions) == ["north"]
    north_progress = state.regions["north"]
    assert (north_progress.round, north_progress.updates, north_progress.partials) == (2, 1, 0)
    console = Console(width=160, record=True)
    console.print(monitor_view(state, []))
    assert (
        "run new · round 2 · 7 messages · 0 undecodable · 2 of other runs" in console.export_text()
    )


def test_the_expected_count_is_what_the_federation_says() -> None:
    """Not a default of the monitor's: "?" until a fog broker's partial or a round
    announcement's participants say how many updates a region expects."""
    state = MonitorState()

    def add(message: Envelope, topic: str) -> None:
        state.add(observe(Received(topic, encode(message), False)), TOPICS)

    def shown() -> str:
        console = Console(width=160, record=True)
        console.print(monitor_view(state, []))
        return console.export_text()

    def update(round_: int, sender: str) -> Envelope:
        return Envelope(kind="update", run_id="r", round=round_, sender=sender, region="north")

    add(Envelope(kind="round", run_id="r", round=1, sender="server"), TOPICS.round_announcement)
    add(update(1, "north-01"), TOPICS.updates("north", "north-01"))
    assert state.regions["north"].expected is None
    assert "1/?" in shown()
    # The fog broker closes round 1 and says it expected 4 (its --expected, not ours).
    partial = RegionRound(
        run_id="r",
        round=1,
        phase="fit",
        schema=ModelSchema.of({}),
        deadline=0.0,
        expected=4,
        participants=None,
        uniform=False,
        edge_rounds=1,
        config={},
        model=None,
    ).partial("north", {})
    add(partial, TOPICS.partial("north"))
    add(Envelope(kind="round", run_id="r", round=2, sender="server"), TOPICS.round_announcement)
    add(update(2, "north-01"), TOPICS.updates("north", "north-01"))
    assert "1/4" in shown()
    # Under a schedule the announcement names this round's participants: they win.
    chosen = {"participants": {"north": ["north-01", "north-02"], "south": ["south-03"]}}
    add(
        Envelope(kind="round", run_id="r", round=3, sender="server", config=chosen),
        TOPICS.round_announcement,
    )
    assert (state.regions["north"].expected, state.regions["south"].expected) == (2, 1)
    add(update(3, "north-02"), TOPICS.updates("north", "north-01"))
    assert "1/2" in shown()


def test_the_monitor_shows_each_clients_transfers_and_link(tmp_path: Path) -> None:
    update = Envelope(
        kind="update",
        run_id="r1",
        round=2,
        sender="north-01",
        region="north",
        num_examples=10,
        metrics={"train_loss": 0.5, "download_seconds": 1.25},
        tensors={"w": np.ones(4, np.float32)},
        sent_at=time.time() - 2.5,
    )
    state = MonitorState()
    state.add(observe(Received(TOPICS.updates("north", "north-01"), encode(update), False)), TOPICS)
    counters = tmp_path / "counters.json"
    counters.write_text(
        json.dumps(
            {"links": {"north-01": {"state": "stalled", "rate_mbit": {"uplink": 4.0}}, "x": 3}}
        )
    )
    state.read_links(counters)
    link = state.clients["north-01"]
    assert link.round == 2 and link.region == "north"
    assert link.upload_seconds is not None and 2.4 < link.upload_seconds < 10
    assert (link.download_seconds, link.state, link.rate_mbit) == (1.25, "stalled", 4.0)
    (tmp_path / "broken.json").write_text("{not json")
    state.read_links(tmp_path / "broken.json")  # a half-written file changes nothing
    assert state.clients["north-01"].state == "stalled"
    console = Console(width=160, record=True)
    console.print(monitor_view(state, []))
    shown = console.export_text()
    assert "stalled" in shown and "4 Mbit/s" in shown and "1.25" in shown
    assert link.codec == "float32" and link.predicted_upload_seconds is None

    # An adaptive update: the codec its controller chose, and the upload it predicted.
    update.metrics |= {"upload_share": 0.3, "predicted_upload_s": 0.75, "upload_budget_s": 2.0}
    chosen = encode(
        update, "int8", reference=Reference(update.tensors, ModelSchema.of(update.tensors))
    )
    state.add(observe(Received(TOPICS.updates("north", "north-01"), chosen, False)), TOPICS)
    assert (link.codec, link.predicted_upload_seconds) == ("int8", 0.75)
    console.print(monitor_view(state, []))
    shown = console.export_text()
    assert "int8" in shown and "0.75" in shown
