"""The `fogfl` command: parse flags, load the validated configuration, call a role's `run`."""

from __future__ import annotations

import enum
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from fogfl import __version__
from fogfl.config import FogflConfig, load_config
from fogfl.dissemination.cli import dissemination
from fogfl.errors import ConfigError, FogflError
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


class HealthCheck(str, enum.Enum):
    mqtt = "mqtt"
    tcp = "tcp"


BUILT_IN = FogflConfig()
# Configuration key -> the flag that sets it, so that an invalid value names its flag.
FLAG_OF_KEY: dict[str, str] = {}


def setting(flag: str, key: str, help: str, shown: str | None = None) -> Any:
    """A flag that sets configuration `key`. Its value is None unless given, so that the
    file and the environment show through; `--help` shows the key's built-in default (or
    `shown`) instead of that None."""
    FLAG_OF_KEY[key] = flag.split("/")[0]
    default = _built_in(key) if shown is None else shown
    if default:
        help = f"{help} [default: {default}]"
    return typer.Option(flag, help=help, show_default=False)


def _built_in(key: str) -> str:
    value: Any = BUILT_IN
    for part in key.split("."):
        value = getattr(value, part)
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


# Typer reads annotations at runtime, hence Optional[...] rather than `X | None` in places.
ConfigFile = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--config", "-c", help="YAML configuration file.", envvar="FOGFL_CONFIG", show_default=False
    ),
]
MqttHost = Annotated[Optional[str], setting("--mqtt-host", "mqtt.host", "MQTT broker host.")]  # noqa: UP045
MqttPort = Annotated[Optional[int], setting("--mqtt-port", "mqtt.port", "MQTT broker port.")]  # noqa: UP045
MqttUsername = Annotated[
    Optional[str],  # noqa: UP045
    setting(
        "--mqtt-username",
        "mqtt.username",
        "MQTT username [default: the identity in --credentials].",
    ),
]
MqttPassword = Annotated[
    Optional[str],  # noqa: UP045
    setting("--mqtt-password", "mqtt.password", "MQTT password."),
]
Credentials = Annotated[
    Optional[Path],  # noqa: UP045
    setting(
        "--credentials",
        "security.credentials",
        "The credentials `fogfl certs DIR` wrote: DIR, or this role's own directory in it.",
    ),
]
Tls = Annotated[
    Optional[bool],  # noqa: UP045
    setting(
        "--tls/--no-tls",
        "security.tls",
        "MQTT over TLS with client certificates, and TLS on the Flower channel.",
        "no-tls",
    ),
]
Insecure = Annotated[
    Optional[bool],  # noqa: UP045
    setting(
        "--insecure",
        "security.insecure",
        "Run open, for experiments only: no logins, no TLS, no signatures.",
        "off",
    ),
]
LogLevel = Annotated[
    Optional[str],  # noqa: UP045
    setting("--log-level", "log_level", "DEBUG, INFO, WARNING or ERROR."),
]
Task = Annotated[
    Optional[str],  # noqa: UP045
    setting(
        "--task",
        "task.name",
        "Workload to federate: qoe, ecg5000, synthetic, a name installed under the fogfl.tasks "
        "entry point, or your own class as package.module:ClassName (docs/tasks.md).",
    ),
]
Region = Annotated[
    str,
    typer.Option(
        help="The region (fog site) this process serves.",
        envvar="FOGFL_REGION",
        show_default=False,
    ),
]
Serve = Annotated[
    bool,
    typer.Option(
        "--serve",
        help="Stay up across runs: after a run ends, wait for the next one and join it.",
        envvar="FOGFL_SERVE",
    ),
]
OptionalInt = Optional[int]  # noqa: UP045
OptionalFloat = Optional[float]  # noqa: UP045
OptionalStr = Optional[str]  # noqa: UP045
OptionalPath = Optional[Path]  # noqa: UP045

# The flags every command takes, and the configuration key each one sets.
SHARED_FLAGS: dict[str, tuple[Any, str]] = {
    "config": (ConfigFile, ""),
    "mqtt_host": (MqttHost, "mqtt.host"),
    "mqtt_port": (MqttPort, "mqtt.port"),
    "mqtt_username": (MqttUsername, "mqtt.username"),
    "mqtt_password": (MqttPassword, "mqtt.password"),
    "credentials": (Credentials, "security.credentials"),
    "tls": (Tls, "security.tls"),
    "insecure": (Insecure, "security.insecure"),
    "log_level": (LogLevel, "log_level"),
}


