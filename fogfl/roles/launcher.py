"""Launcher (`fogfl up`): a whole local federation, each role its own process.

Starts a broker (Mosquitto, the embedded one, or none for an external broker), the server,
one fog broker and one bridge per region, and the clients; writes the resolved config and
one log per process to the run directory; follows the run through the server's
metrics.csv; and stops every process it started, by PID, on success, failure or Ctrl-C.
It starts roles through the `fogfl` command line and never imports them.

With emulated links (the `links:` section), one more process sits between the clients and
the broker: the links runner (`python -m fogfl.links`), one proxy per client, started right
after the broker and stopped after the clients; each client connects to its own proxy.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from fogfl.broker import (
    BrokerMode,
    BrokerSecurity,
    LocalBroker,
    local_broker_problem,
    start_broker,
)
from fogfl.config import ENV_NESTING, ENV_PREFIX, FogflConfig, dump_config, secret_environment
from fogfl.errors import FogflError
from fogfl.links.settings import CLOUD_LINK_PREFIX, LINK_ORIGIN_ENV
from fogfl.logs import role_logger
from fogfl.mqtt import Topics
from fogfl.processes import (
    ChildProcess,
    reserve_port,
    running_children,
    signals_deferred,
    stop_all,
    stop_started,
)
from fogfl.run_dir import (
    CONFIG_FILE,
    LINKS_COUNTERS_FILE,
    LINKS_DIR,
    LINKS_PORTS_FILE,
    LINKS_SPEC_FILE,
    LOG_DIR,
    METRICS_FILE,
    read_metrics,
    write_atomic,
)

ROLE = "launcher"
SETTLE_S = 15.0
SECURITY_DIR = "security"
LINKS_START_S = 20.0
# Often enough that the server's per-round wire bytes wait little for a fresh copy.
LINK_COUNTERS_EVERY_S = 0.2


@dataclass
class Status:
    """What the federation is doing: rounds finished so far, and how it ended if it has."""

    rows: list[dict[str, str]] = field(default_factory=list)
    rounds_done: int = 0
    finished: bool = False
    failure: str = ""

    @property
    def ok(self) -> bool:
        return self.finished and not self.failure


PREFLIGHT_BROKER_WAIT_S = 3.0


def preflight(config: FogflConfig, broker_mode: BrokerMode) -> None:
    """Refuse a run that cannot work, before anything is started or written: the broker
    (an external one answers; a local one can be started), the task and its options, and
    the configuration as every role will read it. Raises FogflError saying what to fix."""
    from fogfl.health import Unhealthy, check_mqtt
    from fogfl.tasks import load_task
    from fogfl.tasks.base import shared_partitions

    problem = local_broker_problem(broker_mode)
    if problem:
        raise FogflError(problem)
    security = config.security
    if broker_mode == "external" and not security.insecure and security.credentials is None:
        raise FogflError(
            "--broker external: fogfl cannot give an external broker the run's logins; pass "
            "the credentials it knows (--credentials DIR from `fogfl certs DIR`, its broker/ "
            "files installed in that broker), or run open with --insecure"
        )
    if broker_mode == "external":
        probe = config.model_copy(deep=True)
        probe.mqtt.connect_timeout_s = min(config.mqtt.connect_timeout_s, PREFLIGHT_BROKER_WAIT_S)
        try:
            check_mqtt(probe)
        except Unhealthy as error:
            raise FogflError(f"--broker external: {error}") from None
    # Options are checked; no data is read.
    task = load_task(config.task.name, config.task.options, config.python_path)
    population = [c for ids in config.federation.client_ids().values() for c in ids]
    for key, clients in shared_partitions(task, population).items():
        role_logger(ROLE).warning(
            "clients %s would train on the same data (%s)", ", ".join(clients), key
        )
    try:
        FogflConfig.model_validate(yaml.safe_load(dump_config(config)))
    except ValidationError as exc:
        raise FogflError(f"the resolved configuration does not load back: {exc}") from None
    links, seed = config.links, config.federation.seed
    for region, members in config.federation.client_ids().items():
        for client_id in members:
            links.link_for(region, client_id, seed)  # LinkError
        cloud = links.cloud_entry_for(region)
        if cloud is not None:
            cloud.build(links.cloud_link_name(region), seed)
    unknown = sorted(set(links.cloud_regions) - set(config.federation.regions))
    if unknown:
        raise FogflError(f"links.cloud_regions names regions the run has not: {unknown}")


class Federation:
    """A running local federation; use as a context manager so every process is stopped."""

    def __init__(
        self, config: FogflConfig, broker_mode: BrokerMode, run_dir: Path, timeout_s: float
    ) -> None:
        self.config = config.model_copy(deep=True)
        self.broker_mode = broker_mode
        self.run_dir = run_dir
        self.timeout_s = timeout_s
        self.log = role_logger(ROLE)
        self.broker: LocalBroker | None = None
        self.server: ChildProcess | None = None
        self.links: ChildProcess | None = None
        self.link_ports: dict[str, int] = {}
        self.link_origin: float | None = None
        self.roles: list[ChildProcess] = []
        self.flower_port: socket.socket | None = None
        self.started_at = 0.0
        self.server_done_at: float | None = None
        # What this process ran before the federation (a caller's own broker, say) is not
        # the federation's to stop.
        self.not_ours = running_children()

    def __enter__(self) -> Federation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG_FILE

    def start(self) -> None:
        self.started_at = time.monotonic()
        logs = self.run_dir / LOG_DIR
        logs.mkdir(parents=True, exist_ok=True)
        self.broker = start_broker(
            self.broker_mode,
            logs,
            host=self.config.mqtt.host if self.broker_mode == "external" else "127.0.0.1",
            port=self.config.mqtt.port if self.broker_mode == "external" else None,
            security=self._provision(),
        )
        # Held until the server binds it, so that nothing else can take it meanwhile.
        self.flower_port = reserve_port()
        flower_port = self.flower_port.getsockname()[1]
        self.config.mqtt.host = self.broker.host
        self.config.mqtt.port = self.broker.port
        if self.broker.kind == "embedded":
            self.config.mqtt.protocol = "3.1.1"  # amqtt speaks MQTT 3.1.1 only
        if self.config.links.any:
            self._start_links(flower_port)
        self.config.server.address = f"127.0.0.1:{flower_port}"
        self.config.server.run_dir = self.run_dir
        self.config.fog.state_dir = self.run_dir / "state"
        self.config.bridge.server_address = f"127.0.0.1:{flower_port}"
        write_atomic(self.config_path, dump_config(self.config).encode())

        # The server inherits the held port and lets go of it right before Flower binds it.
        self.server = self._spawn("server", ["server"], held_port=self.flower_port)
        self.flower_port.close()
        self.flower_port = None
        for region in self.config.federation.regions:
            self.roles.append(
                self._spawn(f"fog-broker-{region}", ["fog-broker", "--region", region])
            )
            bridge = ["fog-bridge", "--region", region]
            cloud = self.link_ports.get(self.config.links.cloud_link_name(region))
            if cloud is not None:
                bridge += ["--server", f"127.0.0.1:{cloud}"]
            self.roles.append(self._spawn(f"fog-bridge-{region}", bridge))
        for region, members in self.config.federation.client_ids().items():
            for client_id in members:
                arguments = ["client", "--id", client_id, "--region", region]
                extra = {}
                if client_id in self.link_ports:
                    arguments += ["--mqtt-port", str(self.link_ports[client_id])]
                    if self.link_origin is not None:
                        extra[LINK_ORIGIN_ENV] = repr(self.link_origin)
                self.roles.append(self._spawn(f"client-{client_id}", arguments, env=extra))

    def _start_links(self, flower_port: int) -> None:
        """The links runner: one proxy per client in front of the broker, and one per fog
        site with a cloud link in front of the Flower server; waits until every proxy
        listens (LaunchError, with the runner's last lines, if it exits first)."""
        directory = self.run_dir / LINKS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        spec_path, ports_path = directory / LINKS_SPEC_FILE, directory / LINKS_PORTS_FILE
        ports_path.unlink(missing_ok=True)
        links = self.config.links
        proxies: list[dict[str, object]] = []
        for region, members in self.config.federation.client_ids().items():
            for client_id in members:
                entry = links.entry_for(region, client_id)
                link = None if entry is None else entry.model_dump(mode="json", exclude_none=True)
                proxies.append({"name": client_id, "link": link})
        for region in self.config.federation.regions:
            cloud = links.cloud_entry_for(region)
            if cloud is not None:
                proxies.append(
                    {
                        "name": links.cloud_link_name(region),
                        "link": cloud.model_dump(mode="json", exclude_none=True),
                        "upstream_host": "127.0.0.1",
                        "upstream_port": flower_port,
                    }
                )
        spec = {
            "upstream_host": self.config.mqtt.host,
            "upstream_port": self.config.mqtt.port,
            "seed": self.config.federation.seed,
            "counters_every_s": LINK_COUNTERS_EVERY_S,
            "proxies": proxies,
        }
        write_atomic(spec_path, json.dumps(spec, indent=1).encode())
        argv = [
            sys.executable,
            "-m",
            "fogfl.links",
            str(spec_path),
            "--ports",
            str(ports_path),
            "--counters",
            str(directory / LINKS_COUNTERS_FILE),
        ]
        log_path = self.run_dir / LOG_DIR / "links.log"
        self.links = ChildProcess("links", argv, log_path, env=_child_environment())
        deadline = time.monotonic() + LINKS_START_S
        while not ports_path.exists():
            code = self.links.poll()
            if code is not None:
                raise LaunchError(self._failed(self.links, code))
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"the links runner did not listen within {LINKS_START_S:.0f} s; see {log_path}"
                )
            time.sleep(0.05)
        self.link_ports = {str(k): int(v) for k, v in json.loads(ports_path.read_text()).items()}
        self.link_origin = self._link_origin(directory / LINKS_COUNTERS_FILE, deadline)
        sites = sum(name.startswith(CLOUD_LINK_PREFIX) for name in self.link_ports)
        self.log.info(
            "emulated links for %d clients and %d fog sites' cloud links (%s)",
            len(self.link_ports) - sites,
            sites,
            directory,
        )

    def _link_origin(self, counters: Path, deadline: float) -> float | None:
        """The Unix time of the links' time 0, from the runner's first counters (which say
        both clocks at once); None if they do not come in time."""
        while time.monotonic() < deadline:
            try:
                report = json.loads(counters.read_text())
                return float(report["written_unix_s"]) - float(report["link_time_s"])
            except (OSError, ValueError, KeyError, TypeError):
                time.sleep(0.05)
        self.log.warning("the links runner wrote no counters; the oracle controller is off")
        return None

    def _provision(self) -> BrokerSecurity | None:
        """Every identity of the run gets its credentials (in the run directory, unless the
        configuration names its own); the broker gets their logins and the ACL."""
        security = self.config.security
        if security.insecure:
            self.log.warning(
                "running open (--insecure): the broker and the Flower port accept anyone, "
                "and models are not signed"
            )
            return None
        if self.broker_mode == "external":
            return None  # the external broker knows the credentials already (preflight)
        from fogfl.security.bundle import provision
        from fogfl.security.identities import federation_identities

        directory = (security.credentials or self.run_dir / SECURITY_DIR).resolve()
        provision(
            directory,
            federation_identities(self.config),
            Topics(self.config.mqtt.topic_prefix),
        )
        security.credentials = directory
        return BrokerSecurity.of_bundle(directory, security.tls)

    def poll(self) -> Status:
        """The federation's status now; marks it finished once the server is done."""
        assert self.server is not None
        status = Status(rows=read_metrics(self.run_dir / METRICS_FILE))
        status.rounds_done = sum(1 for row in status.rows if row.get("clients"))
        server_code = self.server.poll()
        if server_code is not None and server_code != 0:
            status.finished, status.failure = True, self._failed(self.server, server_code)
            return status
        for role in self.roles:
            code = role.poll()
            if code not in (None, 0):
                status.finished, status.failure = True, self._failed(role, code)
                return status
        links_code = None if self.links is None else self.links.poll()
        if self.links is not None and links_code is not None:
            # It never ends by itself: its clients would lose their broker.
            status.finished, status.failure = True, self._failed(self.links, links_code)
            return status
        if server_code == 0:
            now = time.monotonic()
            self.server_done_at = self.server_done_at or now
            if (
                all(role.poll() is not None for role in self.roles)
                or now - self.server_done_at > SETTLE_S
            ):
                status.finished = True
            return status
        if time.monotonic() - self.started_at > self.timeout_s:
            status.finished = True
            status.failure = (
                f"the run did not finish within {self.timeout_s:.0f} s; "
                f"see the logs in {self.run_dir / LOG_DIR}"
            )
        return status

    def stop(self) -> None:
        """Stop every process this federation started (idempotent); a second Ctrl-C
        cannot cut it short."""
        with signals_deferred():
            children = [*self.roles, *([self.server] if self.server else [])]
            stop_all(children, grace=5.0)
            if self.links is not None:
                self.links.stop(grace=3.0)
            if self.broker is not None:
                self.broker.stop()
            # Anything whose start was interrupted before it was kept here (a broker
            # still starting up when Ctrl-C came).
            stop_started(grace=3.0, keep=self.not_ours)
            if self.flower_port is not None:
                self.flower_port.close()
                self.flower_port = None

    def _spawn(
        self,
        name: str,
        arguments: list[str],
        held_port: socket.socket | None = None,
        env: dict[str, str] | None = None,
    ) -> ChildProcess:
        argv = [sys.executable, "-m", "fogfl", *arguments, "--config", str(self.config_path)]
        log_path = self.run_dir / LOG_DIR / f"{name}.log"
        # config.yaml holds no password; the environment is the child's own to read.
        secrets = secret_environment(self.config)
        environment = {**_child_environment(), **secrets, **(env or {})}
        return ChildProcess(name, argv, log_path, env=environment, held_port=held_port)

    def _failed(self, child: ChildProcess, code: int) -> str:
        return (
            f"{child.name} exited with code {code}; "
            f"last lines of {child.log_path}:\n{child.tail(12)}"
        )


def _child_environment() -> dict[str, str]:
    # The children read the fully resolved config.yaml; FOGFL_* overrides were applied to it
    # already, and applying them again could undo what the launcher chose (the broker port).
    env = {
        k: v for k, v in os.environ.items() if not (k.startswith(ENV_PREFIX) and ENV_NESTING in k)
    }
    env.pop("FOGFL_CONFIG", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LaunchError(FogflError):
    """The local federation failed; the message names the failing role."""
