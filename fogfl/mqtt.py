"""The MQTT session every role shares: topics, connect with retry, QoS 1, a message inbox.

Messages arrive on paho's network thread and are queued; each role consumes them from its
own main loop with `receive()`, so role state is touched by one thread only and long work
(training) never stalls the keep-alive.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from fogfl.config import MqttSettings
from fogfl.errors import BrokerError

QOS = 1


@dataclass(frozen=True)
class Topics:
    """The topic names under a configurable prefix (``fl`` by default)."""

    prefix: str = "fl"

    def updates(self, region: str) -> str:
        return f"{self.prefix}/updates/{region}"

    def partial(self, region: str) -> str:
        return f"{self.prefix}/partial/{region}"

    def region_model(self, region: str) -> str:
        return f"{self.prefix}/region_model/{region}"

    @property
    def all_updates(self) -> str:
        return f"{self.prefix}/updates/+"

    @property
    def all_partials(self) -> str:
        return f"{self.prefix}/partial/+"

    @property
    def global_model(self) -> str:
        return f"{self.prefix}/global_model"

    @property
    def round_announcement(self) -> str:
        return f"{self.prefix}/round"

    @property
    def everything(self) -> str:
        return f"{self.prefix}/#"

    def region_of(self, topic: str) -> str:
        """The region a per-region topic belongs to, or "" for the shared topics."""
        parts = topic[len(self.prefix) + 1 :].split("/")
        per_region = ("updates", "partial", "region_model")
        return parts[1] if len(parts) == 2 and parts[0] in per_region else ""


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes | bytearray
    retained: bool


class _ZeroCopyClient(paho.Client):
    """paho's client, queuing outgoing packets as memoryviews.

    paho 2.2 resends `packet[pos:]` after each partial socket write; on a bytearray each
    slice copies the unsent rest, so a 200 MB publish takes seconds (quadratic). Slicing a
    memoryview copies nothing.
    """

    def _packet_queue(
        self, command: int, packet: bytes | bytearray, mid: int, qos: int, info: Any = None
    ) -> MQTTErrorCode:
        return super()._packet_queue(command, memoryview(packet), mid, qos, info)  # type: ignore[arg-type]


class MqttSession:
    """One role's connection to the broker."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.log = logger
        self.bytes_sent = 0
        self.bytes_received = 0
        self._inbox: queue.Queue[Received] = queue.Queue()
        self._subscriptions: list[str] = []
        self._subscribed = threading.Event()
        self._pending_subacks: set[int] = set()
        self._lock = threading.Lock()
        protocol = paho.MQTTv5 if settings.protocol == "5" else paho.MQTTv311
        self._client = _ZeroCopyClient(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        if settings.username is not None:
            self._client.username_pw_set(settings.username, settings.password)
        if settings.tls.enabled:
            self._client.tls_set(
                ca_certs=_path(settings.tls.ca_file),
                certfile=_path(settings.tls.cert_file),
                keyfile=_path(settings.tls.key_file),
                cert_reqs=ssl.CERT_REQUIRED,
            )
            self._client.tls_insecure_set(settings.tls.insecure)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def connect(self, subscriptions: Sequence[str] = ()) -> MqttSession:
        """Connect (retrying until `connect_timeout_s`) and wait until subscribed."""
        self._subscriptions = list(subscriptions)
        where = f"{self.settings.host}:{self.settings.port}"
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while True:
            try:
                self._client.connect(
                    self.settings.host, self.settings.port, self.settings.keepalive_s
                )
                break
            except (OSError, ssl.SSLError) as exc:
                if time.monotonic() >= deadline:
                    raise BrokerError(
                        f"cannot reach the MQTT broker at {where}: {exc}; is it running, and "
                        "are --mqtt-host/--mqtt-port right?"
                    ) from None
                time.sleep(0.5)
        self._client.loop_start()
        if not self._subscribed.wait(max(1.0, deadline - time.monotonic())):
            self.close()
            raise BrokerError(f"the MQTT broker at {where} accepted no session (refused login?)")
        self.log.debug("connected to %s, subscribed to %s", where, self._subscriptions)
        return self

    def receive(self, timeout: float | None = None) -> Received | None:
        """The next message, or None when `timeout` seconds pass without one."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait until the broker has acknowledged it."""
        info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerError(
                f"publishing {len(payload)} bytes on {topic} failed: {paho.error_string(info.rc)}"
            )
        try:
            info.wait_for_publish(self.settings.publish_timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(f"publishing on {topic} failed: {exc}") from None
        if not info.is_published():
            raise BrokerError(
                f"the broker did not acknowledge {len(payload)} bytes on {topic} within "
                f"{self.settings.publish_timeout_s:.0f} s"
            )
        self.bytes_sent += len(payload)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.log.error("broker refused the connection: %s", reason)
            return
        if not self._subscriptions:
            self._subscribed.set()
            return
        _, mid = client.subscribe([(topic, QOS) for topic in self._subscriptions])
        if mid is not None:
            with self._lock:
                self._pending_subacks.add(mid)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        with self._lock:
            self._pending_subacks.discard(mid)
            done = not self._pending_subacks
        if done:
            self._subscribed.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.log.warning("lost the broker (%s); reconnecting", reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.bytes_received += len(message.payload)
        self._inbox.put(Received(message.topic, message.payload, bool(message.retain)))


def _path(value: object) -> str | None:
    return None if value is None else str(value)
