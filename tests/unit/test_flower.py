"""The cloud tier in-process: regions, not connections; failures named for what they are;
rounds numbered after a checkpoint; a strategy resumed from its state computes on exactly."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import (
    Code,
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    ReconnectIns,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy
from flwr.server.superlink.fleet.grpc_bidi.grpc_bridge import GrpcBridgeClosed

from fogfl import flower
from fogfl.config import load_config
from fogfl.errors import ConfigError
from fogfl.run_dir import Checkpoint, read_checkpoint, write_checkpoint

LOG = logging.getLogger("test_flower")
SCHEMA_CONFIG = {"run_id": "t", "round": 1, "schema": "[]"}


class FakeBridge(ClientProxy):
    """A bridge's connection as Flower's servicer hands it to the client manager."""

    def __init__(
        self,
        cid: str,
        region: str | None,
        fit: Callable[[FitIns], FitRes] | None = None,
    ) -> None:
        super().__init__(cid)
        self.region = region
        self.answer = fit or (lambda ins: ok_fit(cid))
        self.notices: list[tuple[str, str]] = []
        self.disconnected = threading.Event()
        self.fits = 0

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        if flower.NOTICE_PROPERTY in ins.config:
            self.notices.append(
                (str(ins.config[flower.NOTICE_PROPERTY]), str(ins.config[flower.REASON_PROPERTY]))
            )
        if self.region is None:
            return GetPropertiesRes(Status(Code.GET_PROPERTIES_NOT_IMPLEMENTED, ""), {})
        return GetPropertiesRes(Status(Code.OK, "ok"), {flower.REGION_PROPERTY: self.region})

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        raise NotImplementedError

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        self.fits += 1
        return self.answer(ins)

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        return EvaluateRes(Status(Code.OK, "ok"), 0.5, 10, {"from": self.cid})

    def reconnect(
        self, ins: ReconnectIns, timeout: float | None, group_id: int | None
    ) -> DisconnectRes:
        self.disconnected.set()
        return DisconnectRes("RECONNECT")


def ok_fit(sender: str, value: float = 1.0, examples: int = 10) -> FitRes:
    arrays = [np.full(3, value, np.float32)]
    return FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(arrays), examples, {"from": sender})


def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.01)


def fit_ins() -> FitIns:
    return FitIns(ndarrays_to_parameters([np.zeros(3, np.float32)]), dict(SCHEMA_CONFIG))


def sender_of(answer: FitRes) -> str:
    return str(answer.metrics["from"])


# ---------------------------------------------------------------- regions, not connections


def test_a_second_bridge_for_a_region_replaces_the_first_and_the_region_counts_once() -> None:
    roster = flower.RegionRoster(["north", "south"], region_wait_s=5, log=LOG)
    first, second = FakeBridge("c1", "north"), FakeBridge("c2", "north")
    south = FakeBridge("c3", "south")
    for bridge in (first, south):
        roster.register(bridge)
    until(lambda: roster.connected() == ["north", "south"])
    roster.register(second)
    until(first.disconnected.is_set)

    assert first.notices == [
        ("superseded", "another bridge for region north took over at the server")
    ]
    regions = roster.sample(num_clients=roster.num_available())
    assert [proxy.cid for proxy in regions] == ["north", "south"]
    answers = [proxy.fit(fit_ins(), timeout=10, group_id=1) for proxy in regions]
    assert [sender_of(a) for a in answers] == ["c2", "c3"]
    assert first.fits == 0 and second.fits == 1


def test_a_region_without_a_bridge_fails_its_request_after_region_wait_s() -> None:
    roster = flower.RegionRoster(["north", "south"], region_wait_s=0.3, log=LOG)
    roster.register(FakeBridge("c1", "north"))
    until(lambda: roster.connected() == ["north"])
    roster.open_round(first=False)
    outcome: list[BaseException | FitRes] = []

    def ask_south() -> None:
        try:
            outcome.append(roster.proxies["south"].fit(fit_ins(), timeout=86_400, group_id=1))
        except BaseException as error:
            outcome.append(error)

    asking = threading.Thread(target=ask_south, daemon=True)
    asking.start()
    asking.join(10)  # "never" would be Flower's 86,400 s
    assert not asking.is_alive(), "the missing region's request is still waiting"
    [failure] = outcome
    assert isinstance(failure, flower.RegionFailed)
    assert failure.kind == "missing" and failure.region == "south"
    assert "no bridge connected within 0.3 s (server.region_wait_s)" in str(failure)
    assert sender_of(roster.proxies["north"].fit(fit_ins(), timeout=10, group_id=1)) == "c1"


def test_a_bridge_that_drops_mid_round_and_rejoins_still_answers_that_round() -> None:
    roster = flower.RegionRoster(["north"], region_wait_s=5, log=LOG)
    rejoined = FakeBridge("c2", "north")

    def drop(ins: FitIns) -> FitRes:
        roster.unregister(dropped)  # what Flower's servicer does when the stream ends
        threading.Timer(0.2, roster.register, args=(rejoined,)).start()
        raise GrpcBridgeClosed()

    dropped = FakeBridge("c1", "north", fit=drop)
    roster.register(dropped)
    until(lambda: roster.connected() == ["north"])

    answer = roster.proxies["north"].fit(fit_ins(), timeout=30, group_id=4)

    assert sender_of(answer) == "c2"
    assert dropped.fits == 1 and rejoined.fits == 1


def test_a_bridge_for_an_unknown_region_or_a_plain_flower_client_is_refused() -> None:
    roster = flower.RegionRoster(["north"], region_wait_s=5, log=LOG)
    stranger, plain = FakeBridge("c1", "east"), FakeBridge("c2", None)
    roster.register(stranger)
    roster.register(plain)
    until(lambda: stranger.disconnected.is_set() and plain.disconnected.is_set())
    assert roster.connected() == []
    assert stranger.notices == [
        ("refused", "region 'east' is not one of this run's regions ['north']")
    ]
    assert plain.notices[0][0] == "refused" and "fogfl bridge" in plain.notices[0][1]


class Source:
    region = "north"

    def __init__(self, outcome: flower.RegionResult | flower.RegionFailure) -> None:
        self.outcome = outcome

    def region_result(
        self, config: flower.Config, final: bool, server_gone: Callable[[], bool] = lambda: False
    ) -> flower.RegionResult | flower.RegionFailure:
        return self.outcome

    def run_ended(self) -> None:
        pass


def test_a_bridge_timeout_reaches_the_server_as_a_timeout_not_as_not_implemented() -> None:
    reason = "region north: no round 3 partial within 180 s"
    client = flower.RegionClient(Source(flower.RegionFailure("timeout", reason)))
    on_the_wire = client.fit(fit_ins())
    assert on_the_wire.status.code != Code.OK and on_the_wire.num_examples == 0
    assert on_the_wire.parameters.tensors == []

    roster = flower.RegionRoster(["north"], region_wait_s=5, log=LOG)
    roster.register(FakeBridge("c1", "north", fit=lambda ins: on_the_wire))
    until(lambda: roster.connected() == ["north"])
    with pytest.raises(flower.RegionFailed) as failure:
        roster.proxies["north"].fit(fit_ins(), timeout=10, group_id=3)
    assert failure.value.kind == "timeout" and str(failure.value) == reason
    assert "NOT_IMPLEMENTED" not in str(failure.value)


def test_a_bridge_tells_its_region_and_keeps_what_the_server_told_it() -> None:
    client = flower.RegionClient(Source(flower.RegionFailure("timeout", "x")))
    asked = client.get_properties(GetPropertiesIns({}))
    assert asked.properties == {flower.REGION_PROPERTY: "north"} and client.notice is None
    client.get_properties(
        GetPropertiesIns({flower.NOTICE_PROPERTY: "superseded", flower.REASON_PROPERTY: "why"})
    )
    assert client.notice == ("superseded", "why")


# ---------------------------------------------------------------- the strategy


class Hooks:
    def __init__(self) -> None:
        self.started: list[int] = []
        self.finished: list[int] = []
        self.fits: list[tuple[int, list[str], list[str]]] = []
        self.done: list[tuple[int, list[np.ndarray], flower.StrategyState]] = []
        self.evaluations: list[int] = []

    def start_round(self, server_round: int, arrays: flower.Arrays) -> flower.Config:
        self.started.append(server_round)
        return {"round": server_round}

    def finish(self, server_round: int, arrays: flower.Arrays) -> flower.Config:
        self.finished.append(server_round)
        return {"round": server_round}

    def fit_done(
        self, server_round: int, reports: list[flower.RegionReport], failures: list[str]
    ) -> None:
        self.fits.append((server_round, [r.region for r in reports], failures))

    def round_done(
        self, server_round: int, arrays: flower.Arrays, state: flower.StrategyState
    ) -> None:
        self.done.append((server_round, arrays, state))

    def evaluation_done(
        self, server_round: int, reports: list[flower.RegionReport], failures: list[str]
    ) -> None:
        self.evaluations.append(server_round)


class Region(ClientProxy):
    """Stands for a RegionProxy in results: only its cid (the region) matters."""

    def get_properties(self, *args: Any) -> GetPropertiesRes:
        raise NotImplementedError

    def get_parameters(self, *args: Any) -> GetParametersRes:
        raise NotImplementedError

    def fit(self, *args: Any) -> FitRes:
        raise NotImplementedError

    def evaluate(self, *args: Any) -> EvaluateRes:
        raise NotImplementedError

    def reconnect(self, *args: Any) -> DisconnectRes:
        raise NotImplementedError


def region_result(region: str, value: float, examples: int) -> tuple[ClientProxy, FitRes]:
    return Region(region), ok_fit(region, value, examples)


def strategy(
    name: str = "fedavg", rounds: int = 5, min_regions: int = 2, completed: int = 0
) -> tuple[flower.HierarchicalStrategy, Hooks]:
    hooks = Hooks()
    options = {"eta": 0.1} if name == "fedadam" else {}
    inner = flower.make_strategy(name, [np.zeros(3, np.float32)], min_regions, options)
    return flower.HierarchicalStrategy(inner, hooks, rounds, min_regions, completed), hooks


def test_a_round_short_of_min_regions_fails_the_run_after_recording_it() -> None:
    cloud, hooks = strategy(min_regions=2)
    missing = flower.RegionFailed("south", "missing", "region south: no bridge connected")
    with pytest.raises(flower.RoundFailed, match=r"round 1: 1 of the 2 regions"):
        cloud.aggregate_fit(1, [region_result("north", 1.0, 10)], [missing])
    assert hooks.fits == [(1, ["north"], ["region south: no bridge connected"])]
    assert hooks.done == []  # no checkpoint of a failed round


def test_regions_reach_the_strategy_in_one_order_whatever_order_they_answered() -> None:
    cloud, hooks = strategy(min_regions=2)
    north, south = region_result("north", 0.1, 7), region_result("south", 0.7, 3)
    cloud.aggregate_fit(1, [south, north], [])
    twin, twin_hooks = strategy(min_regions=2)
    twin.aggregate_fit(1, [north, south], [])
    assert hooks.fits[0][1] == ["north", "south"]
    assert np.array_equal(hooks.done[0][1][0], twin_hooks.done[0][1][0])
    np.testing.assert_allclose(hooks.done[0][1][0], (0.1 * 7 + 0.7 * 3) / 10, rtol=1e-6)


def test_a_resumed_strategy_numbers_its_rounds_after_the_checkpoint() -> None:
    cloud, hooks = strategy(rounds=5, completed=2)
    assert cloud.flower_rounds == 3
    parameters = ndarrays_to_parameters([np.zeros(3, np.float32)])
    roster = flower.RegionRoster(["north", "south"], region_wait_s=0, log=LOG)
    evaluated = []
    for flower_round in (1, 2, 3):
        instructions = cloud.configure_fit(flower_round, parameters, roster)
        assert [proxy.cid for proxy, _ in instructions] == ["north", "south"]
        evaluated.append(len(cloud.configure_evaluate(flower_round, parameters, roster)))
    assert hooks.started == [3, 4, 5] and hooks.finished == [5]
    assert evaluated == [0, 0, 2]  # the final evaluation comes after round 5, not Flower's 3


def test_a_run_resumed_with_only_its_final_evaluation_left_just_evaluates() -> None:
    cloud, hooks = strategy(rounds=5, completed=5)
    parameters = ndarrays_to_parameters([np.zeros(3, np.float32)])
    roster = flower.RegionRoster(["north", "south"], region_wait_s=0, log=LOG)
    assert cloud.flower_rounds == 1
    assert cloud.configure_fit(1, parameters, roster) == []
    evaluations = cloud.configure_evaluate(1, parameters, roster)
    assert [proxy.cid for proxy, _ in evaluations] == ["north", "south"]
    assert hooks.started == [] and hooks.finished == [5]


def rounds_of_fedadam(
    cloud: flower.HierarchicalStrategy, first: int, last: int
) -> Parameters | None:
    parameters = None
    for server_round in range(first, last + 1):
        # Each round's regional means differ, so FedAdam's moments matter.
        results = [
            region_result("north", 0.3 * server_round, 5),
            region_result("south", -0.1 * server_round, 9),
        ]
        parameters, _ = cloud.aggregate_fit(server_round - cloud.completed, results, [])
    return parameters


def test_fedadam_resumed_from_its_checkpoint_ends_exactly_where_it_would_have(
    tmp_path: Path,
) -> None:
    straight, _ = strategy("fedadam", rounds=4)
    uninterrupted = rounds_of_fedadam(straight, 1, 4)

    before, hooks = strategy("fedadam", rounds=4)
    rounds_of_fedadam(before, 1, 2)
    round_, arrays, state = hooks.done[-1]
    path = tmp_path / "checkpoint.safetensors"
    write_checkpoint(
        path,
        Checkpoint("t", round_, 4, "fedadam", arrays, state.tensors, state.values, [], False),
    )
    saved = read_checkpoint(path)
    assert saved is not None and saved.round == 2
    inner = flower.make_strategy("fedadam", saved.global_model, 2, {"eta": 0.1})
    flower.restore_strategy_state(
        inner, flower.StrategyState(saved.strategy_tensors, saved.strategy_values)
    )
    after = flower.HierarchicalStrategy(inner, Hooks(), 4, 2, completed=saved.round)
    resumed = rounds_of_fedadam(after, 3, 4)

    assert uninterrupted is not None and resumed is not None
    for expected, actual in zip(
        parameters_to_ndarrays(uninterrupted), parameters_to_ndarrays(resumed), strict=True
    ):
        assert expected.dtype == actual.dtype
        assert np.array_equal(expected, actual)
    # Without its moments FedAdam would take another step: the state is what makes it exact.
    forgetful = flower.HierarchicalStrategy(
        flower.make_strategy("fedadam", saved.global_model, 2, {"eta": 0.1}), Hooks(), 4, 2, 2
    )
    other = rounds_of_fedadam(forgetful, 3, 4)
    assert other is not None
    assert not np.array_equal(
        parameters_to_ndarrays(other)[0], parameters_to_ndarrays(uninterrupted)[0]
    )


def test_a_fresh_run_keeps_the_strategy_as_it_starts() -> None:
    fresh = flower.make_strategy("fedadam", [np.ones(3, np.float32)], 2, {"eta": 0.1})
    flower.restore_strategy_state(fresh, flower.StrategyState())
    cloud = flower.HierarchicalStrategy(fresh, Hooks(), 2, 2)
    assert rounds_of_fedadam(cloud, 1, 2) is not None


def test_a_round_timeout_that_does_not_exceed_the_bridge_timeout_is_refused() -> None:
    # Otherwise Flower drops the stream before the bridge can report its missing partial.
    with pytest.raises(ConfigError, match=r"server.round_timeout_s \(180 s\) must exceed"):
        load_config(
            None, {"server.round_timeout_s": 180, "bridge.partial_timeout_s": 180}, environ={}
        )
    assert load_config(None, {"server.round_timeout_s": 181}, environ={})
