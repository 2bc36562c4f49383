"""Closed-form counts and coverage of broker and CoAP delivery."""

from __future__ import annotations

import numpy as np

from fogfl.dissemination.models import (
    broker_covered,
    coap_observe_event,
    coap_request_response_event,
    fog_covered,
    fog_event,
    gini,
    mqtt_event,
    region_sizes,
)


def test_gini_of_equal_loads_is_zero() -> None:
    assert gini([7, 7, 7, 7]) == 0.0
    assert gini([0, 0, 0]) == 0.0


def test_gini_of_one_loaded_node_approaches_one() -> None:
    assert gini([0, 0, 0, 12]) == 0.75  # (n−1)/n
    assert gini([0] * 9_999 + [1]) > 0.999


def test_gini_of_a_known_distribution() -> None:
    # Loads 1, 2, 3, 4: mean absolute difference 1.25, mean 2.5 → G = 1.25 / (2·2.5) = 0.25.
    assert abs(gini([4, 1, 3, 2]) - 0.25) < 1e-12


def test_event_costs() -> None:
    assert mqtt_event(200).messages == 200
    coap = coap_request_response_event(200)
    assert (coap.messages, coap.bytes(50, 16)) == (398, 199 * 66)
    assert coap_observe_event(200).messages == 199


def test_a_failed_broker_reaches_nobody_but_the_publisher() -> None:
    assert broker_covered(False, True, 150) == 1
    assert broker_covered(True, False, 150) == 1
    assert broker_covered(True, True, 150) == 151


def test_fog_event_counts_per_tier() -> None:
    cost = fog_event(region_sizes(200, 8))
    assert (cost.edge_messages, cost.backhaul_messages, cost.busiest_broker_sends) == (200, 8, 25)
    assert fog_event(region_sizes(200, 64)).busiest_broker_sends == 63  # the cloud broker


def test_region_sizes_split_evenly() -> None:
    assert region_sizes(10, 3).tolist() == [4, 3, 3]
    assert region_sizes(200, 8).tolist() == [25] * 8


def test_fog_coverage_by_hand() -> None:
    receivers = np.array([9, 10, 10])  # region 0 holds the publisher
    up = np.ones(3, dtype=bool)
    assert fog_covered(0, True, receivers, up, up, True) == 30
    one_down = np.array([True, False, True])
    assert fog_covered(0, True, receivers, one_down, up, True) == 20
    assert fog_covered(1, True, receivers, one_down, up, True) == 1  # the publisher's own
    assert fog_covered(0, True, receivers, up, up, False) == 10  # cloud down: own region only
    assert fog_covered(0, True, receivers, up, np.array([False, True, True]), True) == 10
    assert fog_covered(0, False, receivers, up, up, True) == 1
