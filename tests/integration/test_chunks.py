"""Chunked transfers over a real broker: a message several times `wire.chunk_bytes` arrives
whole, is acknowledged with its chunks, reaches a late subscriber whole when retained, and
goes client → fog broker → bridge → server in a secure `fogfl up` run."""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
import yaml

from fogfl import chunks
from fogfl.broker import LocalBroker, mosquitto_binary
from fogfl.config import MqttSettings, WireSettings
from fogfl.mqtt import MqttSession, Topics
from fogfl.run_dir import METRICS_FILE, MODEL_FILE, read_metrics
from fogfl.wire import Envelope, decode, encode
from tests.reaper import run_reaped

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test")
TOPICS = Topics("fl")
WIRE = WireSettings(chunk_bytes=64 * 1024)
NEVER_S = 1.5  # how long to wait for a message that must not come


def session(broker: LocalBroker, name: str, topics: list[str], **options: bool) -> MqttSession:
    protocol = "3.1.1" if broker.kind == "embedded" else "5"
    settings = MqttSettings(host=broker.host, port=broker.port, protocol=protocol)
    return MqttSession(settings, name, LOG, wire=WIRE, **options).connect(topics)


def global_model(round_: int, values: int) -> bytes:
    tensors = {"w": np.random.default_rng(round_).normal(size=values).astype(np.float32)}
    return encode(
        Envelope(kind="global", run_id="chunks", round=round_, sender="server", tensors=tensors)
    )


def retained_indices(broker: LocalBroker, topic: str) -> list[int]:
    """The chunk indices the broker keeps retained for `topic`, seen by a plain paho client."""
    seen: list[int] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.on_message = lambda _c, _u, message: seen.append(int(message.topic.rsplit("/", 1)[1]))
    client.connect(broker.host, broker.port)
    client.subscribe(f"{topic}/chunk/+", qos=1)
    client.loop_start()
    time.sleep(NEVER_S)
    client.loop_stop()
    client.disconnect()
    return sorted(seen)


def test_a_chunked_message_is_acknowledged_with_its_chunks(mqtt_broker: LocalBroker) -> None:
    topic = TOPICS.updates("north", "north-01")
    # More chunks than Mosquitto's default of 20 unacknowledged messages in flight.
    payload = random.Random(1).randbytes(24 * WIRE.chunk_bytes + 123)

    def fog_session() -> MqttSession:
        """The fog broker's persistent session: it acknowledges what it is done with."""
        return session(
            mqtt_broker,
            "chunks-fog",
            [TOPICS.region_updates("north")],
            persistent=True,
            manual_ack=True,
        )

    fog = fog_session()
    sender = session(mqtt_broker, "chunks-client", [], persistent=False)
    try:
        sender.publish(topic, payload)
        first = fog.receive(timeout=10)
        assert first is not None and first.topic == topic and bytes(first.payload) == payload
        assert len(first.parts) == 25 and not first.retained
        fog.close()  # not acknowledged: the broker keeps every chunk for the session
        fog = fog_session()
        again = fog.receive(timeout=10)
        assert again is not None and bytes(again.payload) == payload
        fog.ack(again)
        fog.close()
        fog = fog_session()
        assert fog.receive(timeout=NEVER_S) is None
        assert fog.rejections.total == 0
    finally:
        fog.close()
        sender.close()


