"""The container files: the compose file and its overrides are valid, every service's
command is a fogfl invocation that parses and runs as the identity whose credentials it
mounts; the shipped Mosquitto configurations run on a real Mosquitto with credentials from
`fogfl certs` for the compose federation (anonymous refused, each identity in with its own
credentials, the ACL enforced, a bridged fog site); `fogfl health` tells up from down.

No Docker engine runs here, so nothing is built or started with Docker: compose's variable
interpolation, file merging and mounts are reproduced just enough to get each service's
argv, environment and files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import typer
import yaml

from fogfl.broker import LocalBroker, mosquitto_binary
from fogfl.cli import app
from fogfl.config import FogflConfig, MqttSettings, TlsSettings, load_config
from fogfl.errors import BrokerError
from fogfl.health import check_mqtt
from fogfl.logs import role_logger
from fogfl.mqtt import MqttSession, Received, Topics
from fogfl.processes import ChildProcess, free_port, wait_for_port
from fogfl.security.bundle import provision
from fogfl.security.identities import (
    Identity,
    bridge_identity,
    client_identity,
    federation_identities,
    fog_identity,
    monitor_identity,
    server_identity,
)
from fogfl.security.role import role_security

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
OVERRIDES = {
    "insecure": ROOT / "docker-compose.insecure.yml",
    "tls": ROOT / "docker-compose.tls.yml",
}
MOSQUITTO_DIR = ROOT / "mosquitto"
CREDENTIALS_SERVICE = "credentials"
TOPICS = Topics("fl")
LOG = role_logger("test")


def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge of `-f` files, as far as these files need it: mappings merge key by
    key, anything else (command, healthcheck test) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def _services(*overrides: str) -> dict[str, dict[str, Any]]:
    """The services of docker-compose.yml, with the named override files on top."""
    compose = _load(COMPOSE_FILE)
    for name in overrides:
        compose = _merge(compose, _load(OVERRIDES[name]))
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _is_fogfl(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).split(":")[0] == "fogfl"


FOGFL_SERVICES = sorted(name for name, service in _services().items() if _is_fogfl(service))
# Every fogfl service but the one-shot that provisions the credentials runs a role.
ROLE_SERVICES = [name for name in FOGFL_SERVICES if name != CREDENTIALS_SERVICE]
UP_SERVICES = [name for name in ROLE_SERVICES if "profiles" not in _services()[name]]


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


def _argv(service: dict[str, Any]) -> list[str]:
    """The argv a fogfl service's container runs (the image's ENTRYPOINT is `fogfl`)."""
    assert "entrypoint" not in service, "keep the image's entrypoint, fogfl"
    command = service.get("command", [])
    assert isinstance(command, list), "use the exec (list) form"
    return ["fogfl", *(_interpolate(part) for part in command)]


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


def _identity(service: dict[str, Any]) -> Identity:
    """The identity a role service's command runs as (its --region, its client --id)."""
    params = _parse(_argv(service))
    role = params["command"]
    if role == "server":
        return server_identity()
    if role == "monitor":
        return monitor_identity()
    if role == "fog-broker":
        return fog_identity(params["region"])
    if role == "fog-bridge":
        return bridge_identity(params["region"])
    assert role == "client", f"{role} is no role"
    return client_identity(params["id"], params["region"])


@dataclass(frozen=True)
class Mount:
    """One entry of a service's `volumes`: a host directory (bind) or a named volume, and
    where in the container it appears."""

    source: str
    target: PurePosixPath
    bind: bool
    subpath: str = ""
    read_only: bool = False


def _mounts(service: dict[str, Any]) -> list[Mount]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *options = volume.split(":")
            bind = source.startswith((".", "/"))
            mounts.append(Mount(source, PurePosixPath(target), bind, "", "ro" in options))
        else:
            mounts.append(
                Mount(
                    volume["source"],
                    PurePosixPath(volume["target"]),
                    volume["type"] == "bind",
                    volume.get("volume", {}).get("subpath", ""),
                    bool(volume.get("read_only", False)),
                )
            )
    return mounts


def _credentials_mounts(service: dict[str, Any]) -> list[Mount]:
    return [mount for mount in _mounts(service) if mount.source == "credentials"]


