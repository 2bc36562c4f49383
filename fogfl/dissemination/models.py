"""Closed-form models of delivery through brokers and CoAP: messages per event, who sends
them, and which nodes an event reaches when brokers or links have failed.

One event is one update published by one node (the publisher) that every other node wants.
Counts assume MQTT QoS 0 and non-confirmable CoAP; docs/dissemination.md lists what
acknowledgements would add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fogfl.dissemination.graphs import IntArray


@dataclass(frozen=True)
class EventCost:
    """What one event costs a protocol. `payload_copies` counts the messages that carry the
    update; `requests` those that do not (CoAP GETs)."""

    payload_copies: int
    requests: int = 0

    @property
    def messages(self) -> int:
        return self.payload_copies + self.requests

    def bytes(self, message_bytes: int, request_bytes: int) -> int:
        return self.payload_copies * message_bytes + self.requests * request_bytes


def mqtt_event(n_nodes: int) -> EventCost:
    """One PUBLISH into the broker and one delivery to each of the other N−1 nodes."""
    return EventCost(payload_copies=1 + (n_nodes - 1))


def coap_request_response_event(n_nodes: int) -> EventCost:
    """Each other node GETs the resource from the publisher once: a request and a response."""
    return EventCost(payload_copies=n_nodes - 1, requests=n_nodes - 1)


def coap_observe_event(n_nodes: int) -> EventCost:
    """One notification per registered observer; the registrations are paid once, not per
    event."""
    return EventCost(payload_copies=n_nodes - 1)


def gini(loads: ArrayLike) -> float:
    """Gini coefficient of non-negative loads: 0 when all are equal, (n−1)/n when one entity
    carries everything."""
    values = np.sort(np.asarray(loads, dtype=np.float64))
    total = values.sum()
    if values.size == 0 or total == 0.0:
        return 0.0
    n = values.size
    cumulative = np.cumsum(values)
    return float((n + 1 - 2.0 * cumulative.sum() / total) / n)


def broker_covered(broker_up: bool, publisher_link_up: bool, receivers_link_up: int) -> int:
    """Nodes that know the event after one broker relays it: the publisher always; the
    receivers whose link to the broker is up, if the broker and the publisher's link are up."""
    if broker_up and publisher_link_up:
        return 1 + receivers_link_up
    return 1


def region_of(nodes: IntArray, n_nodes: int, n_regions: int) -> IntArray:
    """The region (fog site) of each node: N nodes in B contiguous blocks of ⌊N/B⌋ or ⌈N/B⌉."""
    return (nodes * n_regions) // n_nodes


def region_sizes(n_nodes: int, n_regions: int) -> IntArray:
    nodes = np.arange(n_nodes, dtype=np.int64)
    return np.bincount(region_of(nodes, n_nodes, n_regions), minlength=n_regions).astype(np.int64)


@dataclass(frozen=True)
class FogEventCost:
    """One event through B fog brokers bridged to a cloud broker, by tier."""

    edge_messages: int  # node ↔ its fog broker, inside a site
    backhaul_messages: int  # fog broker ↔ cloud broker, across the WAN
    busiest_broker_sends: int


def fog_event(sizes: IntArray) -> FogEventCost:
    """A node publishes to its fog broker, which delivers to its own region and forwards one
    copy over its bridge; the cloud forwards a copy to each other fog broker, which
    delivers to its region."""
    n_nodes = int(sizes.sum())
    n_regions = int(sizes.size)
    # The publisher's fog broker sends size−1 deliveries plus one bridge copy; every other
    # fog broker sends its region's size; the cloud sends B−1.
    busiest = max(int(sizes.max()), n_regions - 1)
    return FogEventCost(
        edge_messages=1 + (n_nodes - 1),
        backhaul_messages=1 + (n_regions - 1),
        busiest_broker_sends=busiest,
    )


def fog_covered(
    publisher_region: int,
    publisher_link_up: bool,
    receivers_link_up: IntArray,
    fog_up: NDArray[np.bool_],
    bridge_up: NDArray[np.bool_],
    cloud_up: bool,
) -> int:
    """Nodes that know the event in the fog hierarchy.

    `receivers_link_up[k]`: nodes of region k other than the publisher whose link to their
    fog broker is up. A region is reached when its fog broker is up and, for regions other
    than the publisher's, when both bridges and the cloud broker are up.
    """
    if not (publisher_link_up and fog_up[publisher_region]):
        return 1
    covered = 1 + int(receivers_link_up[publisher_region])
    if bridge_up[publisher_region] and cloud_up:
        reached = fog_up & bridge_up
        reached[publisher_region] = False
        covered += int(receivers_link_up[reached].sum())
    return covered
