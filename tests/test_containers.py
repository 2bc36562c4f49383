"""The container files: the compose file is valid and every service's command is a fogfl
invocation that parses; the Mosquitto configurations run on a real Mosquitto (the compose
broker, its per-role ACL, a bridged fog site); `fogfl health` tells up from down.

No Docker engine runs here, so nothing is built or started with Docker: compose's variable
interpolation and the containers' shell are reproduced just enough to get each argv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import typer
import yaml

from fogfl.broker import LocalBroker, mosquitto_binary
from fogfl.cli import app
from fogfl.config import MqttSettings, load_config
from fogfl.logs import role_logger
from fogfl.mqtt import MqttSession, Received
from fogfl.processes import ChildProcess, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
MOSQUITTO_DIR = ROOT / "mosquitto"
# Docker names a container's host after its id; replicas of one service differ only here.
HOSTNAMES = ("3f2a9c1b7d4e", "b81c0e7a9f25")
LOG = role_logger("test")


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _is_fogfl(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).split(":")[0] == "fogfl"


FOGFL_SERVICES = sorted(name for name, service in _services().items() if _is_fogfl(service))


def _interpolate(value: str) -> str:
    """Compose's interpolation with every variable unset: ${VAR:-default} → default, $$ → $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        assert match.group(2) is not None, (
            f"{match.group(0)} has no default; compose would need it set"
        )
        return match.group(2)

    return re.sub(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}", replace, value)


def _argv(service: dict[str, Any], hostname: str = HOSTNAMES[0]) -> list[str]:
    """The argv a fogfl service's container runs (the image's ENTRYPOINT is `fogfl`)."""
    entrypoint = service.get("entrypoint")
    command = service.get("command", [])
    assert entrypoint is None or isinstance(entrypoint, list), "use the exec (list) form"
    assert isinstance(command, list), "use the exec (list) form"
    if entrypoint is None:
        return ["fogfl", *(_interpolate(part) for part in command)]
    if entrypoint[:2] == ["sh", "-c"]:
        assert len(entrypoint) == 3 and not command, "sh -c takes one script"
        script = re.sub(r"\$\{?HOSTNAME\}?", hostname, _interpolate(entrypoint[2]))
        words = shlex.split(script)
        assert words[0] == "exec", "exec the role so that it gets Docker's stop signal"
        return words[1:]
    return [_interpolate(part) for part in [*entrypoint, *command]]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "use the mapping form of environment"
    return {key: _interpolate(str(value)) for key, value in environment.items()}


def _parse(argv: list[str]) -> dict[str, Any]:
    """Parse a fogfl argv exactly as the CLI would, without running the command."""
    assert argv[0] == "fogfl", f"{argv} does not run fogfl"
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    with group.make_context("fogfl", argv[1:]) as context:
        name, command, rest = group.resolve_command(
            context, [*context.protected_args, *context.args]
        )
        assert name is not None and command is not None
        with command.make_context(name, rest, parent=context) as sub_context:
            return {"command": name, **sub_context.params}


# --- The compose file --------------------------------------------------------------------


def _compose_schema_failure(path: Path) -> str | None:
    """check-jsonschema's verdict on a compose file: None if valid, else its report."""
    result = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "not subscriptable" in result.stderr:
        # check-jsonschema 0.38.1 imports click ≥ 8.2 features but declares click ≥ 8, and
        # fogfl's typer pin holds click at 8.1 (upstream issue #719): its CLI cannot start.
        # Validate against the very schema it vendors instead.
        return _vendored_schema_failure(path)
    return None if result.returncode == 0 else result.stdout + result.stderr


def _vendored_schema_failure(path: Path) -> str | None:
    import jsonschema

    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.submodule_search_locations
    schema_path = Path(
        spec.submodule_search_locations[0], "builtin_schemas", "vendor", "compose-spec.json"
    )
    schema = json.loads(schema_path.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [
        f"{error.json_path}: {error.message}"
        for error in validator.iter_errors(yaml.safe_load(path.read_text()))
    ]
    return "\n".join(errors) or None


def test_compose_file_passes_the_compose_schema() -> None:
    assert _compose_schema_failure(COMPOSE_FILE) is None


def test_the_schema_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("healthcheck:", "healthchek:", 1))
    failure = _compose_schema_failure(broken)
    assert failure is not None and "healthchek" in failure


