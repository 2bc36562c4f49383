"""`fogfl health`: the container health checks, as one short-lived command.

`fogfl health mqtt` opens a session with the broker the configuration names (flags,
FOGFL_* variables or a config file, exactly as the roles read them); `fogfl health tcp
HOST:PORT` checks that something accepts connections there (the Flower server's port).
Exit 0 when healthy, 1 with a one-line reason otherwise.
"""

from __future__ import annotations

import enum
import logging
import os
from typing import Annotated, NoReturn, Optional

import typer

from fogfl.errors import FogflError
from fogfl.mqtt import MqttSession
from fogfl.processes import wait_for_port


class Check(str, enum.Enum):
    mqtt = "mqtt"
    tcp = "tcp"


CheckArg = Annotated[Check, typer.Argument(help="mqtt: the broker; tcp: HOST:PORT.")]
Address = Annotated[Optional[str], typer.Argument(help="HOST:PORT, for tcp.")]  # noqa: UP045
Timeout = Annotated[float, typer.Option(help="Seconds to keep trying before giving up.")]


def health(
    check: CheckArg,
    address: Address = None,
    timeout: Timeout = 3.0,
    config: ConfigFile = None,
    mqtt_host: MqttHost = None,
    mqtt_port: MqttPort = None,
    mqtt_username: MqttUsername = None,
    mqtt_password: MqttPassword = None,
    tls: Tls = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    log_level: LogLevel = None,
) -> None:
    """Exit 0 if the broker (mqtt) or HOST:PORT (tcp) answers within --timeout, else 1."""
    if check is Check.tcp:
        if address is None:
            raise typer.BadParameter(
                "the tcp check needs HOST:PORT, e.g. `fogfl health tcp server:8080`"
            )
        host, port = _host_port(address)
        if not wait_for_port(host, port, timeout):
            _unhealthy(f"nothing accepts connections on {address} (waited {timeout:g} s)")
        typer.echo(f"healthy: {address} accepts connections")
        return
    if address is not None:
        raise typer.BadParameter("the mqtt check takes no address; use --mqtt-host and --mqtt-port")
    overrides = _mqtt(
        mqtt_host,
        mqtt_port,
        mqtt_username,
        mqtt_password,
        tls,
        tls_ca,
        tls_cert,
        tls_key,
        log_level,
    )
    problems = _FirstProblem()
    try:
        settings = _configure(config, {**overrides, "mqtt.connect_timeout_s": timeout})
        session = MqttSession(settings.mqtt, f"fogfl-health-{os.getpid()}", problems.logger)
        session.connect()
    except FogflError as error:
        _unhealthy(f"{error}: {problems.first}" if problems.first else str(error))
    session.close()
    typer.echo(
        f"healthy: the MQTT broker at {settings.mqtt.host}:{settings.mqtt.port} accepted a session"
    )


class _FirstProblem(logging.Handler):
    """Keeps the session's first complaint ("refused the connection: Not authorized")."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first = ""
        self.logger = logging.getLogger(f"fogfl.health.{id(self)}")
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.first = self.first or record.getMessage()


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise typer.BadParameter(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _unhealthy(reason: str) -> NoReturn:
    typer.echo(f"unhealthy: {reason}", err=True)
    raise typer.Exit(1)


# Imported last on purpose: fogfl.cli registers `health` at its own end, so whichever of the
# two modules is imported first, `health` exists before fogfl.cli asks for it. The option
# types above are strings until typer resolves them, by which time these names are bound.
from fogfl.cli import (  # noqa: E402
    ConfigFile,
    LogLevel,
    MqttHost,
    MqttPassword,
    MqttPort,
    MqttUsername,
    Tls,
    TlsCa,
    TlsCert,
    TlsKey,
    _configure,
    _mqtt,
)
