"""`fogfl health`: the container health checks, as one short-lived command.

`fogfl health mqtt` opens a session with the broker the configuration names (flags,
FOGFL_* variables or a config file, exactly as the roles read them); `fogfl health tcp
HOST:PORT` checks that something accepts connections there (the Flower server's port).
The command (in fogfl/cli.py) exits 0 when healthy, 1 with a one-line reason otherwise.
"""

from __future__ import annotations

import logging
import os

from fogfl.config import FogflConfig
from fogfl.errors import FogflError
from fogfl.logs import RoleLogger
from fogfl.mqtt import MqttSession
from fogfl.processes import wait_for_port
from fogfl.security.bundle import own_identity
from fogfl.security.identities import monitor_identity
from fogfl.security.role import role_security


def check_tcp(address: str, timeout: float) -> str:
    """A line saying HOST:PORT accepts connections; raises Unhealthy if nothing does."""
    host, port = _host_port(address)
    if not wait_for_port(host, port, timeout):
        raise Unhealthy(f"nothing accepts connections on {address} (waited {timeout:g} s)")
    return f"healthy: {address} accepts connections"


def check_mqtt(config: FogflConfig) -> str:
    """A line saying the broker accepted a session; raises Unhealthy with the first reason
    the session gave (refused login, unreachable host) if it did not."""
    problems = _FirstProblem()
    try:
        # Whoever's credentials these are (a container holds its role's only); the
        # monitor's in a whole bundle.
        identity = own_identity(config.security.credentials) or monitor_identity()
        settings = role_security(config, identity, problems.quiet).mqtt
        session = MqttSession(
            settings, f"fogfl-health-{os.getpid()}", problems.logger, persistent=False
        )
        session.connect()
    except FogflError as error:
        raise Unhealthy(f"{error}: {problems.first}" if problems.first else str(error)) from None
    session.close()
    return f"healthy: the MQTT broker at {config.mqtt.host}:{config.mqtt.port} accepted a session"


class Unhealthy(FogflError):
    """The checked service did not answer as it should."""


class _FirstProblem(logging.Handler):
    """Keeps the session's first complaint ("refused the connection: Not authorized")."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first = ""
        self.logger = logging.getLogger(f"fogfl.health.{id(self)}")
        self.logger.propagate = False
        self.logger.addHandler(self)
        # For what is no problem of the broker's (running open is the user's choice).
        silent = logging.getLogger(f"fogfl.health.quiet.{id(self)}")
        silent.propagate = False
        silent.addHandler(logging.NullHandler())
        self.quiet = RoleLogger(silent, {})

    def emit(self, record: logging.LogRecord) -> None:
        self.first = self.first or record.getMessage()


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise Unhealthy(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