def test_compose_runs_the_broker_the_server_and_two_regions() -> None:
    services = _services()
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    roles = {name: _parse(_argv(services[name]))["command"] for name in FOGFL_SERVICES}
    for region in ("north", "south"):
        assert roles[f"fog-{region}"] == "fog-broker"
        assert roles[f"bridge-{region}"] == "fog-bridge"
        assert roles[f"client-{region}"] == "client"
    assert roles["server"] == "server"


def test_the_image_runs_fogfl() -> None:
    assert 'ENTRYPOINT ["fogfl"]' in (ROOT / "Dockerfile").read_text().splitlines()


@pytest.mark.parametrize("name", FOGFL_SERVICES)
def test_every_fogfl_service_command_parses(name: str) -> None:
    service = _services()[name]
    params = _parse(_argv(service))
    settings = load_config(None, environ=_environment(service))
    if "region" in params:
        assert params["region"] in settings.federation.regions


@pytest.mark.parametrize("name", FOGFL_SERVICES)
def test_every_fogfl_service_health_check_parses(name: str) -> None:
    test = _services()[name]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert _parse([_interpolate(part) for part in test[1:]])["command"] == "health"


@pytest.mark.parametrize("name", [n for n in FOGFL_SERVICES if "profiles" not in _services()[n]])
def test_fogfl_services_started_by_up_end_with_the_run(name: str) -> None:
    assert _services()[name]["restart"] == "on-failure"


@pytest.mark.parametrize("name", [n for n in FOGFL_SERVICES if n.startswith("client-")])
def test_client_replicas_get_distinct_ids(name: str) -> None:
    service = _services()[name]
    ids = {_parse(_argv(service, hostname))["id"] for hostname in HOSTNAMES}
    assert len(ids) == len(HOSTNAMES)
    replicas = int(_interpolate(str(service["deploy"]["replicas"])))
    fog = _services()[name.replace("client-", "fog-")]
    assert load_config(None, environ=_environment(fog)).expected_updates == replicas


def test_bridges_reach_the_server_on_the_port_it_listens_on() -> None:
    services = _services()
    server = _parse(_argv(services["server"]))
    listen_port = server["address"].rpartition(":")[2]
    health_test = services["server"]["healthcheck"]["test"]
    assert health_test[-1].endswith(f":{listen_port}")
    for name in ("bridge-north", "bridge-south"):
        host, _, port = _parse(_argv(services[name]))["server"].rpartition(":")
        assert (host, port) == ("server", listen_port)
        assert services[name]["depends_on"]["server"]["condition"] == "service_healthy"


def _mounted_host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind `container_path` in a service's bind mounts."""
    target = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        source, mount_point = volume.split(":")[:2]
        if target == PurePosixPath(mount_point) or PurePosixPath(mount_point) in target.parents:
            return ROOT / source / target.relative_to(mount_point)
    raise AssertionError(f"{container_path} is not mounted into the service")


def _mosquitto_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in _services().items()
        if str(service.get("image", "")).startswith("eclipse-mosquitto")
    }


def test_mosquitto_service_reads_our_conf_and_its_referenced_files() -> None:
    assert _mosquitto_services()
    for service in _mosquitto_services().values():
        command = service["command"]
        conf = _mounted_host_path(service, command[command.index("-c") + 1])
        assert conf.resolve() == (MOSQUITTO_DIR / "mosquitto.conf").resolve()
        # Files the conf names, including the commented-out ACL lines a user switches on.
        for match in re.finditer(r"^#?(?:acl_file|password_file) (\S+)$", conf.read_text(), re.M):
            if "passwd" not in match.group(1):  # made by the user with mosquitto_passwd
                assert _mounted_host_path(service, match.group(1)).is_file()


def test_every_compose_mqtt_user_has_acl_rules() -> None:
    users = set(re.findall(r"^user (\S+)$", (MOSQUITTO_DIR / "acl").read_text(), re.M))
    for name in FOGFL_SERVICES:
        assert _environment(_services()[name])["FOGFL_MQTT__USERNAME"] in users


# --- fogfl health ------------------------------------------------------------------------


def _fogfl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fogfl", *args], capture_output=True, text=True, timeout=timeout
    )


def test_health_mqtt_passes_against_a_running_broker(mqtt_broker: LocalBroker) -> None:
    result = _fogfl(
        "health", "mqtt", "--mqtt-host", mqtt_broker.host, "--mqtt-port", str(mqtt_broker.port)
    )
    assert result.returncode == 0, result.stderr


