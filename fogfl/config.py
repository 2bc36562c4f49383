"""Every fogfl setting, validated: defaults ← YAML file ← FOGFL_* environment ← CLI flags.

Environment variables name a key by its path with double underscores:
``FOGFL_MQTT__HOST=broker`` sets ``mqtt.host``; ``FOGFL_FEDERATION__ROUNDS=10`` sets
``federation.rounds``; top-level keys need none (``FOGFL_LOG_LEVEL=DEBUG``). Values are read
as YAML scalars (``10``, ``true``, ``0.5``), except the secrets (``FOGFL_MQTT__PASSWORD``),
read verbatim.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fogfl.errors import ConfigError, WireError
from fogfl.links.settings import LinksSettings, resolve_trace_paths
from fogfl.plugins import IMPORT_PATH

ENV_PREFIX = "FOGFL_"
ENV_NESTING = "__"
# Settings no file fogfl writes holds (`dump_config`) and no error shows: a role started
# from such a file takes them from its environment, read verbatim (`secret_environment`).
SECRET_KEYS = frozenset({"mqtt.password"})
# Region names and client ids name MQTT topics, logins, credentials directories and
# certificates (`client-<id>`, `bridge-<region>`: a common name has at most 64 characters),
# and travel as the wire's identifiers (fogfl/wire.py).
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MAX_NAME_CHARS = 57


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


class TlsSettings(_Section):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(False, description="skip the broker hostname check (testing only)")


class MqttSettings(_Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    tls: TlsSettings = TlsSettings()
    protocol: Literal["3.1.1", "5"] = "5"
    topic_prefix: str = Field("fl", min_length=1, pattern=r"^[^#+]+$")
    keepalive_s: int = Field(30, ge=5, le=3600)
    connect_timeout_s: float = Field(60.0, gt=0, description="keep retrying this long at start")
    publish_timeout_s: float = Field(
        120.0, gt=0, description="how long a publish waits for the broker, outages included"
    )
    session_expiry_s: int = Field(
        3600,
        ge=0,
        le=4_294_967_295,
        description="MQTT 5: how long the broker keeps a persistent session of a role that is away",
    )
    reconnect_max_delay_s: int = Field(
        5, ge=1, le=600, description="longest wait between reconnection attempts (doubles from 1 s)"
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value


TierCodec = Literal["float32", "float16", "bfloat16", "int8", "int4", "topk"]
ModelCodec = Literal["float32", "float16", "bfloat16", "int8", "int4"]  # absolute models
Compression = Literal["none", "zstd"]
# `adaptive`: each client picks a TierCodec every round (fogfl/bandwidth/adaptive.py).
UpdateCodec = Literal["float32", "float16", "bfloat16", "int8", "int4", "topk", "adaptive"]
Controller = Literal["ddqn", "rule", "robust-rule", "oracle"]


class WireSettings(_Section):
    codec: Literal["float32", "float16"] = "float32"
    max_payload_bytes: int = Field(
        256 * 1024 * 1024 - 64 * 1024,
        ge=1024,
        le=4 * 1024**3,
        description="the largest whole message a receiver accepts; beyond wire.chunk_bytes it "
        "travels in chunks, so it may exceed MQTT's 268,435,455",
    )
    # Chunked transfers (fogfl/chunks.py; docs/protocol.md, "Chunked transfers").
    chunk_bytes: int = Field(
        4 * 1024 * 1024,
        ge=4096,
        le=268_435_455 - 65_536,
        description="a larger payload travels as chunks of this many bytes",
    )
    chunk_timeout_s: float = Field(
        120.0, gt=0, description="a transfer that has had no chunk for this long is dropped"
    )
    chunk_transfers: int = Field(
        64, ge=1, le=100_000, description="transfers one receiver reassembles at once, at most"
    )
    chunk_buffer_bytes: int = Field(
        1024**3,
        ge=1024,
        le=1024**4,
        description="bytes one receiver's transfers in reassembly hold together, at most",
    )
    # Per tier, over `codec` (fogfl/codecs; docs/protocol.md, "Codecs"). None: `codec`.
    update_codec: UpdateCodec | None = Field(
        None, description="clients' updates, as deltas; adaptive: chosen each round"
    )
    partial_codec: TierCodec | None = Field(None, description="fog brokers' partials")
    global_codec: TierCodec | None = Field(None, description="the server's global model")
    topk_fraction: float = Field(0.05, gt=0, le=1, description="share of entries topk sends")
    error_feedback: bool = Field(True, description="clients add what their codec dropped next")
    compression: Compression = "none"
    # update_codec: adaptive (docs/bandwidth.md, "In the runtime and the simulation").
    controller: Controller = Field(
        "robust-rule", description="what picks an adaptive update's codec each round"
    )
    upload_deadline_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="the time an adaptive update has for its upload, counted from when its "
        "round opened; default fog.deadline_s",
    )
    agent: Path | None = Field(
        None, description="the ddqn controller's agent directory (fogfl agent train --out)"
    )
    predictor: Path | None = Field(
        None,
        description="a bandwidth predictor directory (fogfl bandwidth train --out) whose "
        "forecast the controllers use instead of the harmonic mean",
    )

    def announced(self) -> dict[str, Any]:
        """The coding the server announces with every round (`RoundPlan`), so clients and
        fog brokers follow it without a restart."""
        return {
            "update_codec": self.tier_codec("update"),
            "partial_codec": self.tier_codec("partial"),
            "topk_fraction": self.topk_fraction,
            "compression": self.compression,
            "error_feedback": self.error_feedback,
            "controller": self.controller,
            "upload_deadline_s": self.upload_deadline_s,
        }

    @model_validator(mode="after")
    def _topk_only_for_updates(self) -> WireSettings:
        for key in ("partial_codec", "global_codec"):
            if getattr(self, key) == "topk":
                raise ValueError(
                    f"{key}: topk sends a delta from the model a client trained from, which "
                    "only updates have; use it as wire.update_codec"
                )
        return self

    @model_validator(mode="after")
    def _ddqn_has_an_agent(self) -> WireSettings:
        if self.update_codec == "adaptive" and self.controller == "ddqn" and self.agent is None:
            raise ValueError(
                "controller ddqn needs wire.agent: the directory `fogfl agent train --out` wrote"
            )
        return self

    @model_validator(mode="after")
    def _largest_message_fits_the_buffer(self) -> WireSettings:
        if self.chunk_buffer_bytes < self.max_payload_bytes:
            raise ValueError(
                f"chunk_buffer_bytes ({self.chunk_buffer_bytes:,}) is less than "
                f"max_payload_bytes ({self.max_payload_bytes:,}): a message of the largest "
                "size could never be reassembled; raise chunk_buffer_bytes"
            )
        return self

    def tier_codec(self, tier: Literal["update", "partial", "global"]) -> str:
        """The codec messages of this tier travel in."""
        chosen: str | None = getattr(self, f"{tier}_codec")
        return chosen or self.codec


class TrainingSettings(_Section):
    local_epochs: int = Field(2, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=1_000_000)
    learning_rate: float = Field(5e-4, gt=0, le=10)
    proximal_mu: float = Field(0.0, ge=0, le=1e6, description="FedProx μ; 0 is plain FedAvg")


class RoundPlan(TrainingSettings):
    """What the server announces with every round (the `config` of round and global
    messages): the clients' training settings, the weighting, κ, and, under a participation
    schedule, who takes part. Unknown keys are ignored, so newer servers stay readable."""

    model_config = ConfigDict(extra="ignore", validate_default=True)

    weighting: Literal["examples", "uniform"] = "examples"
    edge_rounds: int = Field(1, ge=1, le=1000)
    participants: dict[str, list[str]] | None = None
    ended: bool = Field(False, description="the run is over: nothing more will be announced")
    # How updates, partials and region models travel (fogfl/codecs; WireSettings.announced).
    update_codec: UpdateCodec = "float32"
    partial_codec: ModelCodec = "float32"
    topk_fraction: float = Field(0.05, gt=0, le=1)
    compression: Compression = "none"
    error_feedback: bool = True
    controller: Controller = "robust-rule"
    upload_deadline_s: float | None = Field(None, gt=0, allow_inf_nan=False)

    @property
    def training(self) -> TrainingSettings:
        return TrainingSettings.model_validate(
            self.model_dump(include=set(TrainingSettings.model_fields))
        )

    def takes_part(self, client_id: str, region: str) -> bool:
        return self.participants is None or client_id in self.participants.get(region, [])


def read_round_plan(
    announced: Mapping[str, Any], defaults: TrainingSettings | None = None
) -> RoundPlan:
    """The plan a round announced, over local training defaults; WireError if malformed."""
    base = defaults.model_dump() if defaults is not None else {}
    try:
        return RoundPlan.model_validate({**base, **announced})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise WireError("bad-config", f"the round's plan is invalid: {problems}") from None


class ParticipationSettings(_Section):
    schedule: Literal["constant", "exponential", "linear", "sigmoid", "reciprocal"] = "constant"
    start_fraction: float = Field(1.0, gt=0, le=1)
    end_fraction: float = Field(1.0, gt=0, le=1)

    @property
    def full(self) -> bool:
        return self.start_fraction == 1.0 and (
            self.schedule == "constant" or self.end_fraction == 1.0
        )


class FederationSettings(_Section):
    rounds: int = Field(5, ge=1, le=100_000)
    regions: list[str] = Field(default_factory=lambda: ["north", "south"], min_length=1)
    clients_per_region: int = Field(3, ge=1, le=100_000)
    min_regions: int | None = Field(None, ge=1, description="default: every region")
    seed: int = Field(42, ge=0)
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    clients: dict[str, list[str]] | None = Field(
        None, description="client ids per region; default <region>-NN numbered across regions"
    )
    participation: ParticipationSettings = ParticipationSettings()
    weighting: Literal["examples", "uniform"] = "examples"
    edge_rounds: int = Field(1, ge=1, le=1000, description="edge rounds per cloud round (κ)")

    @field_validator("clients")
    @classmethod
    def _client_ids_are_names(
        cls, clients: dict[str, list[str]] | None
    ) -> dict[str, list[str]] | None:
        """Each client id is a name (`NAME_CHARS`) and one client's only: it is the client's
        update topic, login and credentials."""
        home: dict[str, str] = {}
        for region, members in (clients or {}).items():
            for client_id in members:
                problem = _name_problem(client_id)
                if problem:
                    raise ValueError(f"client id {client_id!r} of region {region!r} {problem}")
                if client_id in home:
                    where = (
                        f"twice in region {region!r}"
                        if home[client_id] == region
                        else f"in regions {home[client_id]!r} and {region!r}"
                    )
                    raise ValueError(
                        f"client id {client_id!r} is listed {where}; every client needs an id "
                        "of its own (it is its login and its update topic)"
                    )
                home[client_id] = region
        return clients

    @model_validator(mode="after")
    def _regions_are_names(self) -> FederationSettings:
        for region in self.regions:
            problem = _name_problem(region)
            if problem:
                raise ValueError(f"region name {region!r} {problem}")
        if len(set(self.regions)) != len(self.regions):
            raise ValueError(f"region names repeat: {self.regions}")
        if self.clients is not None and set(self.clients) != set(self.regions):
            raise ValueError(f"clients must list exactly the regions {self.regions}")
        if self.min_regions is not None and self.min_regions > len(self.regions):
            raise ValueError(
                f"min_regions={self.min_regions} exceeds the {len(self.regions)} regions configured"
            )
        if self.clients is None:
            for region, members in self.client_ids().items():
                if len(members[-1]) > MAX_NAME_CHARS:
                    raise ValueError(
                        f"region name {region!r} is too long to number its clients "
                        f"({members[-1]!r} has over {MAX_NAME_CHARS} characters)"
                    )
        return self

    @property
    def required_regions(self) -> int:
        return self.min_regions if self.min_regions is not None else len(self.regions)

    def client_ids(self) -> dict[str, list[str]]:
        """Every region's client ids. By default clients are numbered across the whole
        federation (north-01…north-03, south-04…), so tasks can cycle scenarios over them."""
        if self.clients is not None:
            return {region: list(self.clients[region]) for region in self.regions}
        per_region = self.clients_per_region
        return {
            region: [f"{region}-{r * per_region + k + 1:02d}" for k in range(per_region)]
            for r, region in enumerate(self.regions)
        }


def _name_problem(name: str) -> str:
    """What is wrong with `name` as a region name or client id, or "" if nothing."""
    if not 1 <= len(name) <= MAX_NAME_CHARS or not set(name) <= NAME_CHARS:
        return (
            f"must be 1-{MAX_NAME_CHARS} letters, digits, _ . - (no spaces, / # or +): it names "
            "MQTT topics, logins and certificates"
        )
    return ""


class FogSettings(_Section):
    expected_updates: int | None = Field(
        None, ge=1, description="updates that close a round; default federation.clients_per_region"
    )
    deadline_s: float = Field(60.0, gt=0, description="seconds after a round opens")
    min_updates: int = Field(1, ge=1, description="updates needed to close at the deadline")
    state_dir: Path = Field(
        Path(".fogfl/state"),
        description="where a fog broker keeps its open round, to survive a restart",
    )
    aggregation: Literal["mean", "median", "trimmed_mean", "clipped_mean"] = Field(
        "mean", description="how a fog broker combines its region's updates (docs/security.md)"
    )
    trim_fraction: float = Field(
        0.2,
        ge=0,
        lt=0.5,
        allow_inf_nan=False,
        description="trimmed_mean: the share of the weight cut from each end, per coordinate",
    )
    clip_norm: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="clipped_mean: the largest L2 norm of a client's change to the model; "
        "default: the median of the round's update norms",
    )
    max_examples_per_client: int | None = Field(
        None, ge=1, description="cap on the num_examples an update may claim; default: none"
    )


class BridgeSettings(_Section):
    server_address: str = "127.0.0.1:8080"
    server_wait_s: float = Field(300.0, gt=0, description="how long to wait for the Flower server")
    partial_timeout_s: float = Field(
        180.0, gt=0, description="how long a fit waits for its region's partial"
    )


BUILTIN_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg")
_JsonScalar = bool | int | float | str | None
StrategyOption = _JsonScalar | list[_JsonScalar]


def _json_safe(value: object, nested: bool = False) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, list) and not nested and all(_json_safe(v, True) for v in value)


class ServerSettings(_Section):
    address: str = "0.0.0.0:8080"
    run_dir: Path | None = Field(None, description="default: runs/<run id>")
    strategy: str = Field(
        "fedavg",
        description="one of BUILTIN_STRATEGIES, or a Flower Strategy as package.module:ClassName",
    )
    strategy_options: dict[str, Any] = Field(
        default_factory=dict,
        description="the Flower strategy's own keyword arguments (eta, beta, …): JSON scalars "
        "or lists of them",
    )
    round_timeout_s: float = Field(
        240.0, gt=0, description="Flower's limit on one region's answer; > bridge.partial_timeout_s"
    )
    region_wait_s: float = Field(
        30.0, ge=0, description="how long a round waits for a region's bridge before failing it"
    )

    @field_validator("strategy_options")
    @classmethod
    def _options_are_json_safe(cls, options: dict[str, Any]) -> dict[str, StrategyOption]:
        for key, value in options.items():
            if not _json_safe(value):
                raise ValueError(
                    f"{key}: {value!r} is not a finite number, bool, string, null or a list of them"
                )
        return options

    @field_validator("strategy")
    @classmethod
    def _known_or_import_path(cls, strategy: str) -> str:
        if strategy in BUILTIN_STRATEGIES or IMPORT_PATH.fullmatch(strategy):
            return strategy
        raise ValueError(
            f"unknown strategy {strategy!r}; use one of {', '.join(BUILTIN_STRATEGIES)}, or a "
            "Flower Strategy subclass as package.module:ClassName"
        )


class SecuritySettings(_Section):
    """Secure by default: every role logs in as its own identity, and models are signed."""

    credentials: Path | None = Field(
        None,
        description="the credentials from `fogfl certs DIR` (DIR, or this role's own directory "
        "in it); required unless insecure",
    )
    tls: bool = Field(
        False,
        description="MQTT over TLS with client certificates, and TLS on the Flower channel",
    )
    insecure: bool = Field(
        False,
        description="run open: no logins, no TLS, no signatures, any Flower client is a region "
        "(experiments only)",
    )

    @model_validator(mode="after")
    def _one_mode(self) -> SecuritySettings:
        if self.insecure and self.tls:
            raise ValueError("insecure and tls exclude each other")
        return self


class TaskSettings(_Section):
    name: str = "qoe"
    options: dict[str, Any] = Field(default_factory=dict, description="task-specific settings")


class FogflConfig(_Section):
    """The whole configuration of a federation; each role reads the parts it needs."""

    mqtt: MqttSettings = MqttSettings()
    wire: WireSettings = WireSettings()
    federation: FederationSettings = FederationSettings()
    training: TrainingSettings = TrainingSettings()
    fog: FogSettings = FogSettings()
    bridge: BridgeSettings = BridgeSettings()
    server: ServerSettings = ServerSettings()
    security: SecuritySettings = SecuritySettings()
    task: TaskSettings = TaskSettings()
    links: LinksSettings = LinksSettings()
    python_path: list[Path] = Field(
        default_factory=list,
        description="directories searched first for a task or strategy named by import path; "
        "in a config file, relative to the file's directory",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @property
    def expected_updates(self) -> int:
        return self.fog.expected_updates or self.federation.clients_per_region

    def expected_updates_in(self, region: str) -> int:
        """The updates that close one of `region`'s rounds: fog.expected_updates, else the
        region's clients (as `federation.clients` lists them, or clients_per_region)."""
        clients = self.federation.clients
        if self.fog.expected_updates is None and clients is not None and region in clients:
            return max(1, len(clients[region]))
        return self.expected_updates

    @model_validator(mode="after")
    def _strategy_fits_training(self) -> FogflConfig:
        if self.server.strategy == "fedprox" and self.training.proximal_mu <= 0:
            raise ValueError("server.strategy fedprox needs training.proximal_mu > 0")
        if self.server.round_timeout_s <= self.bridge.partial_timeout_s:
            raise ValueError(
                f"server.round_timeout_s ({self.server.round_timeout_s:g} s) must exceed "
                f"bridge.partial_timeout_s ({self.bridge.partial_timeout_s:g} s): a bridge "
                "reports a missing partial as a failure only if Flower still waits for it"
            )
        return self

    @model_validator(mode="after")
    def _oracle_knows_the_links(self) -> FogflConfig:
        wire = self.wire
        oracle = wire.update_codec == "adaptive" and wire.controller == "oracle"
        if oracle and not self.links.enabled:
            raise ValueError(
                "wire.controller oracle knows the link's future, which only emulated "
                "links have: add a links: section, or use rule, robust-rule or ddqn"
            )
        return self


