"""MQTT through an emulated link to the real broker: a QoS 1 publish arrives intact, the
link counts its bytes, and after the link resets paho reconnects through it and publishes
again."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from fogfl.broker import LocalBroker
from tests.links.helpers import link_runner

pytestmark = pytest.mark.integration


def _client(name: str) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}")
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    return client


def test_a_publish_through_the_link_arrives_and_a_reset_is_ridden_out(
    tmp_path: Path, mqtt_broker: LocalBroker
) -> None:
    topic = f"links-test/{os.getpid()}"
    payload = os.urandom(300_000)
    received: list[bytes] = []
    got = threading.Event()
    connected = threading.Event()
    disconnects: list[float] = []

    subscriber = _client("sub")
    subscriber.on_message = lambda c, u, m: (received.append(m.payload), got.set())
    subscriber.connect(mqtt_broker.host, mqtt_broker.port)
    subscriber.subscribe(topic, qos=1)
    subscriber.loop_start()
    spec = {
        "upstream_host": mqtt_broker.host,
        "upstream_port": mqtt_broker.port,
        "counters_every_s": 0.1,
        # The reset comes once the first publish is through; paho must come back after it.
        "proxies": [
            {
                "name": "north-01",
                "link": {
                    "rate_mbit": 20,
                    "latency_ms": 10,
                    "jitter_ms": 2,
                    "outages": [{"at_s": 2.5, "duration_s": 0.5, "kind": "reset"}],
                },
            }
        ],
    }
    publisher = _client("pub")
    publisher.on_connect = lambda *args: connected.set()
    publisher.on_disconnect = lambda *args: (
        disconnects.append(time.monotonic()),
        connected.clear(),
    )
    try:
        with link_runner(tmp_path, spec) as runner:
            time.sleep(0.3)  # the subscription is in place
            publisher.connect("127.0.0.1", runner.ports["north-01"])
            publisher.loop_start()
            assert connected.wait(10)
            publisher.publish(topic, payload, qos=1).wait_for_publish(10)
            assert got.wait(10) and received == [payload]
            # The link resets at 2.5 s of its time: paho sees the drop and reconnects.
            deadline = time.monotonic() + 15
            while not disconnects and time.monotonic() < deadline:
                time.sleep(0.05)
            assert disconnects, "the reset never closed paho's connection"
            assert connected.wait(10), "paho did not reconnect through the link"
            got.clear()
            publisher.publish(topic, b"after the reset", qos=1).wait_for_publish(10)
            assert got.wait(10) and received[-1] == b"after the reset"
            publisher.disconnect()
            publisher.loop_stop()
            code, _ = runner.stop()
            assert code == 0
            counters = runner.counters()["north-01"]
            assert counters["connections"] >= 2 and counters["resets"] == 1
            assert counters["uplink_bytes"] > len(payload)  # the publish and MQTT's framing
            assert counters["downlink_bytes"] > 0  # CONNACK, PUBACK
    finally:
        publisher.loop_stop()
        subscriber.loop_stop()
        subscriber.disconnect()
