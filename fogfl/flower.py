"""Everything that touches Flower's API: the bridge's Flower client, the server's strategy
wrapper, and starting both over Flower's gRPC transport.

The roles speak to Flower only through this module, so moving to Flower's Deployment Engine
(ServerApp/ClientApp) changes this file and nothing else.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy.typing as npt

# flwr.server.start_server / flwr.client.start_client are deprecated since Flower 1.13 but
# still shipped; we use them on purpose: the Deployment Engine that replaces them has a
# ~6 s per-round floor here against ~20 ms for gRPC (see DESIGN.md). Their warnings would
# only repeat that on every start, so they are filtered, for this module's calls only.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"flwr(\.|$)")

import flwr  # noqa: E402
from flwr.common import (  # noqa: E402
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager  # noqa: E402
from flwr.server.client_proxy import ClientProxy  # noqa: E402
from flwr.server.strategy import (  # noqa: E402
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Strategy,
)

from fogfl.config import FogflConfig  # noqa: E402
from fogfl.errors import FogflError  # noqa: E402
from fogfl.processes import wait_for_port  # noqa: E402

Arrays = list[npt.NDArray[Any]]
Config = dict[str, Scalar]


class _DropDeprecationNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecat" not in record.getMessage().lower()


# Flower logs through its own console handler; route it through ours, warnings and up only
# (the roles log each round themselves).
_flower_log = logging.getLogger("flwr")
for _handler in list(_flower_log.handlers):
    _flower_log.removeHandler(_handler)
_flower_log.setLevel(logging.WARNING)
_flower_log.addFilter(_DropDeprecationNotices())


# ---------------------------------------------------------------- the bridge's side


@dataclass
class RegionResult:
    """A region's contribution to a Flower round: the partial aggregate or its evaluation."""

    arrays: Arrays
    num_examples: int
    metrics: Config


class PartialSource(Protocol):
    def region_result(self, config: Config, final: bool) -> RegionResult | str:
        """The region's result for the round `config` names, or why there is none."""


class RegionClient(flwr.client.Client):
    """A whole region, seen by Flower as one client. Never returns old weights as new:
    a region with no partial in time answers with a failure status and its reason."""

    def __init__(self, source: PartialSource) -> None:
        self.source = source

    def fit(self, ins: FitIns) -> FitRes:
        outcome = self.source.region_result(ins.config, final=False)
        if isinstance(outcome, str):
            return FitRes(
                Status(Code.FIT_NOT_IMPLEMENTED, outcome), Parameters([], "numpy.ndarray"), 0, {}
            )
        return FitRes(
            Status(Code.OK, "ok"),
            ndarrays_to_parameters(outcome.arrays),
            outcome.num_examples,
            outcome.metrics,
        )

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        outcome = self.source.region_result(ins.config, final=True)
        if isinstance(outcome, str):
            return EvaluateRes(Status(Code.EVALUATE_NOT_IMPLEMENTED, outcome), 0.0, 0, {})
        loss = float(outcome.metrics.get("eval_loss", 0.0))
        return EvaluateRes(Status(Code.OK, "ok"), loss, outcome.num_examples, outcome.metrics)


def run_region_client(server_address: str, source: PartialSource, wait_s: float) -> None:
    """Serve Flower's fit/evaluate requests until the server ends the run.

    Waits up to `wait_s` for the server to listen: bridges may start before it.
    """
    host, _, port = server_address.rpartition(":")
    if not port.isdigit():
        raise FogflError(f"Flower server address {server_address!r} must be HOST:PORT")
    if not wait_for_port(host.strip("[]") or "127.0.0.1", int(port), wait_s):
        raise FogflError(
            f"no Flower server at {server_address} after {wait_s:.0f} s; start `fogfl server` "
            "or check --server"
        )
    flwr.client.start_client(
        server_address=server_address, client=RegionClient(source), insecure=True
    )


# ---------------------------------------------------------------- the server's side


@dataclass
class RegionReport:
    """What one region returned to the server in a round."""

    num_examples: int
    metrics: Config


class RoundHooks(Protocol):
    """The server role's side of the strategy: MQTT publishing and bookkeeping."""

    def start_round(self, server_round: int, arrays: Arrays) -> Config: ...

    def finish(self, server_round: int, arrays: Arrays) -> Config: ...

    def fit_done(
        self, server_round: int, reports: list[RegionReport], failures: list[str]
    ) -> None: ...

    def evaluation_done(
        self, server_round: int, reports: list[RegionReport], failures: list[str]
    ) -> None: ...