def region_names(count: int) -> list[str]:
    """Names for `count` regions: compass points, then region1, region2, …"""
    named = ["north", "south", "east", "west"]
    return named[:count] if count <= len(named) else [f"region{i + 1}" for i in range(count)]


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    sources: Mapping[str, str] | None = None,
) -> FogflConfig:
    """Build the configuration from defaults, a YAML file, FOGFL_* variables and overrides.

    `overrides` maps dotted keys (``"mqtt.port"``) to values; ``None`` values are ignored so
    that unset CLI flags fall through; `sources` says where an override came from (``{"mqtt.port":
    "--mqtt-port 0"}``). Raises ConfigError naming every offending key and where its value
    came from: the flag, the FOGFL_* variable or the file.
    """
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        file_data = _read_yaml(path)
        resolve_python_path(file_data, path.parent)
        resolve_trace_paths(file_data, path.parent)
        resolve_model_paths(file_data, path.parent)
        _merge(data, file_data)
        origins.update({key: str(path) for key in _dotted_keys(file_data)})
    env = os.environ if environ is None else environ
    for key, (variable, value) in _environment_overrides(env).items():
        _set_dotted(data, key, value)
        origins[key] = variable if key in SECRET_KEYS else f"{variable}={env[variable]}"
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
            origins[key] = (sources or {}).get(key, "")
    try:
        return FogflConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from None


