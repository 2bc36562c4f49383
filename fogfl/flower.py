"""Everything that touches Flower's API: the bridge's Flower client, the server's strategy
wrapper and region-aware client manager, and starting both over Flower's gRPC transport.

The roles speak to Flower only through this module, so moving to Flower's Deployment Engine
(ServerApp/ClientApp) changes this file and nothing else.

Regions, not connections: a bridge says which region it speaks for when the server asks
(`get_properties`); the server keeps one `RegionProxy` per configured region and routes
each round's request to whichever connection serves that region now. A second bridge for a
region replaces the first (which is told why and leaves); a region without a bridge fails
its round after `server.region_wait_s`; a bridge that drops mid-round and rejoins in time
still answers that round.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import secrets
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol, TypeVar, get_args

import numpy as np
import numpy.typing as npt

# flwr.server.start_server / flwr.client.start_client are deprecated since Flower 1.13 but
# still shipped; we use them on purpose: the Deployment Engine that replaces them has a
# ~6 s per-round floor here against ~20 ms for gRPC (see DESIGN.md). Their warnings would
# only repeat that on every start, so they are filtered, for this module's calls only.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"flwr(\.|$)")

import flwr  # noqa: E402
import grpc  # type: ignore[import-untyped]  # noqa: E402
from flwr.common import (  # noqa: E402
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
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager  # noqa: E402
from flwr.server.client_proxy import ClientProxy  # noqa: E402
from flwr.server.criterion import Criterion  # noqa: E402
from flwr.server.strategy import (  # noqa: E402
    FedAdam,
    FedAvg,
    FedMedian,
    FedOpt,
    FedProx,
    FedTrimmedAvg,
    Strategy,
)
from flwr.server.superlink.fleet.grpc_bidi.grpc_bridge import GrpcBridgeClosed  # noqa: E402

from fogfl.config import BUILTIN_STRATEGIES, FogflConfig, StrategyOption  # noqa: E402
from fogfl.errors import ConfigError, FogflError  # noqa: E402
from fogfl.logs import WaitProgress  # noqa: E402
from fogfl.plugins import import_object, is_import_path  # noqa: E402
from fogfl.processes import wait_for_port  # noqa: E402
from fogfl.security.identities import bridge_identity  # noqa: E402
from fogfl.security.role import RoleSecurity  # noqa: E402
from fogfl.security.signing import Signer, TrustPolicy  # noqa: E402

Arrays = list[npt.NDArray[Any]]
Config = dict[str, Scalar]
Log = logging.Logger | logging.LoggerAdapter[Any]
_Answer = TypeVar("_Answer")


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

# What a bridge says about itself, and what the server may tell it, in get_properties.
REGION_PROPERTY = "fogfl_region"
NOTICE_PROPERTY = "fogfl_notice"
REASON_PROPERTY = "fogfl_reason"
# Region authentication: the server sends a fresh challenge, the bridge signs its claim.
CHALLENGE_PROPERTY = "fogfl_challenge"
PROOF_PROPERTY = "fogfl_proof"
Notice = Literal["superseded", "refused"]

# Flower 1.42's legacy status codes are OK and four *_NOT_IMPLEMENTED; serde turns any other
# value into OK. A region that failed must reach Flower as a non-OK status to land among the
# round's failures, so the failure rides on the method's own code with the reason in the
# message; the server's RegionProxy turns it back into a RegionFailed with that reason
# before Flower or the strategy sees it, so nothing reports "not implemented".
REGION_FIT_FAILED = Code.FIT_NOT_IMPLEMENTED
REGION_EVALUATE_FAILED = Code.EVALUATE_NOT_IMPLEMENTED
FailureKind = Literal["timeout", "bad-config", "missing", "disconnected", "deadline", "error"]
_FAILURE_KINDS: tuple[str, ...] = get_args(FailureKind)


class RegionFailed(FogflError):
    """A region gave no usable answer in a round: why (`kind`) and the full reason."""

    def __init__(self, region: str, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.region = region
        self.kind = kind

    def __reduce__(self) -> tuple[type[RegionFailed], tuple[str, str, str]]:
        return (type(self), (self.region, self.kind, str(self)))


class RoundFailed(FogflError):
    """A round ended with fewer regions than `federation.min_regions`: the run stops."""


# ---------------------------------------------------------------- the bridge's side


@dataclass
class RegionResult:
    """A region's contribution to a Flower round: the partial aggregate or its evaluation."""

    arrays: Arrays
    num_examples: int
    metrics: Config