def _host_path(service: dict[str, Any], container_path: str, volumes: dict[str, Path]) -> Path:
    """The file behind `container_path` in a service's mounts: bind mounts under the
    repository, named volumes (and their subpaths) where `volumes` says they are."""
    wanted = PurePosixPath(container_path)
    for mount in _mounts(service):
        if wanted == mount.target or mount.target in wanted.parents:
            base = ROOT / mount.source if mount.bind else volumes[mount.source] / mount.subpath
            return base / wanted.relative_to(mount.target)
    raise AssertionError(f"{container_path} is not mounted into the service")


def _mosquitto_service(*overrides: str) -> dict[str, Any]:
    service = _services(*overrides)["mosquitto"]
    assert service["image"] == "eclipse-mosquitto:2"
    return service


def _conf_path(service: dict[str, Any]) -> str:
    command = service["command"]
    return str(command[command.index("-c") + 1])


# --- The compose files -------------------------------------------------------------------


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


@pytest.mark.parametrize("path", [COMPOSE_FILE, *OVERRIDES.values()], ids=lambda p: p.name)
def test_compose_files_pass_the_compose_schema(path: Path) -> None:
    assert _compose_schema_failure(path) is None


def test_the_schema_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("{subpath: broker}", "{sub_path: broker}"))
    failure = _compose_schema_failure(broken)
    assert failure is not None and "sub_path" in failure


def test_compose_runs_the_broker_the_server_and_two_regions() -> None:
    services = _services()
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    roles = {name: _parse(_argv(services[name]))["command"] for name in ROLE_SERVICES}
    for region in ("north", "south"):
        assert roles[f"fog-{region}"] == "fog-broker"
        assert roles[f"bridge-{region}"] == "fog-bridge"
    assert roles["server"] == "server"
    assert roles["monitor"] == "monitor"


def test_the_image_runs_fogfl() -> None:
    assert 'ENTRYPOINT ["fogfl"]' in (ROOT / "Dockerfile").read_text().splitlines()


@pytest.mark.parametrize("name", FOGFL_SERVICES)
def test_every_fogfl_service_command_parses(name: str) -> None:
    service = _services()[name]
    params = _parse(_argv(service))
    settings = load_config(None, environ=_environment(service))
    if "region" in params:
        assert params["region"] in settings.federation.regions


@pytest.mark.parametrize("name", ROLE_SERVICES)
def test_every_role_service_health_check_parses(name: str) -> None:
    test = _services()[name]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert _parse([_interpolate(part) for part in test[1:]])["command"] == "health"


@pytest.mark.parametrize("name", UP_SERVICES)
def test_fogfl_services_started_by_up_end_with_the_run(name: str) -> None:
    assert _services()[name]["restart"] == "on-failure"


def _federation(service: dict[str, Any]) -> FogflConfig:
    return load_config(None, environ=_environment(service))


def test_every_client_is_its_own_service_with_the_federations_ids() -> None:
    services = _services()
    config = _federation(services[CREDENTIALS_SERVICE])
    clients = {
        name: _parse(_argv(services[name]))
        for name in ROLE_SERVICES
        if _parse(_argv(services[name]))["command"] == "client"
    }
    expected = {
        f"client-{client_id}": (client_id, region)
        for region, ids in config.federation.client_ids().items()
        for client_id in ids
    }
    assert {name: (p["id"], p["region"]) for name, p in clients.items()} == expected
    for region, ids in config.federation.client_ids().items():
        fog = _federation(services[f"fog-{region}"])
        assert fog.expected_updates == len(ids)


@pytest.mark.parametrize("name", ROLE_SERVICES)
def test_every_role_reads_the_federation_the_credentials_were_made_for(name: str) -> None:
    services = _services()
    provisioned = _federation(services[CREDENTIALS_SERVICE])
    role = _federation(services[name])
    assert role.federation == provisioned.federation
    assert role.mqtt.topic_prefix == provisioned.mqtt.topic_prefix


