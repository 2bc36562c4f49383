"""Configuration: defaults ← YAML ← environment ← flags, and readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fogfl.config import FogflConfig, dump_config, load_config, secret_environment
from fogfl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_default_yaml_matches_the_built_in_defaults() -> None:
    assert load_config(ROOT / "configs" / "default.yaml", environ={}) == FogflConfig()


def test_every_shipped_config_loads() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path, environ={})


def test_precedence_is_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  host: from-file\n  port: 1000\nfederation:\n  rounds: 7\n")
    env = {"FOGFL_MQTT__PORT": "2000", "FOGFL_FEDERATION__ROUNDS": "8", "UNRELATED": "x"}
    config = load_config(path, {"federation.rounds": 9, "mqtt.host": None}, environ=env)
    assert config.mqtt.host == "from-file"
    assert config.mqtt.port == 2000
    assert config.federation.rounds == 9


def test_environment_values_are_typed() -> None:
    env = {
        "FOGFL_MQTT__TLS__ENABLED": "true",
        "FOGFL_FEDERATION__REGIONS": "[a, b, c]",
        "FOGFL_LOG_LEVEL": "DEBUG",
        "FOGFL_CLIENT_ID": "not-a-setting",
        "FOGFL_CONFIG": "/also/not/a/setting.yaml",
    }
    config = load_config(environ=env)
    assert config.mqtt.tls.enabled is True
    assert config.federation.regions == ["a", "b", "c"]
    assert config.log_level == "DEBUG"


def test_out_of_range_value_names_the_key_and_the_range() -> None:
    with pytest.raises(
        ConfigError, match=r"mqtt\.port: Input should be less than or equal to 65535 \(got 70000\)"
    ):
        load_config(overrides={"mqtt.port": 70000}, environ={})


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  hots: x\n")
    with pytest.raises(ConfigError, match=r"mqtt\.hots: unknown key"):
        load_config(path, environ={})


def test_unknown_environment_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"federation\.roundz"):
        load_config(environ={"FOGFL_FEDERATION__ROUNDZ": "3"})


def test_an_error_names_the_variable_that_set_the_value() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(environ={"FOGFL_FEDERATION__ROUNDS": "0", "FOGFL_MQTT__HOST": "broker"})
    assert str(raised.value) == (
        "invalid configuration: FOGFL_FEDERATION__ROUNDS=0: federation.rounds: "
        "Input should be greater than or equal to 1 (got 0)"
    )


def test_an_error_names_the_flag_or_the_file_that_set_the_value(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  port: 70000\nfederation:\n  regions: [a, a]\n")
    with pytest.raises(ConfigError) as raised:
        load_config(
            path,
            {"fog.deadline_s": 0},
            environ={"FOGFL_MQTT__KEEPALIVE_S": "1"},
            sources={"fog.deadline_s": "--deadline 0"},
        )
    lines = str(raised.value).splitlines()
    assert lines[0] == "invalid configuration:"
    assert sorted(line.strip().split(": ")[0] for line in lines[1:]) == sorted(
        [str(path), str(path), "--deadline 0", "FOGFL_MQTT__KEEPALIVE_S=1"]
    )
    assert f"  {path}: mqtt.port: Input should be less than or equal to 65535" in str(raised.value)
    assert f"  {path}: federation: Value error, region names repeat" in str(raised.value)


def test_bad_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("mqtt: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken, environ={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml", environ={})
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listed, environ={})


def test_region_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="'a/b' must be 1-57 letters, digits"):
        load_config(overrides={"federation.regions": ["north", "a/b"]}, environ={})
    with pytest.raises(ConfigError, match="too long to number its clients"):
        load_config(overrides={"federation.regions": ["r" * 56]}, environ={})
    with pytest.raises(ConfigError, match="repeat"):
        load_config(overrides={"federation.regions": ["a", "a"]}, environ={})
    with pytest.raises(ConfigError, match="min_regions=3 exceeds"):
        load_config(overrides={"federation.min_regions": 3}, environ={})


def test_dumped_config_loads_back_identically(tmp_path: Path) -> None:
    config = load_config(overrides={"federation.rounds": 3, "mqtt.protocol": 5}, environ={})
    assert config.mqtt.protocol == "5"
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path, environ={}) == config


def test_a_dumped_config_holds_no_password_and_the_environment_hands_it_on(
    tmp_path: Path,
) -> None:
    # Numeric-looking, as YAML would misread it from a variable: read verbatim.
    password = "0123 #: secret"
    config = load_config(overrides={"mqtt.password": password}, environ={})
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert "secret" not in path.read_text() and "password" not in path.read_text()
    assert load_config(path, environ={}).mqtt.password is None
    environment = secret_environment(config)
    assert environment == {"FOGFL_MQTT__PASSWORD": password}
    assert load_config(path, environ=environment) == config


def test_an_invalid_password_is_not_shown(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  password: 98765\n")
    with pytest.raises(
        ConfigError, match=r"mqtt\.password: Input should be a valid string"
    ) as raised:
        load_config(path, environ={})
    assert "98765" not in str(raised.value)


def test_every_key_is_documented() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()

    def keys(model: object, prefix: str = "") -> list[str]:
        found = []
        for name in type(model).model_fields:  # type: ignore[attr-defined]
            value = getattr(model, name)
            if hasattr(value, "model_fields"):
                found += keys(value, f"{prefix}{name}.")
            else:
                found.append(f"{prefix}{name}")
        return found

    missing = [key for key in keys(FogflConfig()) if f"`{key}" not in documented]
    assert missing == [], f"docs/configuration.md does not describe {missing}"


def test_a_region_listing_its_clients_expects_each_of_them() -> None:
    config = load_config(
        None,
        {
            "federation.regions": ["a", "b"],
            "federation.clients": {"a": ["1", "2", "3", "4", "5"], "b": ["6"]},
        },
        environ={},
    )
    assert (config.expected_updates_in("a"), config.expected_updates_in("b")) == (5, 1)
    config.fog.expected_updates = 2
    assert config.expected_updates_in("a") == 2


@pytest.mark.parametrize(
    ("client_id", "why"),
    [
        ("+", "must be 1-57 letters"),  # the ACL would grant write fl/updates/north/+
        ("#", "must be 1-57 letters"),
        ("a/b", "must be 1-57 letters"),  # a nested topic and credentials directory
        ("a b", "must be 1-57 letters"),  # the ACL file splits at spaces
        ("", "must be 1-57 letters"),
        ("c" * 58, "must be 1-57 letters"),  # client-<id> would not fit a certificate
        ("s1", "listed in regions 'north' and 'south'"),
        ("n1", "listed twice in region 'north'"),
    ],
)
def test_client_ids_are_names_of_one_client_each(client_id: str, why: str) -> None:
    clients = {"north": ["n1", client_id], "south": ["s1"]}
    with pytest.raises(ConfigError) as raised:
        load_config(
            None,
            {"federation.regions": ["north", "south"], "federation.clients": clients},
            environ={},
        )
    assert f"federation.clients: Value error, client id {client_id!r}" in str(raised.value)
    assert why in str(raised.value)


def test_ordinary_client_ids_load() -> None:
    clients = {"north": ["north-01", "n_2.b"], "south": ["S3"]}
    config = load_config(
        None, {"federation.regions": ["north", "south"], "federation.clients": clients}, environ={}
    )
    assert config.federation.client_ids() == clients