@dataclass
class RegionFailure:
    """Why a region has no result for a round."""

    kind: FailureKind
    reason: str


class PartialSource(Protocol):
    region: str

    def region_result(
        self, config: Config, final: bool, server_gone: Callable[[], bool] = lambda: False
    ) -> RegionResult | RegionFailure:
        """The region's result for the round `config` names, or why there is none; gives up
        early once `server_gone()` says the server that asked is no longer there."""

    def run_ended(self) -> None:
        """The server ended its run (not: went away); what was kept for it can go."""


def region_claim(region: str, challenge: str) -> str:
    """What a bridge signs to prove to the server that it speaks for `region`."""
    return f"fogfl-region-v1\n{region}\n{challenge}"


@dataclass(frozen=True)
class BridgeCredentials:
    """What a bridge shows the server: the signing key behind its region claim, and the
    CA the server's TLS certificate must chain to (None: plaintext gRPC)."""

    signer: Signer | None = None
    root_certificates: bytes | None = None

    @classmethod
    def of(cls, security: RoleSecurity) -> BridgeCredentials:
        if security.credentials is None:
            return cls()
        root = security.credentials.ca_bytes() if security.tls else None
        return cls(security.signer, root)


@dataclass(frozen=True)
class ServerCredentials:
    """What the server asks of bridges (a region claim signed by `bridge-<region>`'s key)
    and presents to them (CA, certificate, key for TLS; None: plaintext gRPC)."""

    trust: TrustPolicy | None = None
    certificates: tuple[bytes, bytes, bytes] | None = None

    @classmethod
    def of(cls, security: RoleSecurity) -> ServerCredentials:
        if security.credentials is None:
            return cls()
        certificates = security.credentials.flower_certificates() if security.tls else None
        return cls(security.verify, certificates)


class ServerWatch:
    """Notices the Flower server going away while a fit waits for its partial: Flower's
    client reads its stream only between requests, so a server killed mid-round would go
    unnoticed until the fit returned. A channel of its own to the same address sees it."""

    def __init__(self, address: str, root_certificates: bytes | None = None) -> None:
        # No idle timeout: the watch's channel carries no calls and must stay connected.
        options = [("grpc.client_idle_timeout_ms", 2**31 - 1)]
        if root_certificates is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._ready = False
        self.losses = 0
        self._channel.subscribe(self._on_state, try_to_connect=True)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            self._ready = True
        elif self._ready:
            self._ready = False
            self.losses += 1

    def lost_since(self, losses: int) -> Callable[[], bool]:
        return lambda: self.losses != losses

    def close(self) -> None:
        self._channel.close()