def test_the_credentials_service_provisions_the_compose_federation_for_its_users() -> None:
    services = _services()
    service = services[CREDENTIALS_SERVICE]
    params = _parse(_argv(service))
    assert params["command"] == "certs"
    (mount,) = _mounts(service)
    assert (mount.source, mount.subpath, mount.read_only) == ("credentials", "", False)
    assert PurePosixPath(params["directory"]) == mount.target
    assert {"mosquitto", "server"} <= set(params["host"])
    image_uid = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert image_uid is not None
    assert params["owner"] == f"{image_uid.group(1)}:{image_uid.group(1)}"
    assert params["broker_owner"] == "1883:1883"  # eclipse-mosquitto's user
    assert service["user"] == "0:0" and service["restart"] == "no"
    assert "healthcheck" not in service
    # Everyone else starts after it has finished, and only if it succeeded.
    for name, other in services.items():
        if name != CREDENTIALS_SERVICE:
            condition = other["depends_on"][CREDENTIALS_SERVICE]["condition"]
            assert condition == "service_completed_successfully", name
    # It provisions exactly the identities the services run as.
    config = _federation(service)
    identities = {identity.name for identity in federation_identities(config)}
    assert identities == {_identity(services[name]).name for name in ROLE_SERVICES}


@pytest.mark.parametrize("name", ROLE_SERVICES)
def test_every_role_mounts_only_its_own_identity_read_only(name: str) -> None:
    service = _services()[name]
    (mount,) = _credentials_mounts(service)
    assert mount.subpath == _identity(service).name
    assert mount.read_only and not mount.bind
    assert _environment(service)["FOGFL_SECURITY__CREDENTIALS"] == str(mount.target)


def test_mosquitto_mounts_only_the_broker_files_read_only() -> None:
    (mount,) = _credentials_mounts(_mosquitto_service())
    assert (mount.subpath, mount.read_only) == ("broker", True)


def test_the_secure_broker_refuses_anonymous_clients_on_every_listener() -> None:
    conf = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
    assert re.findall(r"^allow_anonymous (\S+)$", conf, re.M) == ["false"]
    assert re.search(r"^password_file \S+$", conf, re.M)
    assert re.search(r"^acl_file \S+$", conf, re.M)
    tls_listener = conf.split("listener 8883", 1)[1].split("\nlistener ", 1)[0]
    assert "require_certificate true" in tls_listener
    assert "use_identity_as_username true" in tls_listener


@pytest.mark.parametrize("overrides", [(), ("insecure",)], ids=["secure", "insecure"])
def test_mosquitto_reads_our_conf_and_every_file_it_names(overrides: tuple[str, ...]) -> None:
    service = _mosquitto_service(*overrides)
    conf = _host_path(service, _conf_path(service), {})
    assert conf.parent == MOSQUITTO_DIR and conf.is_file()
    # What `fogfl certs` writes into broker/ (the credentials volume's subpath).
    broker_files = {"passwd", "acl", "ca.crt", "broker.crt", "broker.key"}
    keys = r"password_file|acl_file|cafile|certfile|keyfile|include_dir|persistence_location"
    for key, path in re.findall(rf"^({keys}) (\S+)$", conf.read_text(), re.M):
        mount = next(m for m in _mounts(service) if PurePosixPath(path).is_relative_to(m.target))
        if mount.source == "credentials":
            assert PurePosixPath(path).relative_to(mount.target).as_posix() in broker_files, key
        elif mount.bind:
            assert _host_path(service, path, {}).exists(), key
        else:
            assert key == "persistence_location"


@pytest.mark.parametrize("variant", sorted(OVERRIDES))
def test_overrides_name_only_services_of_the_compose_file(variant: str) -> None:
    named = set(_load(OVERRIDES[variant])["services"])
    assert named - {"mosquitto"} == set(ROLE_SERVICES)


@pytest.mark.parametrize("name", ROLE_SERVICES)
def test_the_insecure_override_runs_every_role_open(name: str) -> None:
    config = _federation(_services("insecure")[name])
    assert config.security.insecure
    conf = _host_path(
        _mosquitto_service("insecure"), _conf_path(_mosquitto_service("insecure")), {}
    )
    assert re.findall(r"^allow_anonymous (\S+)$", conf.read_text(), re.M) == ["true"]


