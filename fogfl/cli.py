"""The `fogfl` command: parse flags, load the validated configuration, call a role's `run`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from fogfl import __version__
from fogfl.config import FogflConfig, load_config
from fogfl.dissemination.cli import dissemination
from fogfl.errors import FogflError
from fogfl.logs import setup_logging
from fogfl.mqtt import Topics

app = typer.Typer(
    name="fogfl",
    help="Hierarchical (client → fog → cloud) federated learning over MQTT, with Flower on top.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

# Options every role takes. Optional[...] (not `X | None`) because typer reads these at runtime.
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML configuration file.", envvar="FOGFL_CONFIG"),
]
MqttHost = Annotated[Optional[str], typer.Option(help="MQTT broker host.")]  # noqa: UP045
MqttPort = Annotated[Optional[int], typer.Option(help="MQTT broker port.")]  # noqa: UP045
MqttUsername = Annotated[Optional[str], typer.Option(help="MQTT username.")]  # noqa: UP045
MqttPassword = Annotated[Optional[str], typer.Option(help="MQTT password.")]  # noqa: UP045
Tls = Annotated[bool | None, typer.Option("--tls/--no-tls", help="Connect to the broker over TLS.")]
TlsCa = Annotated[Optional[Path], typer.Option(help="CA certificate for TLS.")]  # noqa: UP045
TlsCert = Annotated[Optional[Path], typer.Option(help="Client certificate for TLS.")]  # noqa: UP045
TlsKey = Annotated[Optional[Path], typer.Option(help="Client key for TLS.")]  # noqa: UP045
LogLevel = Annotated[Optional[str], typer.Option(help="DEBUG, INFO, WARNING or ERROR.")]  # noqa: UP045
Task = Annotated[Optional[str], typer.Option(help="Workload to federate (e.g. qoe).")]  # noqa: UP045
Region = Annotated[
    str, typer.Option(help="The region (fog site) this process serves.", envvar="FOGFL_REGION")
]


def _configure(config_file: Path | None, overrides: dict[str, Any]) -> FogflConfig:
    config = load_config(config_file, overrides)
    setup_logging(config.log_level)
    return config


def _mqtt(
    host: str | None,
    port: int | None,
    username: str | None,
    password: str | None,
    tls: bool | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    log_level: str | None,
) -> dict[str, Any]:
    return {
        "mqtt.host": host,
        "mqtt.port": port,
        "mqtt.username": username,
        "mqtt.password": password,
        "mqtt.tls.enabled": tls,
        "mqtt.tls.ca_file": tls_ca,
        "mqtt.tls.cert_file": tls_cert,
        "mqtt.tls.key_file": tls_key,
        "log_level": log_level.upper() if log_level else None,
    }


@app.command()
def client(
    id: Annotated[
        str,
        typer.Option(
            "--id", help="This client's id, unique in the federation.", envvar="FOGFL_CLIENT_ID"
        ),
    ],
    region: Region,
    task: Task = None,
    torch_threads: Annotated[int, typer.Option(help="CPU threads for training.")] = 1,
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
    """Train on local data each round and publish the update to the region's fog broker."""
    mqtt = _mqtt(
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
    settings = _configure(config, {**mqtt, "task.name": task})
    from fogfl.roles import client as role

    _exit(role.run(settings, id, region, torch_threads))


@app.command("fog-broker")
def fog_broker(
    region: Region,
    expected: Annotated[Optional[int], typer.Option(help="Updates that close a round.")] = None,  # noqa: UP045
    deadline: Annotated[
        float | None, typer.Option(help="Seconds after which a round may close.")
    ] = None,
    min_updates: Annotated[
        int | None, typer.Option(help="Updates needed to close at the deadline.")
    ] = None,
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
    """Aggregate a region's client updates into one partial aggregate per round (numpy only)."""
    mqtt = _mqtt(
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
    settings = _configure(
        config,
        {
            **mqtt,
            "fog.expected_updates": expected,
            "fog.deadline_s": deadline,
            "fog.min_updates": min_updates,
        },
    )
    from fogfl.roles import fog_broker as role

    _exit(
        role.run(
            settings,
            region,
            settings.fog.expected_updates,
            settings.fog.deadline_s,
            settings.fog.min_updates,
        )
    )


@app.command("fog-bridge")
def fog_bridge(
    region: Region,
    server: Annotated[Optional[str], typer.Option(help="Flower server address, HOST:PORT.")] = None,  # noqa: UP045
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for a round's partial.")
    ] = None,
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
    """Hand the region's partial aggregates to the Flower server as one Flower client."""
    mqtt = _mqtt(
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
    settings = _configure(
        config, {**mqtt, "bridge.server_address": server, "bridge.partial_timeout_s": timeout}
    )
    from fogfl.roles import fog_bridge as role

    _exit(role.run(settings, region, settings.bridge.server_address))


@app.command()
def server(
    rounds: Annotated[Optional[int], typer.Option(help="Federated rounds.")] = None,  # noqa: UP045
    min_regions: Annotated[Optional[int], typer.Option(help="Regions each round needs.")] = None,  # noqa: UP045
    address: Annotated[
        str | None, typer.Option(help="Flower server listen address, HOST:PORT.")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Where to write the run's outputs.")] = None,
    run_id: Annotated[Optional[str], typer.Option(help="Run id (default: time + random).")] = None,  # noqa: UP045
    task: Task = None,
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
    """Run Flower's FedAvg over the regions and publish each global model over MQTT."""
    mqtt = _mqtt(
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
    settings = _configure(
        config,
        {
            **mqtt,
            "federation.rounds": rounds,
            "federation.min_regions": min_regions,
            "federation.run_id": run_id,
            "server.address": address,
            "server.run_dir": run_dir,
            "task.name": task,
        },
    )
    from fogfl.roles import server as role

    _exit(role.run(settings))


@app.command()
def monitor(
    filter: Annotated[
        str | None, typer.Option("--filter", help="Topic filter (default <prefix>/#).")
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON object per message, no live view.")
    ] = False,
    duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.")] = None,  # noqa: UP045
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
    """Watch every fogfl message live: topic, kind, round, sender, bytes; per-region progress."""
    import json
    from collections import deque

    from rich.live import Live

    from fogfl.roles.monitor import MonitorState, Observation, watch
    from fogfl.views import monitor_view

    mqtt = _mqtt(
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
    settings = _configure(config, mqtt)
    state = MonitorState(settings.expected_updates)
    messages = watch(settings, filter, duration)
    if json_lines:
        for seen in messages:
            print(json.dumps(seen.as_dict()), flush=True)
        return
    recent: deque[Observation] = deque(maxlen=15)
    with Live(monitor_view(state, recent), console=Console(), refresh_per_second=4) as live:
        for seen in messages:
            state.add(seen, Topics(settings.mqtt.topic_prefix))
            recent.append(seen)
            live.update(monitor_view(state, recent))


@app.command()
def up(
    rounds: Annotated[Optional[int], typer.Option(help="Federated rounds [default: 5].")] = None,  # noqa: UP045
    regions: Annotated[int | None, typer.Option(help="Regions (fog sites) [default: 2].")] = None,
    clients_per_region: Annotated[
        int | None, typer.Option(help="Clients per region [default: 3].")
    ] = None,
    task: Task = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Output directory [default: runs/<run id>].")
    ] = None,
    broker: Annotated[
        str,
        typer.Option(
            help="auto (Mosquitto if installed, else embedded), mosquitto, embedded or external."
        ),
    ] = "auto",
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
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
    """Start a whole local federation (broker, server, fog brokers, bridges, clients) and run it."""
    import signal
    import time

    from rich.live import Live

    from fogfl.roles.launcher import Federation, region_names
    from fogfl.run_dir import new_run_id
    from fogfl.views import rounds_table, up_view

    if broker not in ("auto", "mosquitto", "embedded", "external"):
        raise typer.BadParameter(
            "must be auto, mosquitto, embedded or external", param_hint="--broker"
        )
    mqtt = _mqtt(
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
    settings = _configure(
        config,
        {
            **mqtt,
            "federation.rounds": rounds,
            "federation.regions": region_names(regions) if regions else None,
            "federation.clients_per_region": clients_per_region,
            "task.name": task,
        },
    )
    settings.federation.run_id = settings.federation.run_id or new_run_id()
    directory = run_dir or settings.server.run_dir or Path("runs") / settings.federation.run_id
    # SIGTERM (e.g. from a test harness or `kill`) stops the federation like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    plan = settings.federation
    out = Console()
    out.print(
        f"fogfl up: run [bold]{plan.run_id}[/], {plan.rounds} rounds, "
        f"{len(plan.regions)} regions × {plan.clients_per_region} clients, "
        f"task {settings.task.name}, outputs in {directory}"
    )
    started = time.monotonic()
    with Federation(settings, broker, directory, timeout) as federation:  # type: ignore[arg-type]
        out.print(f"broker: {federation.broker.kind if federation.broker else '?'}")
        rounds_total = settings.federation.rounds
        with Live(
            up_view([], 0, rounds_total, 0.0), console=out, refresh_per_second=4, transient=True
        ) as live:
            while not (status := federation.poll()).finished:
                live.update(
                    up_view(
                        status.rows, status.rounds_done, rounds_total, time.monotonic() - started
                    )
                )
                time.sleep(0.25)
    out.print(rounds_table(status.rows, title=f"run {settings.federation.run_id}"))
    if status.failure:
        console.print(f"[bold red]fogfl up failed:[/] {status.failure}", highlight=False)
        raise typer.Exit(1)
    out.print(f"done in {time.monotonic() - started:.1f} s; outputs in {directory}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


app.command("dissemination")(dissemination)


def _exit(code: int) -> None:
    raise typer.Exit(code)


@app.callback(invoke_without_command=True)
def _version(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"fogfl {__version__}")
        raise typer.Exit(0)


def main() -> None:
    """Entry point: FogflErrors become one readable line and exit code 2, not a traceback."""
    try:
        app()
    except FogflError as error:
        console.print(f"[bold red]fogfl:[/] {error}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


from fogfl.health import health  # noqa: E402

app.command("health")(health)