@dataclass(frozen=True)
class Settings:
    """The shared flags of one invocation: a config file and the keys the flags set."""

    config_file: Path | None
    overrides: dict[str, Any]

    def load(self, overrides: dict[str, Any] | None = None) -> FogflConfig:
        """The validated configuration, with logging set up to its level."""
        given = {**self.overrides, **(overrides or {})}
        sources = {
            key: FLAG_OF_KEY[key] if "password" in key else f"{FLAG_OF_KEY[key]} {value}"
            for key, value in given.items()
            if key in FLAG_OF_KEY and value is not None
        }
        config = load_config(self.config_file, given, sources=sources)
        setup_logging(config.log_level)
        return config


def with_shared_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` the flags every command takes (`--config`, `--mqtt-*`,
    `--credentials`, `--tls`, `--insecure`, `--log-level`); it receives them as one
    `settings: Settings` argument."""
    hints = typing.get_type_hints(command, include_extras=True)
    own = [
        parameter.replace(annotation=hints[name])
        for name, parameter in inspect.signature(command).parameters.items()
        if name != "settings"
    ]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        for name, (annotation, _) in SHARED_FLAGS.items()
    ]

    @functools.wraps(command)
    def with_settings(**values: Any) -> None:
        flags = {name: values.pop(name) for name in SHARED_FLAGS}
        overrides = {key: flags[name] for name, (_, key) in SHARED_FLAGS.items() if key}
        if overrides["log_level"]:
            overrides["log_level"] = overrides["log_level"].upper()
        command(**values, settings=Settings(flags["config"], overrides))

    with_settings.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    with_settings.__annotations__ = {p.name: p.annotation for p in [*own, *shared]}
    return with_settings


@app.command()
@with_shared_flags
def client(
    id: Annotated[
        str,
        typer.Option(
            "--id",
            help="This client's id, unique in the federation.",
            envvar="FOGFL_CLIENT_ID",
            show_default=False,
        ),
    ],
    region: Region,
    task: Task = None,
    torch_threads: Annotated[int, typer.Option(help="CPU threads for training.")] = 1,
    serve: Serve = False,
    *,
    settings: Settings,
) -> None:
    """Train on local data each round and publish the update to the region's fog broker."""
    config = settings.load({"task.name": task})
    from fogfl.roles import client as role

    _exit(role.run(config, id, region, torch_threads, serve))


@app.command("fog-broker")
@with_shared_flags
def fog_broker(
    region: Region,
    expected: Annotated[
        OptionalInt,
        setting(
            "--expected",
            "fog.expected_updates",
            "Updates that close a round.",
            "federation.clients_per_region, or the round's announced participants",
        ),
    ] = None,
    deadline: Annotated[
        OptionalFloat,
        setting("--deadline", "fog.deadline_s", "Seconds after which a round may close."),
    ] = None,
    min_updates: Annotated[
        OptionalInt,
        setting("--min-updates", "fog.min_updates", "Updates needed to close at the deadline."),
    ] = None,
    state_dir: Annotated[
        OptionalPath,
        setting("--state-dir", "fog.state_dir", "Where the open round is kept across restarts."),
    ] = None,
    serve: Serve = False,
    *,
    settings: Settings,
) -> None:
    """Aggregate a region's client updates into one partial aggregate per round (numpy only)."""
    config = settings.load(
        {
            "fog.expected_updates": expected,
            "fog.deadline_s": deadline,
            "fog.min_updates": min_updates,
            "fog.state_dir": state_dir,
        }
    )
    from fogfl.roles import fog_broker as role

    _exit(
        role.run(
            config,
            region,
            config.fog.expected_updates,
            config.fog.deadline_s,
            config.fog.min_updates,
            serve,
        )
    )


@app.command("fog-bridge")
@with_shared_flags
def fog_bridge(
    region: Region,
    server: Annotated[
        OptionalStr,
        setting("--server", "bridge.server_address", "Flower server address, HOST:PORT."),
    ] = None,
    timeout: Annotated[
        OptionalFloat,
        setting("--timeout", "bridge.partial_timeout_s", "Seconds to wait for a round's partial."),
    ] = None,
    server_wait: Annotated[
        OptionalFloat,
        setting(
            "--server-wait",
            "bridge.server_wait_s",
            "Seconds to wait for the Flower server to listen (at start and after it went away).",
        ),
    ] = None,
    serve: Serve = False,
    *,
    settings: Settings,
) -> None:
    """Hand the region's partial aggregates to the Flower server as one Flower client; rejoin
    a server that restarts."""
    config = settings.load(
        {
            "bridge.server_address": server,
            "bridge.partial_timeout_s": timeout,
            "bridge.server_wait_s": server_wait,
        }
    )
    from fogfl.roles import fog_bridge as role

    _exit(role.run(config, region, config.bridge.server_address, serve))


@app.command()
@with_shared_flags
def server(
    rounds: Annotated[
        OptionalInt, setting("--rounds", "federation.rounds", "Federated rounds.")
    ] = None,
    min_regions: Annotated[
        OptionalInt,
        setting(
            "--min-regions",
            "federation.min_regions",
            "Regions each round needs; a round with fewer fails the run.",
            "all",
        ),
    ] = None,
    address: Annotated[
        OptionalStr,
        setting("--address", "server.address", "Flower server listen address, HOST:PORT."),
    ] = None,
    run_dir: Annotated[
        OptionalPath,
        setting(
            "--run-dir", "server.run_dir", "Where to write the run's outputs.", "runs/<run id>"
        ),
    ] = None,
    run_id: Annotated[
        OptionalStr,
        setting("--run-id", "federation.run_id", "Run id.", "the time and a random suffix"),
    ] = None,
    task: Task = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --run-dir (or server.run_dir) from its last completed "
            "round; its config.yaml is the configuration unless --config is given.",
        ),
    ] = False,
    *,
    settings: Settings,
) -> None:
    """Run the configured Flower strategy over the regions (server.strategy: fedavg, fedprox,
    fedadam, fedmedian, fedtrimmedavg or an import path) and publish each global model over
    MQTT."""
    if resume and settings.config_file is None and run_dir is not None:
        from fogfl.run_dir import CONFIG_FILE

        if (run_dir / CONFIG_FILE).is_file():
            settings = Settings(run_dir / CONFIG_FILE, settings.overrides)
    config = settings.load(
        {
            "federation.rounds": rounds,
            "federation.min_regions": min_regions,
            "federation.run_id": run_id,
            "server.address": address,
            "server.run_dir": run_dir,
            "task.name": task,
        }
    )
    from fogfl.roles import server as role

    _exit(role.run(config, resume))


@app.command()
@with_shared_flags
def monitor(
    filter: Annotated[
        OptionalStr,
        typer.Option("--filter", help="Topic filter [default: <prefix>/#].", show_default=False),
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON object per message, no live view.")
    ] = False,
    duration: Annotated[
        OptionalFloat,
        typer.Option(
            help="Stop after this many seconds, the wait for the broker included "
            "[default: run until stopped].",
            show_default=False,
        ),
    ] = None,
    links_counters: Annotated[
        OptionalPath,
        typer.Option(
            help="The links runner's counters.json, for each client's link state and rate "
            "[default: <server.run_dir>/links/counters.json, when it exists].",
            show_default=False,
        ),
    ] = None,
    *,
    settings: Settings,
) -> None:
    """Watch every fogfl message live: topic, kind, round, sender, bytes; per-region progress;
    per-client transfer times (and link state, with emulated links)."""
    import json
    import time
    from collections import deque

    from rich.live import Live

    from fogfl.roles.monitor import MonitorState, Observation, watch
    from fogfl.views import monitor_view

    config = settings.load()
    state = MonitorState()
    messages = watch(config, filter, duration)
    if json_lines:
        for seen in messages:
            print(json.dumps(seen.as_dict()), flush=True)
        return
    recent: deque[Observation] = deque(maxlen=15)
    topics = Topics(config.mqtt.topic_prefix)
    if links_counters is None and config.server.run_dir is not None:
        links_counters = config.server.run_dir / "links" / "counters.json"
    links_read = 0.0
    with Live(monitor_view(state, recent), console=Console(), refresh_per_second=4) as live:
        for seen in messages:
            state.add(seen, topics)
            if links_counters is not None and time.monotonic() - links_read >= 1.0:
                state.read_links(links_counters)
                links_read = time.monotonic()
            recent.append(seen)
            live.update(monitor_view(state, recent))


@app.command()
@with_shared_flags
def up(
    rounds: Annotated[
        OptionalInt, setting("--rounds", "federation.rounds", "Federated rounds.")
    ] = None,
    regions: Annotated[
        OptionalInt,
        typer.Option(
            help="Regions (fog sites), named north, south, east, west, then region1, … "
            f"[default: {len(BUILT_IN.federation.regions)}]",
            show_default=False,
        ),
    ] = None,
    clients_per_region: Annotated[
        OptionalInt,
        setting("--clients-per-region", "federation.clients_per_region", "Clients per region."),
    ] = None,
    task: Task = None,
    run_dir: Annotated[
        OptionalPath,
        typer.Option(help="Output directory [default: runs/<run id>].", show_default=False),
    ] = None,
    broker: Annotated[
        str,
        typer.Option(
            help="auto (Mosquitto if installed, else embedded), mosquitto, embedded or external."
        ),
    ] = "auto",
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
    links: Annotated[
        OptionalPath,
        typer.Option(
            help="A YAML file with a `links:` section: emulated links between the clients and "
            "the broker, instead of the config's (docs/links.md).",
            show_default=False,
        ),
    ] = None,
    *,
    settings: Settings,
) -> None:
    """Start a whole local federation (broker, server, fog brokers, bridges, clients) and run it."""
    import signal
    import time

    from rich.live import Live

    from fogfl.config import region_names
    from fogfl.roles.launcher import Federation, preflight
    from fogfl.run_dir import new_run_id
    from fogfl.views import rounds_table, up_view

    if broker not in ("auto", "mosquitto", "embedded", "external"):
        raise typer.BadParameter(
            "must be auto, mosquitto, embedded or external", param_hint="--broker"
        )
    if regions is not None and regions < 1:
        raise ConfigError(f"--regions {regions}: a federation needs at least one region")
    config = settings.load(
        {
            "federation.rounds": rounds,
            "federation.regions": region_names(regions) if regions is not None else None,
            "federation.clients_per_region": clients_per_region,
            "task.name": task,
        }
    )
    if links is not None:
        from fogfl.links.settings import read_links_file

        config.links = read_links_file(links)
    plan = config.federation
    plan.run_id = plan.run_id or new_run_id()
    directory = run_dir or config.server.run_dir or Path("runs") / plan.run_id
    preflight(config, broker)  # type: ignore[arg-type]
    # SIGTERM (e.g. from a test harness or `kill`) stops the federation like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    out = Console()
    out.print(
        f"fogfl up: run [bold]{plan.run_id}[/], {plan.rounds} rounds, "
        f"{len(plan.regions)} regions × {plan.clients_per_region} clients, "
        f"task {config.task.name}, outputs in {directory}"
    )
    started = time.monotonic()
    try:
        with Federation(config, broker, directory, timeout) as federation:  # type: ignore[arg-type]
            out.print(f"broker: {federation.broker.kind if federation.broker else '?'}")
            with Live(
                up_view([], 0, plan.rounds, 0.0), console=out, refresh_per_second=4, transient=True
            ) as live:
                while not (status := federation.poll()).finished:
                    elapsed = time.monotonic() - started
                    live.update(up_view(status.rows, status.rounds_done, plan.rounds, elapsed))
                    time.sleep(0.25)
    except KeyboardInterrupt:
        # Everything is stopped; a further Ctrl-C must not turn the exit into a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        console.print(
            f"interrupted; every process stopped; partial results in {directory}",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    out.print(rounds_table(status.rows, title=f"run {plan.run_id}"))
    if status.failure:
        console.print(f"[bold red]fogfl up failed:[/] {status.failure}", highlight=False)
        raise typer.Exit(1)
    out.print(f"done in {time.monotonic() - started:.1f} s; outputs in {directory}")


@app.command()
def new(
    directory: Annotated[
        Path, typer.Argument(help="Where to write the project: a new or empty directory.")
    ],
) -> None:
    """Write a starter project: a task of your own (digits_task.py), a fogfl.yaml that names
    it and a README; `fogfl up --config DIRECTORY/fogfl.yaml` runs it."""
    from fogfl.templates import write_starter

    written = write_starter(directory)
    Console().print(
        f"wrote {', '.join(path.name for path in written)} to {directory}\n"
        f"next: pip install scikit-learn && fogfl up --config {directory / 'fogfl.yaml'}",
        highlight=False,
    )


@app.command()
@with_shared_flags
def certs(
    directory: Annotated[
        Path, typer.Argument(help="Where to write the credentials.", show_default=False)
    ],
    host: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--host",
            help="A name or address the broker and the Flower server are reached by, besides "
            "localhost (repeatable), e.g. --host mosquitto --host server.",
            show_default=False,
        ),
    ] = None,
    owner: Annotated[
        OptionalStr,
        typer.Option(
            help="UID:GID to own every identity's directory (as root; e.g. 10001:10001, the "
            "fogfl image's user).",
            show_default=False,
        ),
    ] = None,
    broker_owner: Annotated[
        OptionalStr,
        typer.Option(
            help="UID:GID to own broker/ (as root; e.g. 1883:1883, eclipse-mosquitto's user).",
            show_default=False,
        ),
    ] = None,
    *,
    settings: Settings,
) -> None:
    """Write a federation's credentials: a CA, broker and server certificates, and per
    identity a password, a client certificate and a signing key (docs/security.md)."""
    from fogfl.mqtt import Topics
    from fogfl.security.bundle import BROKER_DIR, IDENTITY_FILE, provision
    from fogfl.security.identities import federation_identities
    from fogfl.security.ownership import Owner, hand_over

    config = settings.load()
    owners = [Owner.parse(given) if given else None for given in (owner, broker_owner)]
    identities = federation_identities(config)
    new = provision(directory, identities, Topics(config.mqtt.topic_prefix), host or ())
    if owners[0] is not None:
        hand_over(sorted(path.parent for path in directory.glob(f"*/{IDENTITY_FILE}")), owners[0])
    if owners[1] is not None:
        hand_over([directory / BROKER_DIR], owners[1])
    kept = len(identities) - len(new)
    out = Console()
    out.print(
        f"{directory}: credentials for {len(new)} new identities"
        + (f", {kept} kept as they were" if kept else "")
        + f" (regions {', '.join(config.federation.regions)})"
    )
    out.print(
        f"  broker: {directory / 'broker'} (passwd, acl, certificates); each role: "
        f"--credentials {directory}",
        highlight=False,
    )


@app.command()
@with_shared_flags
def health(
    check: Annotated[
        HealthCheck, typer.Argument(help="mqtt: the broker; tcp: HOST:PORT.", show_default=False)
    ],
    address: Annotated[
        OptionalStr, typer.Argument(help="HOST:PORT, for tcp.", show_default=False)
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to keep trying before giving up.")] = 3.0,
    *,
    settings: Settings,
) -> None:
    """Exit 0 if the broker (mqtt) or HOST:PORT (tcp) answers within --timeout, else 1."""
    from fogfl.health import Unhealthy, check_mqtt, check_tcp

    if check is HealthCheck.tcp and address is None:
        raise typer.BadParameter(
            "the tcp check needs HOST:PORT, e.g. `fogfl health tcp server:8080`"
        )
    if check is HealthCheck.mqtt and address is not None:
        raise typer.BadParameter("the mqtt check takes no address; use --mqtt-host and --mqtt-port")
    try:
        if check is HealthCheck.tcp:
            typer.echo(check_tcp(str(address), timeout))
        else:
            typer.echo(check_mqtt(settings.load({"mqtt.connect_timeout_s": timeout})))
    except Unhealthy as problem:
        typer.echo(f"unhealthy: {problem}", err=True)
        raise typer.Exit(1) from None


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
        console.print(f"[bold red]fogfl:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


from fogfl.sim.cli import report, sim  # noqa: E402

app.command("sim")(sim)
app.command("report")(report)

from fogfl.bandwidth.cli import agent_app, bandwidth_app  # noqa: E402

app.add_typer(bandwidth_app, name="bandwidth")
app.add_typer(agent_app, name="agent")
