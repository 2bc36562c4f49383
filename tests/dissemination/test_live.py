"""One event through a real Mosquitto: what the broker sent and what the subscribers got
equal the MQTT model's count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fogfl.broker import mosquitto_binary
from fogfl.dissemination import live
from fogfl.dissemination.experiments import StudyParams
from fogfl.dissemination.live import LiveOptions, publish_packet_bytes, run_live
from fogfl.dissemination.plots import plot

pytestmark = pytest.mark.integration


@pytest.fixture
def need_mosquitto() -> None:
    if mosquitto_binary() is not None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("CI must test against Mosquitto, but no mosquitto binary is installed")
    pytest.skip("the live count needs Mosquitto's $SYS counters")


@pytest.mark.usefixtures("need_mosquitto")
def test_live_count_matches_the_model(tmp_path: Path) -> None:
    nodes = 6
    steps: list[int] = []
    result = run_live(LiveOptions(nodes=nodes, timeout_s=30, workdir=tmp_path), steps.append)
    summary = result.summary
    assert summary["broker"] == "mosquitto"
    assert summary["broker_counts_unavailable"] is None
    assert summary["broker_publish_in"] == 1
    assert summary["broker_publish_out"] == nodes - 1
    assert summary["received"] == nodes - 1
    assert summary["subscribers_reached"] == nodes - 1
    assert summary["broker_bytes_out"] == summary["predicted_wire_bytes_out"]
    assert summary["matches_model"] is True
    assert sum(steps) == nodes + 1


def test_without_mosquitto_the_subscribers_still_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "mosquitto_binary", lambda: None)
    result = run_live(LiveOptions(nodes=4, timeout_s=30, workdir=tmp_path), lambda steps: None)
    assert result.summary["broker"] == "embedded"
    assert "no $SYS counters" in result.summary["broker_counts_unavailable"]
    assert result.summary["received"] == 3
    plot(result, StudyParams(nodes=4, publishers=2, fog_brokers=(1, 2)), tmp_path / "live.png")
    assert (tmp_path / "live.png").stat().st_size > 0


def test_publish_packet_size() -> None:
    # fixed header 1 + remaining-length 1 + topic length 2 + "a/b" 3 + packet id 2 + payload 50
    assert publish_packet_bytes("a/b", 50, qos=1) == 59
    assert publish_packet_bytes("a/b", 200, qos=0) == 1 + 2 + 2 + 3 + 200
