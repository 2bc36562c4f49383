"""The MQTT session against a real broker: large payloads, retained messages, bad hosts."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fogfl.broker import LocalBroker
from fogfl.config import MqttSettings
from fogfl.errors import BrokerError
from fogfl.mqtt import MqttSession
from fogfl.processes import free_port
from fogfl.wire import Envelope, decode, encode

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test")


def session(broker: LocalBroker, name: str, topics: list[str] | None = None) -> MqttSession:
    return MqttSession(MqttSettings(host=broker.host, port=broker.port), name, LOG).connect(
        topics or []
    )


def test_a_large_model_arrives_intact(fresh_broker: LocalBroker) -> None:
    receiver = session(fresh_broker, "receiver", ["fl/global_model"])
    sender = session(fresh_broker, "sender")
    weights = {
        "w": np.random.default_rng(0).normal(size=(3, 1000, 1000)).astype(np.float32)
    }  # 12 MB
    sender.publish(
        "fl/global_model",
        encode(Envelope(kind="global", run_id="r", round=1, sender="server", tensors=weights)),
    )
    received = receiver.receive(timeout=30)
    assert received is not None
    got = decode(received.payload, kinds={"global"}, max_bytes=10**9)
    np.testing.assert_array_equal(got.tensors["w"], weights["w"])
    sender.close()
    receiver.close()


def test_a_late_subscriber_gets_the_retained_global_model(fresh_broker: LocalBroker) -> None:
    sender = session(fresh_broker, "sender")
    sender.publish("fl/global_model", b"round 7", retain=True)
    late = session(fresh_broker, "late", ["fl/global_model"])
    received = late.receive(timeout=10)
    assert received is not None and received.retained and received.payload == b"round 7"
    sender.close()
    late.close()


def test_unreachable_broker_is_a_clear_error() -> None:
    settings = MqttSettings(host="127.0.0.1", port=free_port(), connect_timeout_s=1)
    with pytest.raises(BrokerError, match="cannot reach the MQTT broker"):
        MqttSession(settings, "nobody", LOG).connect()