@pytest.mark.parametrize("name", ROLE_SERVICES)
def test_the_tls_override_takes_every_role_to_the_certificate_listener(name: str) -> None:
    config = _federation(_services("tls")[name])
    assert config.security.tls and not config.security.insecure
    conf = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
    assert re.search(rf"^listener {config.mqtt.port}$", conf, re.M)
    assert config.mqtt.port != _federation(_services()[name]).mqtt.port


def test_bridges_reach_the_server_on_the_port_it_listens_on() -> None:
    services = _services()
    server = _parse(_argv(services["server"]))
    listen_port = server["address"].rpartition(":")[2]
    health_test = services["server"]["healthcheck"]["test"]
    assert health_test[-1].endswith(f":{listen_port}")
    for name in ("bridge-north", "bridge-south"):
        host, _, port = _parse(_argv(services[name]))["server"].rpartition(":")
        # `server` is a name the server's certificate carries (fogfl certs), for TLS.
        assert (host, port) == ("server", listen_port)
        assert services[name]["depends_on"]["server"]["condition"] == "service_healthy"


# --- fogfl health ------------------------------------------------------------------------


def _fogfl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fogfl", *args], capture_output=True, text=True, timeout=timeout
    )


def test_health_mqtt_passes_against_a_running_broker(mqtt_broker: LocalBroker) -> None:
    where = ["--mqtt-host", mqtt_broker.host, "--mqtt-port", str(mqtt_broker.port)]
    result = _fogfl("health", "mqtt", *where, "--insecure")  # the fixture's broker is open
    assert result.returncode == 0, result.stderr