class HierarchicalStrategy(Strategy):
    """Wraps any Flower strategy: publishes each round's global model over MQTT before Flower
    asks the regions to fit, and after the last round publishes the final model and has the
    regions' clients evaluate it."""

    def __init__(
        self,
        inner: Strategy,
        hooks: RoundHooks,
        num_rounds: int,
        regions: int,
        min_regions: int,
        region_wait_s: float,
    ) -> None:
        self.inner = inner
        self.hooks = hooks
        self.num_rounds = num_rounds
        self.regions = regions
        self.min_regions = min_regions
        self.region_wait_s = region_wait_s

    def __repr__(self) -> str:
        return f"HierarchicalStrategy({self.inner!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        config = self.hooks.start_round(server_round, parameters_to_ndarrays(parameters))
        # Give every region's bridge a chance to be there; Flower itself waits only for the
        # minimum, and would start without a region whose bridge is a moment late.
        client_manager.wait_for(self.regions, timeout=int(self.region_wait_s))
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, **config})) for proxy, ins in instructions
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, Config]:
        reports = [RegionReport(res.num_examples, res.metrics) for _, res in results]
        self.hooks.fit_done(server_round, reports, [_failure_reason(f) for f in failures])
        if not results:
            return None, {}
        return self.inner.aggregate_fit(server_round, results, failures)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if server_round != self.num_rounds:
            return []
        config = self.hooks.finish(server_round, parameters_to_ndarrays(parameters))
        regions = client_manager.sample(
            num_clients=max(self.min_regions, client_manager.num_available()),
            min_num_clients=self.min_regions,
        )
        return [(proxy, EvaluateIns(parameters, config)) for proxy in regions]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, Config]:
        reports = [RegionReport(res.num_examples, res.metrics) for _, res in results]
        self.hooks.evaluation_done(server_round, reports, [_failure_reason(f) for f in failures])
        total = sum(res.num_examples for _, res in results)
        if total == 0:
            return None, {}
        return sum(res.loss * res.num_examples for _, res in results) / total, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, Config] | None:
        return None


STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
}


def strategy_options(config: FogflConfig) -> dict[str, float]:
    """The configured strategy's own parameters, FedProx's μ taken from the training."""
    options = dict(config.server.strategy_options)
    if config.server.strategy == "fedprox":
        # The clients' proximal term is training.proximal_mu; Flower's FedProx only relays it.
        options.setdefault("proximal_mu", config.training.proximal_mu)
    return options


def make_strategy(
    name: str, initial: Arrays, min_regions: int, options: Mapping[str, float] | None = None
) -> FedAvg:
    """One of Flower's strategies over the regions, each region weighted by the weight its
    partial reports (its examples, or its clients under uniform weighting). `options` are
    the strategy's own parameters (FedAdam's eta, FedTrimmedAvg's beta, FedProx's
    proximal_mu, …)."""
    if name not in STRATEGIES:
        raise FogflError(
            f"server.strategy: unknown strategy {name!r}; use one of {sorted(STRATEGIES)}"
        )
    settings: dict[str, Any] = {
        "fraction_fit": 1.0,
        "fraction_evaluate": 0.0,
        "min_fit_clients": min_regions,
        "min_evaluate_clients": min_regions,
        "min_available_clients": min_regions,
        "initial_parameters": ndarrays_to_parameters(initial),
        "fit_metrics_aggregation_fn": _no_metrics,
        **dict(options or {}),
    }
    try:
        return STRATEGIES[name](**settings)
    except TypeError as exc:
        raise FogflError(f"server.strategy_options do not fit {name}: {exc}") from None


def serve(address: str, strategy: HierarchicalStrategy, round_timeout_s: float) -> None:
    """Run Flower's server for `strategy.num_rounds` rounds; returns when they are done."""
    flwr.server.start_server(
        server_address=address,
        config=flwr.server.ServerConfig(
            num_rounds=strategy.num_rounds, round_timeout=round_timeout_s
        ),
        strategy=strategy,
    )


def _no_metrics(_: list[tuple[int, Config]]) -> Config:
    # The server role aggregates region metrics itself (RoundHooks.fit_done).
    return {}


def _failure_reason(failure: tuple[ClientProxy, Any] | BaseException) -> str:
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
    return str(failure[1].status.message)
