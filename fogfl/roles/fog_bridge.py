"""Fog bridge: presents one region to the Flower server as a single Flower client.

Reads ``fl/partial/<region>``. When Flower asks it to fit round r it waits for the region's
round-r partial aggregate and returns it with its true example count; when Flower asks it
to evaluate the final model it returns the region's aggregated evaluation. If nothing comes
in time it reports a failure to Flower, never the old weights.

It tells the server which region it speaks for. When the server goes away mid-run it waits
for it to come back (`bridge.server_wait_s`) and rejoins, so a resumed server finds it; it
keeps the partials it handed over, so a round asked again is answered again. After the run
it exits, or with `serve` waits for the next run's server. A bridge that another bridge
for its region replaced at the server stops.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from fogfl import flower
from fogfl.config import FogflConfig
from fogfl.errors import WireError
from fogfl.logs import Rejections, role_logger
from fogfl.mqtt import MqttSession, Received
from fogfl.security.identities import bridge_identity
from fogfl.security.role import role_security
from fogfl.transfers import (
    CLOUD_UPLOAD_METRIC,
    TRANSFERS_METRIC,
    RegionTransfers,
    transfer_seconds,
)
from fogfl.wire import Envelope, ModelSchema, decode, metadata_count, read_metadata

ROLE = "fog-bridge"
PartialKey = tuple[str, int, bool]


# Partials kept after they were handed over, for a round the server asks again.
KEPT_PARTIALS = 4


class FogBridge:
    def __init__(
        self,
        config: FogflConfig,
        region: str,
        server_address: str | None = None,
        serve: bool = False,
    ) -> None:
        self.config = config
        self.region = region
        self.server_address = server_address or config.bridge.server_address
        self.serve = serve
        self.log = role_logger(ROLE, region)
        self.rejections = Rejections(self.log)
        # Neither a stable id nor a persistent session: two bridges for one region (a mistake
        # the server resolves) must not take one MQTT session from each other in turn, and a
        # restarted bridge needs no queue: the region's newest partial is retained.
        self.security = role_security(config, bridge_identity(region), self.log)
        self.session = MqttSession(
            self.security.mqtt,
            f"fogfl-bridge-{region}-{os.getpid()}",
            self.log,
            persistent=False,
            wire=config.wire,
            rejections=self.rejections,
        )
        self.topic = self.session.topics.partial(region)
        self.waiting: dict[PartialKey, Received] = {}
        # Seconds each partial took from its fog broker (None for a retained copy).
        self.cloud_upload_s: dict[PartialKey, float | None] = {}

    def run(self) -> int:
        """Serve Flower until the server ends the run (with `serve`, run after run);
        returns 0, also when another bridge for the region took over."""
        self.session.connect([self.topic])
        self.log.info(
            "ready; joining the Flower server at %s%s",
            self.server_address,
            ", run after run" if self.serve else "",
        )
        try:
            departure = flower.run_region_client(
                self.server_address,
                self,
                self.config.bridge.server_wait_s,
                self.serve,
                self.log,
                flower.BridgeCredentials.of(self.security),
            )
        finally:
            self.session.close()
        if departure == "ended":
            self.log.info("the Flower server ended the run")
        return 0

    def region_result(
        self, config: flower.Config, final: bool, server_gone: Callable[[], bool] = lambda: False
    ) -> flower.RegionResult | flower.RegionFailure:
        """Wait for this region's partial for the round in `config` (PartialSource)."""
        try:
            run_id, server_round = str(config["run_id"]), int(config["round"])
            schema = ModelSchema.from_json(str(config["schema"]))
        except (KeyError, TypeError, ValueError, WireError) as exc:
            reason = f"region {self.region}: the server's round config is unusable: {exc}"
            self.log.error("%s; reporting a failure to Flower", reason)
            return flower.RegionFailure("bad-config", reason)
        what = "final evaluation" if final else f"round {server_round}"
        partial = self._wait_for(
            (run_id, server_round, final), None if final else schema, server_gone
        )
        if partial is None and server_gone():
            reason = f"region {self.region}: the Flower server went away during {what}"
            self.log.warning("%s; rejoining it when it is back", reason)
            return flower.RegionFailure("disconnected", reason)
        if partial is None:
            waited = self.config.bridge.partial_timeout_s
            reason = f"region {self.region}: no {what} partial within {waited:.0f} s"
            self.log.error("%s; reporting a failure to Flower", reason)
            return flower.RegionFailure("timeout", reason)
        metrics: flower.Config = {
            **partial.metrics,
            "region": self.region,
            "clients": len(partial.contributors),
            "updates_bytes": int(partial.stats.get("updates_bytes", 0)),
            "region_bytes": int(partial.stats.get("region_bytes", 0)),
            "examples": partial.num_examples,
            "partial_bytes": partial.payload_bytes,
            # A Flower metrics value is a scalar: the region's transfers go as JSON.
            TRANSFERS_METRIC: RegionTransfers.of_stats(partial.stats).to_json(),
        }
        cloud_upload_s = self.cloud_upload_s.get((run_id, server_round, final))
        if cloud_upload_s is not None:
            metrics[CLOUD_UPLOAD_METRIC] = cloud_upload_s
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

    def run_ended(self) -> None:
        """The server ended its run: nothing kept belongs to the next one (PartialSource)."""
        self.waiting.clear()

    def _wait_for(
        self, key: PartialKey, schema: ModelSchema | None, server_gone: Callable[[], bool]
    ) -> Envelope | None:
        deadline = time.monotonic() + self.config.bridge.partial_timeout_s
        while True:
            message = self.waiting.pop(key, None)
            if message is not None:
                with self.rejections.guard(message.topic):
                    partial = decode(
                        message.payload,
                        kinds={"partial"},
                        max_bytes=self.config.wire.max_payload_bytes,
                        schema=schema,
                        run_id=key[0],
                        # Its signature was checked when it was filed (`_file`).
                    )
                    self.waiting[key] = message  # kept, for a round asked again
                    return partial
            remaining = deadline - time.monotonic()
            if remaining <= 0 or server_gone():
                return None
            received = self.session.receive(timeout=min(remaining, 1.0))
            if received is not None:
                self._file(received)

    def _file(self, message: Received) -> None:
        """Keep a partial until Flower asks for its round (it may arrive first), and after,
        in case a restarted server asks for the round again."""
        with self.rejections.guard(message.topic):
            meta = read_metadata(message.payload)
            if "run_id" not in meta:
                raise WireError("malformed", "unreadable partial: it names no run")
            # Bound to this topic before the signature is checked: the trust policy takes
            # the signer from the message's own region, and another region's genuine
            # partial (or a genuine message of another kind) copied onto this topic, by
            # anyone who may write it, must not displace the region's own.
            kind, region = meta.get("kind", ""), meta.get("region", "")
            if kind != "partial":
                raise WireError("wrong-kind", f"a {kind[:40]!r} message on {message.topic}")
            if region != self.region:
                raise WireError(
                    "wrong-region",
                    f"partial of region {region[:40]!r} on region {self.region}'s topic",
                )
            if self.security.verify is not None:
                # Before it is filed: a forged partial must not displace the region's own.
                self.security.verify(message.payload, meta)
            key = (meta["run_id"], metadata_count(meta, "round"), meta.get("final") == "true")
            self.waiting[key] = message
            if key not in self.cloud_upload_s or not message.retained:
                self.cloud_upload_s[key] = (
                    None
                    if message.retained
                    else transfer_seconds(meta.get("sent_at", ""), message.received_at)
                )
            for stale in sorted(self.waiting, key=lambda k: k[1])[:-KEPT_PARTIALS]:
                del self.waiting[stale]
                self.cloud_upload_s.pop(stale, None)


def run(config: FogflConfig, region: str, server_address: str | None, serve: bool = False) -> int:
    return FogBridge(config, region, server_address, serve).run()