def dump_config(config: FogflConfig) -> str:
    """The resolved configuration as YAML, loadable again with `load_config`, without its
    secrets (`SECRET_KEYS`): the file is for anyone to read."""
    data = config.model_dump(mode="json")
    for key in SECRET_KEYS:
        *parents, leaf = key.split(".")
        section = data
        for part in parents:
            section = section[part]
        section.pop(leaf, None)
    return yaml.safe_dump(data, sort_keys=False)


def secret_environment(config: FogflConfig) -> dict[str, str]:
    """The FOGFL_* variables that hand a process started from `dump_config`'s file the
    secrets the file leaves out."""
    found = {}
    for key in SECRET_KEYS:
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None:
            found[ENV_PREFIX + key.upper().replace(".", ENV_NESTING)] = str(value)
    return found


def resolve_python_path(data: dict[str, Any], base: Path) -> None:
    """Make a config file's relative `python_path` entries relative to `base`, the file's
    directory, so that every process started from it (by `fogfl up`, anywhere) finds the
    same code."""
    entries = data.get("python_path")
    if isinstance(entries, list):
        data["python_path"] = [
            str((base / entry).resolve()) if isinstance(entry, str) else entry for entry in entries
        ]


def resolve_model_paths(data: dict[str, Any], base: Path) -> None:
    """Make a config file's relative `wire.agent` and `wire.predictor` directories relative
    to `base`, the file's directory, like `python_path`."""
    wire = data.get("wire")
    if isinstance(wire, dict):
        for key in ("agent", "predictor"):
            if isinstance(wire.get(key), str):
                wire[key] = str((base / Path(wire[key]).expanduser()).resolve())


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
    return loaded


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """Dotted key -> (the variable that set it, its value read as YAML)."""
    found: dict[str, tuple[str, Any]] = {}
    top_level = {
        name
        for name, spec in FogflConfig.model_fields.items()
        if spec.annotation is not None and not isinstance(spec.default, BaseModel)
    }
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if ENV_NESTING not in key and key not in top_level:
            continue  # FOGFL_CONFIG, FOGFL_CLIENT_ID and friends are not settings
        key = key.replace(ENV_NESTING, ".")
        if key in SECRET_KEYS:
            found[key] = (name, raw)  # a password is text, whatever it looks like
            continue
        try:
            found[key] = (name, yaml.safe_load(raw) if raw else raw)
        except yaml.YAMLError:
            found[key] = (name, raw)
    return found