def test_a_late_subscriber_gets_the_retained_chunked_global_model_whole(
    mqtt_broker: LocalBroker,
) -> None:
    topic = "chunks-late/global_model"
    server = session(mqtt_broker, "chunks-server", [], persistent=False)
    bigger, smaller = global_model(1, 120_000), global_model(2, 60_000)  # 8 and 4 chunks
    try:
        server.publish(topic, bigger, retain=True)
        server.publish(topic, smaller, retain=True)
        late = session(mqtt_broker, "chunks-late-1", [topic], persistent=False)
        got = late.receive(timeout=10)
        assert got is not None and got.retained and bytes(got.payload) == smaller
        model = decode(got.payload, kinds={"global"}, max_bytes=WIRE.max_payload_bytes)
        assert model.round == 2 and model.tensors["w"].shape == (60_000,)
        assert late.receive(timeout=NEVER_S) is None and late.rejections.total == 0
        late.close()
        # The bigger model's indices 4-7 were cleared: the broker keeps 4 chunks.
        assert retained_indices(mqtt_broker, topic) == [0, 1, 2, 3]
        whole = global_model(3, 100)
        server.publish(topic, whole, retain=True)
        later = session(mqtt_broker, "chunks-late-2", [topic], persistent=False)
        got = later.receive(timeout=10)
        assert got is not None and bytes(got.payload) == whole and not got.parts
        assert later.receive(timeout=NEVER_S) is None
        later.close()
    finally:
        for index in range(8):
            server.publish(chunks.chunk_topic(topic, index), b"", retain=True)
        server.publish(topic, b"", retain=True)
        server.close()


def test_a_new_session_clears_the_retained_chunks_a_process_that_is_gone_left(
    mqtt_broker: LocalBroker,
) -> None:
    """What a new run's server does: the chunks an earlier fog broker left retained (a
    chunked partial and a stray index beyond it, as a crash mid-message leaves) go, and so
    do the chunks beside a global model that a whole one replaces; that whole one stays."""
    topics = Topics("chunks-clear")
    partial, global_topic = topics.partial("north"), topics.global_model
    earlier = session(mqtt_broker, "chunks-clear-fog", [], persistent=False)
    earlier.publish(partial, global_model(1, 80_000), retain=True)  # 5 chunks
    earlier.publish(chunks.chunk_topic(partial, 40), global_model(2, 100), retain=True)
    earlier.publish(global_topic, global_model(3, 60_000), retain=True)  # 4 chunks
    earlier.close()
    assert retained_indices(mqtt_broker, partial) == [0, 1, 2, 3, 4, 40]
    server = session(mqtt_broker, "chunks-clear-server", [], persistent=False)
    try:
        whole = global_model(4, 100)
        server.publish(global_topic, whole, retain=True)  # it knows of no chunks there
        assert retained_indices(mqtt_broker, global_topic) == [0, 1, 2, 3]
        assert server.clear_retained([partial], chunks_of=[global_topic]) == 10
        assert retained_indices(mqtt_broker, partial) == []
        assert retained_indices(mqtt_broker, global_topic) == []
        late = session(mqtt_broker, "chunks-clear-late", [partial, global_topic], persistent=False)
        got = late.receive(timeout=10)
        assert got is not None and got.topic == global_topic and bytes(got.payload) == whole
        assert late.receive(timeout=NEVER_S) is None and late.rejections.total == 0
        late.close()
        assert server.clear_retained([partial]) == 0  # nothing left: no chunk, no waiting
    finally:
        server.publish(global_topic, b"", retain=True)
        server.close()


@pytest.mark.skipif(mosquitto_binary() is None, reason="a secure fogfl up needs Mosquitto")
def test_a_model_of_many_chunks_goes_through_a_secure_hierarchy(tmp_path: Path) -> None:
    config = tmp_path / "chunks.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "wire": {"chunk_bytes": 64 * 1024},
                "task": {"name": "synthetic", "options": {"megabytes": 0.4, "tensors": 4}},
            }
        )
    )
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "fogfl", "up", "--config", str(config), "--rounds", "1"]
    argv += ["--regions", "1", "--clients-per-region", "2", "--run-dir", str(run_dir)]
    up = run_reaped(argv, timeout=180)
    assert up.returncode == 0, up.output
    assert not up.leftovers
    logs = "\n".join(path.read_text() for path in (run_dir / "logs").glob("*.log"))
    assert "rejected message" not in logs
    [_, first] = read_metrics(run_dir / METRICS_FILE)
    # Every update, partial and model was several chunks (400 kB in chunks of 64 KiB).
    assert first["clients"] == "2" and int(first["bytes_up"]) > 2 * 6 * 64 * 1024
    final = decode((run_dir / MODEL_FILE).read_bytes(), kinds={"global"}, max_bytes=10**8)
    assert final.final and sum(t.size for t in final.tensors.values()) == 100_000
