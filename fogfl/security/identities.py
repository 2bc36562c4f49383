"""Who is who in a federation, and what each may do on the broker.

Every process logs in as its own identity: ``server``, ``monitor``, ``fog-<region>``,
``bridge-<region>`` and ``client-<client id>``. The ACL grants each exactly the topics its
role uses, so the broker itself enforces who may publish where: a client writes only its
own update topic ``<prefix>/updates/<region>/<client id>`` (which the fog broker checks
against the message's sender), only fog-<region> writes its region's partial and region
model, and nobody but the server writes the global model and the round announcements.
Every rule holds for its topic's chunk subtopics ``<topic>/chunk/+`` too (fogfl/chunks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fogfl.chunks import chunk_filter
from fogfl.config import FogflConfig
from fogfl.mqtt import Topics
from fogfl.security.mosquitto_files import Access, AclRule

RoleName = Literal["server", "monitor", "fog-broker", "fog-bridge", "client"]


@dataclass(frozen=True)
class Identity:
    """One login: its name (MQTT user name, certificate common name, signing key name),
    its role, and the region and client id it speaks for."""

    name: str
    role: RoleName
    region: str = ""
    client_id: str = ""

    @property
    def signs(self) -> bool:
        """Whether this identity holds a signing key: the server signs global models and
        round announcements, fog brokers their partials, bridges their region claim."""
        return self.role in ("server", "fog-broker", "fog-bridge")


def server_identity() -> Identity:
    return Identity("server", "server")


def monitor_identity() -> Identity:
    return Identity("monitor", "monitor")


def fog_identity(region: str) -> Identity:
    return Identity(f"fog-{region}", "fog-broker", region)


def bridge_identity(region: str) -> Identity:
    return Identity(f"bridge-{region}", "fog-bridge", region)


def client_identity(client_id: str, region: str) -> Identity:
    return Identity(f"client-{client_id}", "client", region, client_id)


def federation_identities(config: FogflConfig) -> list[Identity]:
    """Every identity the configured federation needs, server first."""
    identities = [server_identity(), monitor_identity()]
    for region in config.federation.regions:
        identities += [fog_identity(region), bridge_identity(region)]
    for region, members in config.federation.client_ids().items():
        identities += [client_identity(client_id, region) for client_id in members]
    return identities


def acl_rules(identity: Identity, topics: Topics) -> list[AclRule]:
    """The topics `identity` may read and write, and the chunks of each message there;
    nothing else is allowed."""
    rules = _message_rules(identity, topics)
    below = [(_chunk_access(identity, rule.access), chunk_filter(rule.topic)) for rule in rules]
    return rules + [AclRule(access, topic) for access, topic in below if topic is not None]


def _chunk_access(identity: Identity, access: Access) -> Access:
    """The access to the chunks of a message: the message's, except that the server reads
    the chunks it may write, to learn which ones an earlier run left retained (a new run
    clears them, `MqttSession.clear_retained`)."""
    return "readwrite" if identity.role == "server" and access == "write" else access


def _message_rules(identity: Identity, topics: Topics) -> list[AclRule]:
    region = identity.region
    if identity.role == "server":
        return [
            AclRule("write", topics.global_model),
            AclRule("write", topics.round_announcement),
            # A new run clears the regions' retained state of the last one.
            AclRule("write", topics.partial("+")),
            AclRule("write", topics.region_model("+")),
        ]
    if identity.role == "monitor":
        return [AclRule("read", topics.everything)]
    if identity.role == "fog-broker":
        return [
            AclRule("read", topics.round_announcement),
            AclRule("read", topics.global_model),
            AclRule("read", topics.region_updates(region)),
            AclRule("write", topics.partial(region)),
            # Read back too: a restarted broker clips against its last region model.
            AclRule("readwrite", topics.region_model(region)),
        ]
    if identity.role == "fog-bridge":
        return [AclRule("read", topics.partial(region))]
    return [
        AclRule("read", topics.global_model),
        AclRule("read", topics.round_announcement),
        AclRule("read", topics.region_model(region)),
        AclRule("write", topics.updates(region, identity.client_id)),
    ]