class RegionClient(flwr.client.Client):
    """A whole region, seen by Flower as one client. Never returns old weights as new:
    a region with no partial in time answers with a failure status and its reason. Says
    which region it is when asked, and keeps what the server tells it (`notice`)."""

    def __init__(
        self,
        source: PartialSource,
        watch: ServerWatch | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.source = source
        self.watch = watch
        self.signer = signer
        self.notice: tuple[Notice, str] | None = None

    def _server_gone(self) -> Callable[[], bool]:
        return (lambda: False) if self.watch is None else self.watch.lost_since(self.watch.losses)

    def get_properties(self, ins: GetPropertiesIns) -> GetPropertiesRes:
        notice = ins.config.get(NOTICE_PROPERTY)
        if notice in ("superseded", "refused"):
            self.notice = (notice, str(ins.config.get(REASON_PROPERTY, "")))  # type: ignore[assignment]
        properties: Config = {REGION_PROPERTY: self.source.region}
        challenge = ins.config.get(CHALLENGE_PROPERTY)
        if isinstance(challenge, str) and self.signer is not None:
            claim = region_claim(self.source.region, challenge)
            properties[PROOF_PROPERTY] = self.signer.sign_text(claim)
        return GetPropertiesRes(Status(Code.OK, "ok"), properties)

    def fit(self, ins: FitIns) -> FitRes:
        outcome = self.source.region_result(ins.config, False, self._server_gone())
        if isinstance(outcome, RegionFailure):
            return FitRes(
                Status(REGION_FIT_FAILED, _failure_message(outcome)),
                Parameters([], "numpy.ndarray"),
                0,
                {},
            )
        return FitRes(
            Status(Code.OK, "ok"),
            ndarrays_to_parameters(outcome.arrays),
            outcome.num_examples,
            outcome.metrics,
        )

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        outcome = self.source.region_result(ins.config, True, self._server_gone())
        if isinstance(outcome, RegionFailure):
            return EvaluateRes(
                Status(REGION_EVALUATE_FAILED, _failure_message(outcome)), 0.0, 0, {}
            )
        loss = float(outcome.metrics.get("eval_loss", 0.0))
        return EvaluateRes(Status(Code.OK, "ok"), loss, outcome.num_examples, outcome.metrics)


Departure = Literal["ended", "superseded"]


def run_region_client(
    server_address: str,
    source: PartialSource,
    wait_s: float,
    serve: bool,
    log: Log,
    credentials: BridgeCredentials | None = None,
) -> Departure:
    """Serve Flower's requests for `source`'s region; returns why this bridge stops.

    Flower's legacy `start_client` does not retry over gRPC-bidi (`max_retries` and
    `max_wait_time` are ignored there): when the server goes away it raises
    `grpc.RpcError` at once. So this loop does: it waits up to `wait_s` for the server to
    listen again (forever with `serve`) and rejoins. A run's normal end returns "ended"
    (with `serve`, the loop waits for the next server instead); "superseded" when another
    bridge for the region replaced this one. FogflError when the server refused the region
    or never came back.
    """
    host, _, port = server_address.rpartition(":")
    if not port.isdigit():
        raise FogflError(f"Flower server address {server_address!r} must be HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    credentials = credentials or BridgeCredentials()
    root = credentials.root_certificates
    client = RegionClient(source, signer=credentials.signer)
    lost = False
    while True:
        _wait_for_server(host, int(port), server_address, wait_s, serve, lost, log)
        client.watch = ServerWatch(server_address, root)
        try:
            flwr.client.start_client(
                server_address=server_address,
                client=client,
                insecure=root is None,
                root_certificates=root,
            )
        except grpc.RpcError as exc:
            if client.notice is None:
                lost = True
                log.warning(
                    "lost the Flower server at %s (%s); rejoining when it is back",
                    server_address,
                    _rpc_reason(exc),
                )
                time.sleep(1.0)
                continue
        finally:
            client.watch.close()
        if client.notice is not None:
            notice, reason = client.notice
            if notice == "superseded":
                log.warning("%s; this bridge stops", reason)
                return "superseded"
            raise FogflError(f"the Flower server refused this bridge: {reason}")
        source.run_ended()
        if not serve:
            return "ended"
        lost = False
        log.info("the Flower server ended the run; waiting for the next one")
        time.sleep(2.0)  # let the finished server close its port


def _wait_for_server(
    host: str, port: int, address: str, wait_s: float, serve: bool, lost: bool, log: Log
) -> None:
    """Return once the Flower server listens, saying after a second and every few seconds
    what this waits for; FogflError after `wait_s` (with `serve`, wait forever)."""
    started = time.monotonic()
    progress = WaitProgress(log, f"waiting for the Flower server at {address}", started)
    why = "it went away" if lost else "nothing listens there yet"
    while not wait_for_port(host, port, 1.0):
        if not serve and time.monotonic() - started >= wait_s:
            what = "came back" if lost else "answered"
            raise FogflError(
                f"no Flower server at {address} {what} within {wait_s:.0f} s "
                "(bridge.server_wait_s, --server-wait); start `fogfl server` (or resume it "
                "with --resume), or check --server"
            )
        progress.report(why)
    progress.finish(f"the Flower server at {address} answers")


def _rpc_reason(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code.name if code is not None else type(exc).__name__


def _failure_message(failure: RegionFailure) -> str:
    return f"{failure.kind}: {failure.reason}"


def _failure_from_status(region: str, status: Status) -> RegionFailed:
    kind, _, reason = status.message.partition(": ")
    if kind in _FAILURE_KINDS and reason:
        return RegionFailed(region, kind, reason)  # type: ignore[arg-type]
    # Not a fogfl bridge's failure (or an older one): keep Flower's words.
    return RegionFailed(region, "error", f"region {region}: {status.code.name} {status.message}")


# ---------------------------------------------------------------- the server's side


IDENTIFY_TIMEOUT_S = 30.0
NOTICE_TIMEOUT_S = 10.0


class _Connection(ClientProxy):
    """One bridge's gRPC connection. Flower's gRPC bridge takes one request at a time, so
    every request holds the lock (identification, a round's fit, a notice, disconnect)."""

    def __init__(self, proxy: ClientProxy) -> None:
        super().__init__(proxy.cid)
        self.proxy = proxy
        self.lock = threading.Lock()
        self.region: str | None = None
        self.closed = False

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        with self.lock:
            return self.proxy.get_properties(ins, timeout, group_id)

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        with self.lock:
            return self.proxy.get_parameters(ins, timeout, group_id)

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        with self.lock:
            return self.proxy.fit(ins, timeout, group_id)

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        with self.lock:
            return self.proxy.evaluate(ins, timeout, group_id)

    def reconnect(
        self, ins: ReconnectIns, timeout: float | None, group_id: int | None
    ) -> DisconnectRes:
        with self.lock:
            return self.proxy.reconnect(ins, timeout, group_id)

    def tell(self, notice: Notice, reason: str) -> None:
        """Tell the bridge why it must go, then disconnect it (its process leaves)."""
        # It may be gone already; nothing is lost then.
        with contextlib.suppress(Exception), self.lock:
            ins = GetPropertiesIns({NOTICE_PROPERTY: notice, REASON_PROPERTY: reason})
            self.proxy.get_properties(ins, NOTICE_TIMEOUT_S, None)
            self.proxy.reconnect(ReconnectIns(seconds=None), NOTICE_TIMEOUT_S, None)


class RegionRoster(ClientManager):
    """Flower's client manager, by region: one `RegionProxy` per configured region, fed by
    whichever bridge connection currently says it serves that region."""

    def __init__(
        self,
        regions: list[str],
        region_wait_s: float,
        log: Log,
        trust: TrustPolicy | None = None,
    ) -> None:
        self.region_wait_s = region_wait_s
        self.log = log
        self.trust = trust
        self._cv = threading.Condition()
        self._connections: dict[str, _Connection] = {}
        self._serving: dict[str, _Connection] = {}
        self.proxies = {region: RegionProxy(region, self) for region in regions}
        self.round_opened = time.monotonic()
        self._ending = False

    def open_round(self, first: bool) -> None:
        """A round starts: a region without a bridge has `region_wait_s` from now. Before
        the first, wait that long for every region, so that it is announced to them all."""
        self.round_opened = time.monotonic()
        if first and not self.wait_for(len(self.proxies), self.region_wait_s):
            missing = sorted(set(self.proxies) - set(self.connected()))
            self.log.warning(
                "no bridge for %s after %.0f s; starting without",
                ", ".join(missing),
                self.region_wait_s,
            )

    # ClientManager: Flower's gRPC servicer registers every connection here.

    def register(self, client: ClientProxy) -> bool:
        connection = _Connection(client)
        with self._cv:
            if client.cid in self._connections:
                return False
            self._connections[client.cid] = connection
            ending = self._ending
        # A bridge that arrives while the run ends missed Flower's farewell to the others:
        # give it the same, so it leaves as after any run's end (or waits for the next).
        welcome = self._say_the_run_ended if ending else self._identify
        threading.Thread(
            target=welcome, args=(connection,), name="fogfl-identify", daemon=True
        ).start()
        return True

    def unregister(self, client: ClientProxy) -> None:
        with self._cv:
            connection = self._connections.pop(client.cid, None)
            if connection is None:
                return
            connection.closed = True
            region = connection.region
            if region is not None and self._serving.get(region) is connection:
                del self._serving[region]
                if not self._ending:
                    self.log.warning("region %s: its bridge disconnected", region)
            self._cv.notify_all()

    def num_available(self) -> int:
        """Every configured region: a region's request waits for its bridge itself."""
        return len(self.proxies)

    def connected(self) -> list[str]:
        """The regions a bridge serves right now."""
        with self._cv:
            return sorted(self._serving)

    def all(self) -> dict[str, ClientProxy]:
        """Every live connection (identified or not), so that Flower's end-of-run
        disconnect reaches them all (Flower calls this only then)."""
        with self._cv:
            self._ending = True
            return dict(self._connections)

    def wait_for(self, num_clients: int, timeout: float = 0) -> bool:
        """Wait up to `timeout` s until `num_clients` regions have a bridge."""
        with self._cv:
            return self._cv.wait_for(lambda: len(self._serving) >= num_clients, timeout=timeout)

    def sample(
        self,
        num_clients: int,
        min_num_clients: int | None = None,
        criterion: Criterion | None = None,
    ) -> list[ClientProxy]:
        """Every configured region, at once: a region's request waits for its bridge (up
        to `region_wait_s`) and fails alone, rather than the whole round waiting here."""
        proxies: list[ClientProxy] = list(self.proxies.values())
        if criterion is not None:
            proxies = [proxy for proxy in proxies if criterion.select(proxy)]
        return proxies[:num_clients]

    # Regions

    def serving(
        self, region: str, wait_s: float, not_this: _Connection | None = None
    ) -> _Connection | None:
        """The connection that serves `region`, waiting up to `wait_s` for one."""

        def ready() -> bool:
            current = self._serving.get(region)
            return current is not None and current is not not_this and not current.closed

        with self._cv:
            if self._cv.wait_for(ready, timeout=max(0.0, wait_s)):
                return self._serving[region]
            return None

    def drop(self, connection: _Connection) -> None:
        """Stop routing to a connection whose stream broke (Flower unregisters it soon)."""
        with self._cv:
            connection.closed = True
            region = connection.region
            if region is not None and self._serving.get(region) is connection:
                del self._serving[region]
            self._cv.notify_all()

    def _identify(self, connection: _Connection) -> None:
        challenge = secrets.token_hex(16)
        asked: Config = {CHALLENGE_PROPERTY: challenge} if self.trust is not None else {}
        try:
            answer = connection.get_properties(GetPropertiesIns(asked), IDENTIFY_TIMEOUT_S, None)
        except Exception as exc:  # the connection vanished while asked
            self.log.warning("a Flower client left before saying its region (%s)", exc)
            return
        region = answer.properties.get(REGION_PROPERTY) if answer.status.code == Code.OK else None
        if not isinstance(region, str):
            self._refuse(
                connection, "it does not say which region it speaks for; is it a fogfl bridge?"
            )
            return
        if region not in self.proxies:
            self._refuse(
                connection,
                f"region {region!r} is not one of this run's regions {sorted(self.proxies)}",
            )
            return
        if self.trust is not None:
            proof = answer.properties.get(PROOF_PROPERTY)
            signer = bridge_identity(region).name
            if not isinstance(proof, str) or not self.trust.verify_text(
                signer, region_claim(region, challenge), proof
            ):
                self._refuse(
                    connection,
                    f"it claims region {region} but cannot prove it (no valid signature by "
                    f"{signer}'s key); is it using this federation's credentials?",
                )
                return
        with self._cv:
            if connection.closed:
                return
            connection.region = region
            replaced = self._serving.get(region)
            self._serving[region] = connection
            self._cv.notify_all()
        if replaced is None:
            self.log.info("region %s: bridge connected", region)
            return
        self.log.warning(
            "region %s: a second bridge connected; the newer one serves the region from now "
            "on and the older one is told to leave (each region counts once per round)",
            region,
        )
        threading.Thread(
            target=replaced.tell,
            args=("superseded", f"another bridge for region {region} took over at the server"),
            name="fogfl-supersede",
            daemon=True,
        ).start()

    def _say_the_run_ended(self, connection: _Connection) -> None:
        with contextlib.suppress(Exception):  # the server may be closing its port already
            connection.reconnect(ReconnectIns(seconds=None), NOTICE_TIMEOUT_S, None)

    def _refuse(self, connection: _Connection, why: str) -> None:
        self.log.warning("refused a Flower client: %s", why)
        connection.tell("refused", why)


class RegionProxy(ClientProxy):
    """One region as Flower sees it (its `cid` is the region's name): each request goes to
    the bridge serving the region now. No bridge within `region_wait_s`, or one that drops
    and is not back in time, fails the region's request with a RegionFailed."""

    def __init__(self, region: str, roster: RegionRoster) -> None:
        super().__init__(region)
        self.region = region
        self.roster = roster

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        answer = self._ask(lambda c, left: c.fit(ins, left, group_id), timeout, group_id)
        if answer.status.code != Code.OK:
            raise _failure_from_status(self.region, answer.status)
        return answer

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        answer = self._ask(lambda c, left: c.evaluate(ins, left, group_id), timeout, group_id)
        if answer.status.code != Code.OK:
            raise _failure_from_status(self.region, answer.status)
        return answer

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        return self._ask(lambda c, left: c.get_properties(ins, left, group_id), timeout, group_id)

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        return self._ask(lambda c, left: c.get_parameters(ins, left, group_id), timeout, group_id)

    def reconnect(
        self, ins: ReconnectIns, timeout: float | None, group_id: int | None
    ) -> DisconnectRes:
        connection = self.roster.serving(self.region, 0.0)
        if connection is None:
            return DisconnectRes(reason="UNKNOWN")
        return connection.reconnect(ins, timeout, group_id)

    def _ask(
        self,
        request: Callable[[_Connection, float | None], _Answer],
        timeout: float | None,
        group_id: int | None,
    ) -> _Answer:
        deadline = time.monotonic() + timeout if timeout is not None else float("inf")
        what = f"round {group_id}" if group_id is not None else "a request"
        region_wait_s = self.roster.region_wait_s
        broken: _Connection | None = None
        wait_until = self.roster.round_opened + region_wait_s
        while True:
            wait_s = min(wait_until, deadline) - time.monotonic()
            connection = self.roster.serving(self.region, wait_s, not_this=broken)
            if connection is None:
                if broken is not None:
                    raise RegionFailed(
                        self.region,
                        "disconnected",
                        f"region {self.region}: its bridge dropped during {what} and no "
                        f"bridge rejoined within {region_wait_s:g} s (server.region_wait_s)",
                    )
                raise RegionFailed(
                    self.region,
                    "missing",
                    f"region {self.region}: no bridge connected within {region_wait_s:g} s "
                    "(server.region_wait_s)",
                )
            left = None if timeout is None else max(1.0, deadline - time.monotonic())
            try:
                return request(connection, left)
            except GrpcBridgeClosed:
                self.roster.drop(connection)
                if time.monotonic() >= deadline - 1.0:
                    raise RegionFailed(
                        self.region,
                        "deadline",
                        f"region {self.region}: no answer to {what} within {timeout:.0f} s "
                        "(server.round_timeout_s)",
                    ) from None
                self.roster.log.warning(
                    "region %s: its bridge's connection closed during %s; waiting up to %.0f s "
                    "for it to rejoin",
                    self.region,
                    what,
                    region_wait_s,
                )
                broken = connection
                wait_until = time.monotonic() + region_wait_s


@dataclass
class RegionReport:
    """What one region returned to the server in a round."""

    region: str
    num_examples: int
    metrics: Config


@dataclass
class StrategyState:
    """A Flower strategy's state between rounds (FedAdam's moments and weights), as named
    tensors plus JSON-able values, so that a checkpoint holds no pickle."""

    tensors: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


class RoundHooks(Protocol):
    """The server role's side of the strategy: MQTT publishing and bookkeeping."""

    def start_round(self, server_round: int, arrays: Arrays) -> Config: ...

    def finish(self, server_round: int, arrays: Arrays) -> Config: ...

    def fit_done(
        self, server_round: int, reports: list[RegionReport], failures: list[str]
    ) -> None: ...

    def round_done(self, server_round: int, arrays: Arrays, state: StrategyState) -> None: ...

    def evaluation_done(
        self, server_round: int, reports: list[RegionReport], failures: list[str]
    ) -> None: ...


class HierarchicalStrategy(Strategy):
    """Wraps any Flower strategy: publishes each round's global model over MQTT before Flower
    asks the regions to fit, hands the regions' results to the strategy in a fixed order,
    keeps a checkpoint after every round, and after the last round publishes the final
    model and has the regions' clients evaluate it.

    `completed` rounds were done before (a resumed run): Flower numbers its rounds from 1,
    so round r here is Flower's round r - `completed`; `parameters` is the global model
    after round `completed`. A round answered by fewer than `min_regions` regions raises
    RoundFailed.
    """

    def __init__(
        self,
        inner: Strategy,
        hooks: RoundHooks,
        num_rounds: int,
        min_regions: int,
        completed: int = 0,
    ) -> None:
        if not 0 <= completed <= num_rounds:
            raise FogflError(f"cannot resume after round {completed} of a {num_rounds}-round run")
        self.inner = inner
        self.hooks = hooks
        self.num_rounds = num_rounds
        self.min_regions = min_regions
        self.completed = completed
        # With every round done but the final evaluation, Flower still runs one round, so
        # that configure_evaluate is reached; its fit is skipped.
        self._offset = min(completed, num_rounds - 1)
        self._current: Parameters | None = None
        self._first = True

    def __repr__(self) -> str:
        return f"HierarchicalStrategy({self.inner!r})"

    @property
    def flower_rounds(self) -> int:
        """How many rounds Flower's server loop must run."""
        return self.num_rounds - self._offset

    def round_of(self, flower_round: int) -> int:
        """The run's round number for Flower's `flower_round`."""
        return flower_round + self._offset

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        round_ = self.round_of(server_round)
        self._current = parameters
        if round_ <= self.completed:
            return []
        self._open_round(client_manager)
        config = self.hooks.start_round(round_, parameters_to_ndarrays(parameters))
        instructions = self.inner.configure_fit(round_, parameters, client_manager)
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, **config})) for proxy, ins in instructions
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, Config]:
        round_ = self.round_of(server_round)
        # One result per region, in the regions' order whatever order they arrived in, so
        # that a run and its resumed twin sum in the same order.
        results = sorted(results, key=lambda result: result[0].cid)
        reports = [RegionReport(proxy.cid, res.num_examples, res.metrics) for proxy, res in results]
        reasons = sorted(_failure_reason(f) for f in failures)
        self.hooks.fit_done(round_, reports, reasons)
        if len(results) < self.min_regions:
            raise RoundFailed(
                f"round {round_}: {len(results)} of the {self.min_regions} regions it needs "
                f"answered ({'; '.join(reasons) or 'no failures reported'}); a round short of "
                "federation.min_regions fails the run"
            )
        parameters, metrics = self.inner.aggregate_fit(round_, results, failures)
        after = parameters if parameters is not None else self._current
        if after is not None:
            self.hooks.round_done(round_, parameters_to_ndarrays(after), strategy_state(self.inner))
        return parameters, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        round_ = self.round_of(server_round)
        if round_ != self.num_rounds:
            return []
        self._open_round(client_manager)
        config = self.hooks.finish(round_, parameters_to_ndarrays(parameters))
        regions = client_manager.sample(num_clients=client_manager.num_available())
        return [(proxy, EvaluateIns(parameters, config)) for proxy in regions]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, Config]:
        results = sorted(results, key=lambda result: result[0].cid)
        reports = [RegionReport(proxy.cid, res.num_examples, res.metrics) for proxy, res in results]
        reasons = sorted(_failure_reason(f) for f in failures)
        self.hooks.evaluation_done(self.round_of(server_round), reports, reasons)
        total = sum(res.num_examples for _, res in results)
        if total == 0:
            return None, {}
        return sum(res.loss * res.num_examples for _, res in results) / total, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, Config] | None:
        return None

    def _open_round(self, client_manager: ClientManager) -> None:
        if isinstance(client_manager, RegionRoster):
            client_manager.open_round(first=self._first)
        self._first = False


STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
}
assert tuple(STRATEGIES) == BUILTIN_STRATEGIES, "config.BUILTIN_STRATEGIES names these"

# The state FedOpt strategies (FedAdam) carry from round to round; FedAvg, FedProx,
# FedMedian and FedTrimmedAvg carry none.
_FEDOPT_STATE = ("current_weights", "m_t", "v_t")


def strategy_options(config: FogflConfig) -> dict[str, StrategyOption]:
    """The configured strategy's own parameters, FedProx's μ taken from the training."""
    options = dict(config.server.strategy_options)
    if config.server.strategy == "fedprox":
        # The clients' proximal term is training.proximal_mu; Flower's FedProx only relays it.
        options.setdefault("proximal_mu", config.training.proximal_mu)
    return options


def make_strategy(
    name: str,
    initial: Arrays,
    min_regions: int,
    options: Mapping[str, Any] | None = None,
    python_path: Sequence[Path | str] = (),
) -> Strategy:
    """The strategy over the regions: one of Flower's by name, or any Flower `Strategy`
    subclass by import path (``mypkg.strat:MyFedAvg``). Each region is one Flower client
    whose `num_examples` is the weight its partial reports (its examples, or its clients
    under uniform weighting). `options` are the strategy's own keyword arguments (FedAdam's
    eta, FedTrimmedAvg's beta, FedProx's proximal_mu, …) and win over fogfl's.

    fogfl passes the initial global model as `initial_parameters` (a custom strategy must
    accept it) and, where the constructor accepts them, full participation of the regions
    (`fraction_fit`, `min_fit_clients`, … of `FedAvg`) and a fit-metrics aggregator.
    """
    fogfl_arguments: dict[str, Any] = {
        "fraction_fit": 1.0,
        "fraction_evaluate": 0.0,
        "min_fit_clients": min_regions,
        "min_evaluate_clients": min_regions,
        "min_available_clients": min_regions,
        "initial_parameters": ndarrays_to_parameters(initial),
        "fit_metrics_aggregation_fn": _no_metrics,
    }
    if name in STRATEGIES:
        strategy_class: type[Strategy] = STRATEGIES[name]
        arguments = fogfl_arguments
    elif is_import_path(name):
        strategy_class = _strategy_class(name, python_path)
        arguments = _accepted(strategy_class, fogfl_arguments, name)
    else:
        raise ConfigError(
            f"server.strategy: unknown strategy {name!r}; use one of {sorted(STRATEGIES)} or a "
            "Flower Strategy subclass as package.module:ClassName"
        )
    try:
        return strategy_class(**{**arguments, **dict(options or {})})
    except Exception as exc:  # the strategy's own check of its arguments, whatever it raises
        raise ConfigError(
            f"server.strategy {name!r} refused server.strategy_options {dict(options or {})}: "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _strategy_class(path: str, python_path: Sequence[Path | str]) -> type[Strategy]:
    key = f"server.strategy {path!r}"
    candidate = import_object(path, key, python_path)
    if not (isinstance(candidate, type) and issubclass(candidate, Strategy)):
        raise ConfigError(f"{key}: is not a subclass of flwr.server.strategy.Strategy")
    abstract = sorted(getattr(candidate, "__abstractmethods__", ()))
    if abstract:
        raise ConfigError(
            f"{key}: {candidate.__qualname__} lacks {', '.join(m + '()' for m in abstract)}"
        )
    return candidate


def _accepted(
    strategy_class: type[Strategy], arguments: dict[str, Any], path: str
) -> dict[str, Any]:
    """The arguments of `arguments` that `strategy_class`'s constructor takes; it must take
    `initial_parameters`, the model every region starts from."""
    parameters = inspect.signature(strategy_class).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return arguments
    names = {p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    if "initial_parameters" not in names:
        others = ", ".join(a for a in arguments if a != "initial_parameters")
        raise ConfigError(
            f"server.strategy {path!r}: {strategy_class.__qualname__}.__init__ must accept the "
            "keyword argument initial_parameters (fogfl passes the initial global model; it "
            f"also passes, when accepted, {others})"
        )
    return {name: value for name, value in arguments.items() if name in names}


def strategy_state(strategy: Strategy) -> StrategyState:
    """What `strategy` must remember between rounds (empty for stateless strategies)."""
    state = StrategyState()
    if isinstance(strategy, FedOpt):
        for name in _FEDOPT_STATE:
            arrays = getattr(strategy, name)
            state.values[name] = None if arrays is None else len(arrays)
            for index, array in enumerate(arrays or []):
                state.tensors[f"{name}/{index:05d}"] = np.asarray(array)
    return state


def restore_strategy_state(strategy: Strategy, state: StrategyState) -> None:
    """Put back what `strategy_state` took, so the next round computes as if never stopped."""
    if not isinstance(strategy, FedOpt):
        return
    for name in _FEDOPT_STATE:
        if name not in state.values:
            continue  # a fresh run: the strategy's own start
        count = state.values[name]
        if count is None:
            setattr(strategy, name, None)
            continue
        try:
            setattr(strategy, name, [state.tensors[f"{name}/{i:05d}"] for i in range(int(count))])
        except KeyError as missing:
            raise FogflError(f"the checkpoint's strategy state lacks tensor {missing}") from None


def serve(
    address: str,
    strategy: HierarchicalStrategy,
    roster: RegionRoster,
    round_timeout_s: float,
    certificates: tuple[bytes, bytes, bytes] | None = None,
) -> None:
    """Run Flower's server for the strategy's remaining rounds; returns when they are done.

    Raises whatever the rounds raised (RoundFailed, a publish error, …); Flower's gRPC
    threads keep running then, so the caller must end the process (`exit_now`).
    """
    flwr.server.start_server(
        server_address=address,
        config=flwr.server.ServerConfig(
            num_rounds=strategy.flower_rounds, round_timeout=round_timeout_s
        ),
        strategy=strategy,
        client_manager=roster,
        certificates=certificates,
    )


def exit_now(code: int) -> NoReturn:
    """End the process at once, logs flushed. After `start_server` raised, Flower's gRPC
    server and its stream threads are still running and would keep a normal exit waiting
    forever."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _no_metrics(_: list[tuple[int, Config]]) -> Config:
    # The server role aggregates region metrics itself (RoundHooks.fit_done).
    return {}


def _failure_reason(failure: tuple[ClientProxy, Any] | BaseException) -> str:
    if isinstance(failure, FogflError):
        return str(failure)
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
    return f"region {failure[0].cid}: {failure[1].status.message}"
