"""Fog bridge: presents one region to the Flower server as a single Flower client.

Reads ``fl/partial/<region>``. When Flower asks it to fit round r it waits for the region's
round-r partial aggregate and returns it with its true example count; when Flower asks it
to evaluate the final model it returns the region's aggregated evaluation. If nothing comes
in time it reports a failure to Flower, never the old weights.
"""

from __future__ import annotations

import os
import time

from fogfl import flower
from fogfl.config import FogflConfig
from fogfl.errors import WireError
from fogfl.logs import Rejections, role_logger
from fogfl.mqtt import MqttSession, Received
from fogfl.wire import Envelope, ModelSchema, decode, read_metadata

ROLE = "fog-bridge"
PartialKey = tuple[str, int, bool]


class FogBridge:
    def __init__(self, config: FogflConfig, region: str, server_address: str | None = None) -> None:
        self.config = config
        self.region = region
        self.server_address = server_address or config.bridge.server_address
        self.log = role_logger(ROLE, region)
        self.rejections = Rejections(self.log)
        self.session = MqttSession(config.mqtt, f"fogfl-bridge-{region}-{os.getpid()}", self.log)
        self.topic = self.session.topics.partial(region)
        self.waiting: dict[PartialKey, Received] = {}

    def run(self) -> int:
        """Serve Flower until the server ends the run; returns 0."""
        self.session.connect([self.topic])
        self.log.info("ready; joining the Flower server at %s", self.server_address)
        try:
            flower.run_region_client(self.server_address, self, self.config.bridge.server_wait_s)
        finally:
            self.session.close()
        self.log.info("the Flower server ended the run")
        return 0

    def region_result(self, config: flower.Config, final: bool) -> flower.RegionResult | str:
        """Wait for this region's partial for the round in `config` (PartialSource)."""
        try:
            run_id, server_round = str(config["run_id"]), int(config["round"])
            schema = ModelSchema.from_json(str(config["schema"]))
        except (KeyError, TypeError, ValueError, WireError) as exc:
            return f"region {self.region}: the server's round config is unusable: {exc}"
        what = "final evaluation" if final else f"round {server_round}"
        partial = self._wait_for((run_id, server_round, final), None if final else schema)
        if partial is None:
            waited = self.config.bridge.partial_timeout_s
            reason = f"region {self.region}: no {what} partial within {waited:.0f} s"
            self.log.error("%s; reporting a failure to Flower", reason)
            return reason
        metrics: flower.Config = {
            **partial.metrics,
            "region": self.region,
            "clients": len(partial.contributors),
            "updates_bytes": int(partial.stats.get("updates_bytes", 0)),
            "region_bytes": int(partial.stats.get("region_bytes", 0)),
            "examples": partial.num_examples,
            "partial_bytes": partial.payload_bytes,
        }
        self.log.info(
            "%s: handing Flower %d examples from %d clients",
            what,
            partial.num_examples,
            len(partial.contributors),
        )
        arrays = [] if final else schema.ordered(partial.tensors)
        # Flower weighs regions by this: the examples behind the partial, or its clients
        # under uniform weighting.
        weight = int(partial.stats.get("weight", partial.num_examples))
        return flower.RegionResult(arrays, weight, metrics)

    def _wait_for(self, key: PartialKey, schema: ModelSchema | None) -> Envelope | None:
        deadline = time.monotonic() + self.config.bridge.partial_timeout_s
        while True:
            if key in self.waiting:
                message = self.waiting.pop(key)
                try:
                    return decode(
                        message.payload,
                        kinds={"partial"},
                        max_bytes=self.config.wire.max_payload_bytes,
                        schema=schema,
                        run_id=key[0],
                    )
                except WireError as error:
                    self.rejections.record_error(error, message.topic)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            received = self.session.receive(timeout=remaining)
            if received is not None:
                self._file(received)

    def _file(self, message: Received) -> None:
        """Keep a partial until Flower asks for its round (it may arrive first)."""
        try:
            meta = read_metadata(message.payload)
            key = (meta["run_id"], int(meta["round"]), meta.get("final") == "true")
        except (WireError, KeyError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, WireError) else "malformed"
            self.rejections.record(reason, f"unreadable partial: {exc}", message.topic)
            return
        self.waiting[key] = message
        for stale in sorted(self.waiting, key=lambda k: k[1])[:-4]:
            del self.waiting[stale]


def run(config: FogflConfig, region: str, server_address: str | None) -> int:
    return FogBridge(config, region, server_address).run()