def test_health_mqtt_fails_cleanly_on_a_closed_port() -> None:
    started = time.monotonic()
    result = _fogfl(
        "health",
        "mqtt",
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        str(free_port()),
        "--timeout",
        "1",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("unhealthy: cannot reach the MQTT broker")
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 20


def test_health_tcp_tells_an_open_port_from_a_closed_one(mqtt_broker: LocalBroker) -> None:
    assert _fogfl("health", "tcp", f"{mqtt_broker.host}:{mqtt_broker.port}").returncode == 0
    closed = _fogfl("health", "tcp", f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert closed.returncode == 1
    assert closed.stderr.startswith("unhealthy: nothing accepts connections")


def test_health_tcp_without_an_address_is_a_usage_error() -> None:
    assert _fogfl("health", "tcp").returncode == 2


# --- Mosquitto configurations on a real Mosquitto ----------------------------------------


@pytest.fixture
def mosquitto(mqtt_broker: LocalBroker) -> str:
    """The Mosquitto binary (conftest's broker fixture fails in CI when there is none)."""
    binary = mosquitto_binary()
    if mqtt_broker.kind != "mosquitto" or binary is None:
        pytest.skip("no mosquitto binary: install the Debian package `mosquitto`")
    return binary


@pytest.fixture
def brokers() -> Iterator[list[ChildProcess]]:
    """Mosquitto processes a test starts; stopped by their PIDs afterwards."""
    started: list[ChildProcess] = []
    yield started
    for process in started:
        process.stop(grace=3.0)


def _start_mosquitto(
    binary: str, conf_text: str, workdir: Path, name: str, started: list[ChildProcess]
) -> int:
    """Run Mosquitto with `conf_text`, its `listener 1883` moved to a free loopback port."""
    port = free_port()
    assert len(re.findall(r"^listener ", conf_text, re.M)) == 1
    conf = workdir / f"{name}.conf"
    conf.write_text(re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", conf_text, flags=re.M))
    process = ChildProcess(name, [binary, "-c", str(conf)], workdir / f"{name}.log")
    started.append(process)
    assert wait_for_port("127.0.0.1", port, 10) and process.poll() is None, process.tail()
    return port


def _password(username: str) -> str:
    return f"{username}-secret"


def _session(
    port: int, username: str | None = None, subscriptions: tuple[str, ...] = ()
) -> MqttSession:
    password = None if username is None else _password(username)
    settings = MqttSettings(
        host="127.0.0.1", port=port, username=username, password=password, connect_timeout_s=5
    )
    return MqttSession(settings, f"test-{username}-{time.monotonic_ns()}", LOG).connect(
        subscriptions
    )


def _collect(session: MqttSession, until_topic: str, timeout: float = 10.0) -> list[Received]:
    """Messages received until one arrives on `until_topic`, then whatever follows shortly."""
    seen: list[Received] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = session.receive(timeout=0.1)
        if message is not None:
            seen.append(message)
            if message.topic == until_topic:
                deadline = min(deadline, time.monotonic() + 0.5)
    return seen


def test_compose_mosquitto_conf_serves_fogfl_and_its_health_check(
    mosquitto: str, tmp_path: Path, brokers: list[ChildProcess]
) -> None:
    port = _start_mosquitto(
        mosquitto, (MOSQUITTO_DIR / "mosquitto.conf").read_text(), tmp_path, "compose", brokers
    )
    assert (
        _fogfl("health", "mqtt", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port)).returncode
        == 0
    )
    if shutil.which("mosquitto_sub") is None:
        pytest.skip(
            "no mosquitto_sub (Debian package `mosquitto-clients`) to run the broker's health check"
        )
    for service in _mosquitto_services().values():
        test = [_interpolate(part) for part in service["healthcheck"]["test"]]
        assert test[0] == "CMD"
        argv = [str(port) if part == "1883" else part for part in test[1:]]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


@pytest.fixture
def acl_broker(mosquitto: str, tmp_path: Path, brokers: list[ChildProcess]) -> int:
    """Mosquitto with mosquitto.conf switched to per-role access control as the docs say."""
    passwd_tool = shutil.which("mosquitto_passwd")
    if passwd_tool is None:
        pytest.skip("no mosquitto_passwd (Debian package `mosquitto`) to make a password file")
    passwd = tmp_path / "passwd"
    for number, user in enumerate(("server", "monitor", "client-north", "client-south")):
        create = ["-c"] if number == 0 else []
        subprocess.run([passwd_tool, *create, "-b", str(passwd), user, _password(user)], check=True)
    conf = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
    for pattern, replacement in (
        (r"^allow_anonymous true$", "#allow_anonymous true"),
        (r"^#allow_anonymous false$", "allow_anonymous false"),
        (r"^#password_file \S+$", f"password_file {passwd}"),
        (r"^#acl_file \S+$", f"acl_file {MOSQUITTO_DIR / 'acl'}"),
    ):
        conf, count = re.subn(pattern, replacement, conf, flags=re.M)
        assert count == 1, f"mosquitto.conf has no line {pattern}"
    if os.geteuid() == 0:  # Mosquitto would switch to its own user, who cannot read tmp_path
        conf += "user root\n"
    return _start_mosquitto(mosquitto, conf, tmp_path, "acl", brokers)


def test_acl_lets_a_client_publish_only_on_its_region(acl_broker: int) -> None:
    with _session(acl_broker, "monitor", ("fl/#",)) as monitor:
        north = _session(acl_broker, "client-north")
        south = _session(acl_broker, "client-south")
        with north, south:
            north.publish("fl/updates/south", b"north into south")
            south.publish("fl/updates/north", b"south into north")
            north.publish("fl/global_model", b"client posing as the server")
            north.publish("fl/updates/north", b"north update")
        with _session(acl_broker, "server") as server:
            server.publish("fl/round", b"round 1")
        seen = [(m.topic, bytes(m.payload)) for m in _collect(monitor, "fl/round")]
    assert seen == [("fl/updates/north", b"north update"), ("fl/round", b"round 1")]


def test_acl_mode_refuses_anonymous_and_wrong_passwords(acl_broker: int) -> None:
    where = ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(acl_broker), "--timeout", "2"]
    server = ["--mqtt-username", "server"]
    assert (
        _fogfl("health", "mqtt", *where, *server, "--mqtt-password", _password("server")).returncode
        == 0
    )
    wrong = _fogfl("health", "mqtt", *where, *server, "--mqtt-password", "guess")
    assert wrong.returncode == 1
    assert "Not authorized" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
    assert _fogfl("health", "mqtt", *where).returncode == 1


def test_fog_site_bridge_sends_partials_up_and_keeps_updates_local(
    mosquitto: str, tmp_path: Path, brokers: list[ChildProcess]
) -> None:
    cloud_port = _start_mosquitto(
        mosquitto, (MOSQUITTO_DIR / "mosquitto.conf").read_text(), tmp_path, "cloud", brokers
    )
    with _session(cloud_port, "server") as server:
        server.publish("fl/global_model", b"global model r1", retain=True)

    site_conf = (MOSQUITTO_DIR / "fog-site.conf").read_text()
    assert re.search(r"^address \S+:1883$", site_conf, re.M)
    site_conf = re.sub(r"^address \S+$", f"address 127.0.0.1:{cloud_port}", site_conf, flags=re.M)
    site_port = _start_mosquitto(mosquitto, site_conf, tmp_path, "site", brokers)

    # Down: the retained global model reaches the site once the bridge is up, and stays
    # retained there for clients that start later.
    with _session(site_port, "fog-north", ("fl/global_model",)) as first:
        assert [bytes(m.payload) for m in _collect(first, "fl/global_model")] == [
            b"global model r1"
        ]
    with _session(site_port, "client-north", ("fl/global_model",)) as client:
        arrived = [(bytes(m.payload), m.retained) for m in _collect(client, "fl/global_model")]
        assert arrived == [(b"global model r1", True)]

        # Up: the partial goes to the cloud (retained, for a bridge that subscribes later);
        # the client's update stays on the site.
        with _session(cloud_port, "monitor", ("fl/#",)) as cloud:
            client.publish("fl/updates/north", b"client update")
            with _session(site_port, "fog-north") as fog:
                fog.publish("fl/partial/north", b"partial r1", retain=True)
            seen = [(m.topic, bytes(m.payload)) for m in _collect(cloud, "fl/partial/north")]
    assert ("fl/partial/north", b"partial r1") in seen
    assert not [topic for topic, _ in seen if topic.startswith("fl/updates/")]
    with _session(cloud_port, "bridge-north", ("fl/partial/north",)) as late_bridge:
        late = _collect(late_bridge, "fl/partial/north")
    assert [(bytes(m.payload), m.retained) for m in late] == [(b"partial r1", True)]