def test_health_mqtt_fails_cleanly_on_a_closed_port() -> None:
    result = _fogfl(
        "health",
        "mqtt",
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        str(free_port()),
        "--timeout",
        "1",
        "--insecure",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("unhealthy: cannot reach the MQTT broker")
    assert len(result.stderr.strip().splitlines()) == 1


def test_health_tcp_tells_an_open_port_from_a_closed_one(mqtt_broker: LocalBroker) -> None:
    assert _fogfl("health", "tcp", f"{mqtt_broker.host}:{mqtt_broker.port}").returncode == 0
    closed = _fogfl("health", "tcp", f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert closed.returncode == 1
    assert closed.stderr.startswith("unhealthy: nothing accepts connections")


def test_health_tcp_without_an_address_is_a_usage_error() -> None:
    assert _fogfl("health", "tcp").returncode == 2


# --- The credentials service's files and their owners ------------------------------------


@pytest.fixture
def root_owned_dir() -> Iterator[Path]:
    """A directory others may traverse (not tmp_path, whose parent is root's alone)."""
    if os.geteuid() != 0:
        pytest.skip("handing files to other users needs root, as in the credentials service")
    directory = Path(tempfile.mkdtemp(prefix="fogfl-credentials-"))
    os.chmod(directory, 0o711)
    yield directory
    shutil.rmtree(directory)


def _can_read(path: Path, uid: int) -> bool:
    result = subprocess.run(["cat", str(path)], user=uid, group=uid, capture_output=True)
    return result.returncode == 0


def test_the_credentials_service_gives_each_container_user_its_files(
    root_owned_dir: Path,
) -> None:
    service = _services()[CREDENTIALS_SERVICE]
    volume = root_owned_dir / "credentials"
    argv = _argv(service)
    argv[argv.index("/credentials")] = str(volume)
    environ = {**os.environ, **_environment(service)}
    run = [sys.executable, "-m", *argv]
    first = subprocess.run(run, env=environ, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    password = (volume / "client-north-02" / "password").read_bytes()
    # A container sees its mounted subpath, not the volume's root: let the users through it.
    os.chmod(volume, 0o711)
    image, broker = 10001, 1883
    assert all(_can_read(path, image) for path in (volume / "client-north-02").iterdir())
    assert all(_can_read(path, image) for path in (volume / "server").iterdir())
    assert all(_can_read(path, broker) for path in (volume / "broker").iterdir())
    for secret in ("broker/passwd", "broker/broker.key", "ca.key"):
        assert not _can_read(volume / secret, image), secret
    for secret in ("server/signing.key", "client-north-02/password", "ca.key"):
        assert not _can_read(volume / secret, broker), secret
    assert oct((volume / "client-north-02" / "tls.key").stat().st_mode & 0o777) == "0o600"

    again = subprocess.run(run, env=environ, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (volume / "client-north-02" / "password").read_bytes() == password
    os.chmod(volume, 0o711)
    assert _can_read(volume / "broker" / "passwd", broker)  # rewritten, and handed over again
    assert _can_read(volume / "client-north-02" / "trust.json", image)


# --- The shipped Mosquitto configurations on a real Mosquitto ----------------------------


@pytest.fixture(scope="module")
def mosquitto(mqtt_broker: LocalBroker) -> str:
    """The Mosquitto binary (conftest's broker fixture fails in CI when there is none)."""
    binary = mosquitto_binary()
    if mqtt_broker.kind != "mosquitto" or binary is None:
        pytest.skip("no mosquitto binary: install the Debian package `mosquitto`")
    return binary


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The credentials volume as the credentials service fills it (same federation, same
    hosts), written by fogfl's own provisioning."""
    service = _services()[CREDENTIALS_SERVICE]
    params = _parse(_argv(service))
    config = _federation(service)
    volume = tmp_path_factory.mktemp("credentials-volume")
    provision(
        volume, federation_identities(config), Topics(config.mqtt.topic_prefix), params["host"]
    )
    return volume


@pytest.fixture
def brokers() -> Iterator[list[ChildProcess]]:
    """Mosquitto processes a test starts; stopped by their PIDs afterwards."""
    started: list[ChildProcess] = []
    yield started
    for process in started:
        process.stop(grace=3.0)


@dataclass(frozen=True)
class Broker:
    """A shipped configuration running here: its container ports and where they are."""

    ports: dict[int, int]
    log: Path

    def port(self, container_port: int = 1883) -> int:
        return self.ports[container_port]


_PATH_KEYS = (
    "password_file|acl_file|cafile|certfile|keyfile|include_dir|persistence_location"
    "|bridge_cafile|bridge_certfile|bridge_keyfile"
)


def _rewritten_conf(text: str, resolve: Any, workdir: Path) -> str:
    """A configuration with each container path replaced by `resolve(path)`; an included
    directory is copied into `workdir`, its files rewritten the same way."""

    def replace(match: re.Match[str]) -> str:
        key, path = match.group(1), match.group(2)
        if key != "include_dir":
            local = resolve(path)
            if key == "persistence_location":
                local.mkdir(parents=True, exist_ok=True)
                return f"{key} {local}/"
            return f"{key} {local}"
        copy = workdir / f"include-{len(list(workdir.glob('include-*')))}"
        copy.mkdir()
        for included in sorted(resolve(path).glob("*.conf")):
            (copy / included.name).write_text(
                _rewritten_conf(included.read_text(), resolve, workdir)
            )
        return f"{key} {copy}"

    return re.sub(rf"^({_PATH_KEYS}) (\S+)$", replace, text, flags=re.M)


def _start_mosquitto(
    binary: str,
    conf_text: str,
    resolve: Any,
    workdir: Path,
    started: list[ChildProcess],
) -> Broker:
    """Run Mosquitto with `conf_text`: its paths resolved to local files, each listener
    moved to a free loopback port."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports: dict[int, int] = {}

    def listen_here(match: re.Match[str]) -> str:
        ports[int(match.group(1))] = free_port()
        return f"listener {ports[int(match.group(1))]} 127.0.0.1"

    conf_text = re.sub(r"^listener (\d+)$", listen_here, conf_text, flags=re.M)
    conf_text = _rewritten_conf(conf_text, resolve, workdir)
    if os.geteuid() == 0:  # Mosquitto would switch to its own user, who cannot read tmp_path
        conf_text += "\nuser root\n"
    conf = workdir / "mosquitto.conf"
    conf.write_text(conf_text)
    log = workdir / "mosquitto.log"
    process = ChildProcess(workdir.name, [binary, "-c", str(conf)], log)
    started.append(process)
    for port in ports.values():
        assert wait_for_port("127.0.0.1", port, 10) and process.poll() is None, process.tail()
    return Broker(ports, log)


def _compose_broker(
    binary: str, bundle: Path, workdir: Path, started: list[ChildProcess], *overrides: str
) -> Broker:
    """The compose `mosquitto` service's own configuration and mounts, here."""
    service = _mosquitto_service(*overrides)
    volumes = {"credentials": bundle, "mosquitto-data": workdir / "data"}

    def resolve(path: str) -> Path:
        return _host_path(service, path, volumes)

    conf = resolve(_conf_path(service)).read_text()
    return _start_mosquitto(binary, conf, resolve, workdir, started)


@pytest.fixture
def compose_broker(
    mosquitto: str, bundle: Path, tmp_path: Path, brokers: list[ChildProcess]
) -> Broker:
    return _compose_broker(mosquitto, bundle, tmp_path / "cloud", brokers)


def _role_config(
    name: str, bundle: Path, broker: Broker, *overrides: str
) -> tuple[FogflConfig, Identity]:
    """Service `name`'s configuration as its container would load it, pointed at `broker`
    and at its mounted identity directory in `bundle`."""
    service = _services(*overrides)[name]
    environ = _environment(service)
    (mount,) = _credentials_mounts(service)
    environ["FOGFL_SECURITY__CREDENTIALS"] = str(bundle / mount.subpath)
    environ["FOGFL_MQTT__HOST"] = "127.0.0.1"
    environ["FOGFL_MQTT__PORT"] = str(broker.port(int(environ["FOGFL_MQTT__PORT"])))
    config = load_config(None, {"mqtt.connect_timeout_s": 5}, environ=environ)
    return config, _identity(service)


def _role_session(
    name: str, bundle: Path, broker: Broker, subscriptions: tuple[str, ...] = ()
) -> MqttSession:
    """A session as service `name`'s role opens it: its own identity and credentials."""
    config, identity = _role_config(name, bundle, broker)
    settings = role_security(config, identity, LOG).mqtt
    client_id = f"test-{name}-{time.monotonic_ns()}"
    return MqttSession(settings, client_id, LOG, persistent=False).connect(subscriptions)


def _login(port: int, bundle: Path, name: str | None) -> MqttSettings:
    password = None if name is None else (bundle / name / "password").read_text().strip()
    return MqttSettings(
        host="127.0.0.1", port=port, username=name, password=password, connect_timeout_s=5
    )


def _session(settings: MqttSettings, subscriptions: tuple[str, ...] = ()) -> MqttSession:
    client_id = f"test-{settings.username}-{time.monotonic_ns()}"
    return MqttSession(settings, client_id, LOG, persistent=False).connect(subscriptions)


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


def _refused(session: MqttSession, topic: str) -> bool:
    """Whether the broker refuses `session`'s publish on `topic` (MQTT 5 says so)."""
    try:
        session.publish(topic, f"{session.client_id} on {topic}".encode())
    except BrokerError as error:
        assert "Not authorized" in str(error)
        return True
    return False


def _health_argv(service: dict[str, Any], port: int) -> list[str]:
    test = [_interpolate(part) for part in service["healthcheck"]["test"]]
    if test[0] == "CMD-SHELL":
        assert len(test) == 2
        return ["sh", "-c", test[1].replace("-p 1883", f"-p {port}")]
    assert test[0] == "CMD"
    return [str(port) if part == "1883" else part for part in test[1:]]


def test_the_compose_broker_refuses_anonymous_and_wrong_passwords(
    compose_broker: Broker, bundle: Path
) -> None:
    with pytest.raises(BrokerError, match="Not authorized"):
        _session(_login(compose_broker.port(), bundle, None))
    # The certificate listener answers no plaintext client, and no TLS client without a
    # certificate of the federation.
    plaintext = _login(compose_broker.port(8883), bundle, "server")
    with pytest.raises(BrokerError, match=r"accepted no session|cannot reach"):
        _session(plaintext.model_copy(update={"connect_timeout_s": 1}))
    no_certificate = plaintext.model_copy(
        update={"tls": TlsSettings(enabled=True, ca_file=bundle / "ca.crt"), "connect_timeout_s": 1}
    )
    with pytest.raises(BrokerError):
        _session(no_certificate)
    wrong = _login(compose_broker.port(), bundle, "server").model_copy(update={"password": "x"})
    with pytest.raises(BrokerError, match="Not authorized"):
        _session(wrong)
    _session(_login(compose_broker.port(), bundle, "server")).close()


@pytest.mark.parametrize("overrides", [(), ("tls",)], ids=["passwords", "tls"])
def test_every_compose_service_gets_in_with_its_own_credentials(
    overrides: tuple[str, ...],
    mosquitto: str,
    bundle: Path,
    tmp_path: Path,
    brokers: list[ChildProcess],
) -> None:
    broker = _compose_broker(mosquitto, bundle, tmp_path, brokers, *overrides)
    for name in ROLE_SERVICES:
        # The service's own health check, in process: its identity, its mounted files.
        config, identity = _role_config(name, bundle, broker, *overrides)
        assert config.security.tls == (overrides == ("tls",))
        assert check_mqtt(config).startswith("healthy"), name
        # Someone else's credentials are refused for this identity.
        other = "monitor" if identity.name != "monitor" else "server"
        stolen = _login(broker.port(), bundle, identity.name).model_copy(
            update={"password": (bundle / other / "password").read_text().strip()}
        )
        with pytest.raises(BrokerError, match="Not authorized"):
            _session(stolen)


@pytest.mark.parametrize("name", ["client-north-02", "fog-south"])
def test_a_role_services_health_check_passes_with_only_its_mount(
    name: str, compose_broker: Broker, bundle: Path
) -> None:
    service = _services()[name]
    config, _ = _role_config(name, bundle, compose_broker)
    environ = {
        **os.environ,
        **_environment(service),
        "FOGFL_MQTT__HOST": config.mqtt.host,
        "FOGFL_MQTT__PORT": str(config.mqtt.port),
        "FOGFL_SECURITY__CREDENTIALS": str(config.security.credentials),
    }
    argv = [sys.executable, "-m", *service["healthcheck"]["test"][1:]]
    result = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # The same check without credentials is refused, in one line.
    del environ["FOGFL_SECURITY__CREDENTIALS"]
    environ["FOGFL_SECURITY__INSECURE"] = "true"
    refused = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "Not authorized" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_the_compose_broker_lets_a_client_write_only_its_own_update_topic(
    compose_broker: Broker, bundle: Path
) -> None:
    with _role_session("monitor", bundle, compose_broker, ("fl/#",)) as monitor:
        with _role_session("client-north-02", bundle, compose_broker) as client:
            client.publish(TOPICS.updates("north", "north-02"), b"own update")
            for topic in (
                TOPICS.updates("north", "north-01"),  # a neighbour's
                TOPICS.updates("south", "north-02"),  # another region's
                TOPICS.updates("south", "south-04"),
                TOPICS.partial("north"),
                TOPICS.region_model("north"),
                TOPICS.round_announcement,
                TOPICS.global_model,
            ):
                assert _refused(client, topic), topic
        with _role_session("server", bundle, compose_broker) as server:
            server.publish(TOPICS.round_announcement, b"end of test")
        seen = [(m.topic, bytes(m.payload)) for m in _collect(monitor, TOPICS.round_announcement)]
    assert seen == [
        (TOPICS.updates("north", "north-02"), b"own update"),
        (TOPICS.round_announcement, b"end of test"),
    ]


def test_the_compose_broker_lets_only_the_server_publish_the_global_model(
    compose_broker: Broker, bundle: Path
) -> None:
    with _role_session("monitor", bundle, compose_broker, ("fl/#",)) as monitor:
        for name in ROLE_SERVICES:
            if name != "server":
                with _role_session(name, bundle, compose_broker) as session:
                    assert _refused(session, TOPICS.global_model), name
        with _role_session("server", bundle, compose_broker) as server:
            server.publish(TOPICS.global_model, b"global model")
        seen = [(m.topic, bytes(m.payload)) for m in _collect(monitor, TOPICS.global_model)]
    assert seen == [(TOPICS.global_model, b"global model")]


def test_the_broker_health_checks_need_no_credentials_and_tell_open_from_secure(
    mosquitto: str, bundle: Path, tmp_path: Path, brokers: list[ChildProcess]
) -> None:
    if shutil.which("mosquitto_sub") is None:
        pytest.skip(
            "no mosquitto_sub (Debian package `mosquitto-clients`) to run the broker's health check"
        )
    secure = _compose_broker(mosquitto, bundle, tmp_path / "secure", brokers)
    open_ = _compose_broker(mosquitto, bundle, tmp_path / "open", brokers, "insecure")

    def healthy(overrides: tuple[str, ...], broker: Broker) -> bool:
        argv = _health_argv(_mosquitto_service(*overrides), broker.port())
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

    assert healthy((), secure)
    assert healthy(("insecure",), open_)
    # The secure check fails where anyone may log in, and on a closed port.
    assert not healthy((), open_)
    assert not healthy((), Broker({1883: free_port()}, tmp_path / "none"))
    # The open broker lets anyone in, as the override promises.
    _session(_login(open_.port(), bundle, None)).close()


def test_fog_site_bridge_logs_in_as_its_fog_broker_and_keeps_updates_local(
    mosquitto: str, bundle: Path, tmp_path: Path, brokers: list[ChildProcess]
) -> None:
    cloud = _compose_broker(mosquitto, bundle, tmp_path / "cloud", brokers)
    with _role_session("server", bundle, cloud) as server:
        server.publish(TOPICS.global_model, b"global model r1", retain=True)

    site_conf = (MOSQUITTO_DIR / "fog-site.conf").read_text()
    # Exactly what fog-north may carry: the cloud's ACL would drop anything else anyway.
    assert re.findall(r"^topic (\S+) (\w+)", site_conf, re.M) == [
        (TOPICS.partial("north"), "out"),
        (TOPICS.round_announcement, "in"),
        (TOPICS.global_model, "in"),
    ]
    address = re.search(r"^address (\S+):(\d+)$", site_conf, re.M)
    assert address is not None and address.group(2) == "8883"  # the certificate listener
    site_conf = site_conf.replace(address.group(0), f"address 127.0.0.1:{cloud.port(8883)}")
    # The site's mounts, as docs/deployment.md describes them.
    mounts = {
        PurePosixPath("/mosquitto/credentials"): bundle / "broker",
        PurePosixPath("/mosquitto/bridge"): bundle / "fog-north",
        PurePosixPath("/mosquitto/data"): tmp_path / "site-data",
    }

    def resolve(path: str) -> Path:
        wanted = PurePosixPath(path)
        (target,) = [t for t in mounts if wanted.is_relative_to(t)]
        return mounts[target] / wanted.relative_to(target)

    site = _start_mosquitto(mosquitto, site_conf, resolve, tmp_path / "site", brokers)
    site_port = site.port()
    with pytest.raises(BrokerError, match="refused"):
        _session(_login(site_port, bundle, None))

    # Down: the retained global model reaches the site once the bridge is up, and stays
    # retained there for clients that start later.
    with _session(_login(site_port, bundle, "fog-north"), ("fl/global_model",)) as first:
        assert [bytes(m.payload) for m in _collect(first, "fl/global_model")] == [
            b"global model r1"
        ]
    client_login = _login(site_port, bundle, "client-north-01")
    with _session(client_login, ("fl/global_model",)) as client:
        arrived = [(bytes(m.payload), m.retained) for m in _collect(client, "fl/global_model")]
        assert arrived == [(b"global model r1", True)]

        # Up: the partial goes to the cloud (retained, for a bridge that subscribes later);
        # the client's update stays on the site, and the site enforces the ACL too.
        with _session(_login(cloud.port(), bundle, "monitor"), ("fl/#",)) as watcher:
            client.publish(TOPICS.updates("north", "north-01"), b"client update")
            assert _refused(client, TOPICS.partial("north"))
            with _session(_login(site_port, bundle, "fog-north")) as fog:
                fog.publish(TOPICS.partial("north"), b"partial r1", retain=True)
            seen = [(m.topic, bytes(m.payload)) for m in _collect(watcher, "fl/partial/north")]
    assert (TOPICS.partial("north"), b"partial r1") in seen
    assert not [topic for topic, _ in seen if topic.startswith("fl/updates/")]
    with _session(_login(cloud.port(), bundle, "bridge-north"), ("fl/partial/north",)) as late:
        arrived = [(bytes(m.payload), m.retained) for m in _collect(late, "fl/partial/north")]
    assert arrived == [(b"partial r1", True)]