def _dotted_keys(data: Mapping[str, Any], parent: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        dotted = f"{parent}{key}"
        keys.append(dotted)
        if isinstance(value, Mapping):
            keys += _dotted_keys(value, f"{dotted}.")
    return keys


def _set_dotted(data: dict[str, Any], dotted_key: str, value: Any) -> None:
    *parents, leaf = dotted_key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _describe(exc: ValidationError, origins: Mapping[str, str]) -> str:
    """One line per problem: where the value came from, the key, what is wrong with it."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        where = _origin_of(key, origins)
        where = f"{where}: " if where else ""
        if error["type"] == "extra_forbidden":
            problems.append(
                f"{where}{key}: unknown key; check its spelling against configs/default.yaml"
            )
            continue
        given = error.get("input")
        shown = "" if isinstance(given, dict) or key in SECRET_KEYS else f" (got {given!r})"
        problems.append(f"{where}{key}: {error['msg']}{shown}")
    if len(problems) == 1:
        return f"invalid configuration: {problems[0]}"
    return "\n  ".join(["invalid configuration:", *problems])


def _origin_of(key: str, origins: Mapping[str, str]) -> str:
    """Where the value at `key` came from: the most specific source that set it or a key
    inside it (a check of a whole section names whatever set its parts)."""
    for parent in _parents(key):
        if origins.get(parent):
            return origins[parent]
    inside = sorted({where for set_key, where in origins.items() if set_key.startswith(f"{key}.")})
    return ", ".join(where for where in inside if where)


def _parents(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:end]) for end in range(len(parts), 0, -1)]
