"""The links: section: each entry one source, clients resolved to their own entry, their
region's or the default, every mistake a one-line error naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from fogfl.links.model import BYTES_PER_MBIT
from fogfl.links.settings import LinkSettings, LinksSettings, resolve_trace_paths
from fogfl.run_dir import LinkBytes, read_link_bytes


def test_a_client_gets_its_own_entry_else_its_regions_else_the_default() -> None:
    links = LinksSettings.model_validate(
        {
            "default": {"scenario": "home_stable"},
            "regions": {"south": {"rate_mbit": 4}},
            "clients": {"south-04": {"rate_mbit": 10, "uplink_mbit": 2, "latency_ms": 30}},
        }
    )
    own = links.link_for("south", "south-04", seed=42)
    regional = links.link_for("south", "south-05", seed=42)
    default = links.link_for("north", "north-01", seed=42)
    assert own is not None and regional is not None and default is not None
    assert own.uplink.rate.rate_at(0) == 2 * BYTES_PER_MBIT
    assert own.downlink.rate.rate_at(0) == 10 * BYTES_PER_MBIT
    assert own.uplink.latency_s == pytest.approx(0.03)
    assert regional.uplink.rate.rate_at(0) == 4 * BYTES_PER_MBIT
    assert regional.uplink.latency_s == 0.0
    assert default.name.startswith("north-01:home_stable")


def test_no_links_section_means_every_link_is_unshaped() -> None:
    links = LinksSettings()
    assert not links.enabled
    assert links.link_for("north", "north-01", seed=42) is None
    assert (
        LinksSettings(regions={"north": LinkSettings(rate_mbit=1)}).link_for(
            "south", "south-01", seed=1
        )
        is None
    )


def test_trace_offsets_vary_per_client_unless_given(tmp_path: Path) -> None:
    trace = tmp_path / "t.txt"
    trace.write_text("".join(f"{t} {1 + t % 7}\n" for t in range(100)))
    entry = LinkSettings(trace=trace)
    a, b = entry.build("north-01", 42), entry.build("north-02", 42)
    assert a.uplink.rate.offset_s != b.uplink.rate.offset_s
    assert entry.build("north-01", 42).uplink.rate.offset_s == a.uplink.rate.offset_s
    pinned = LinkSettings(trace=trace, offset_s=30.0)
    assert pinned.build("north-01", 42).uplink.rate.offset_s == 30.0
    assert pinned.build("north-02", 42).uplink.rate.offset_s == 30.0


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({}, "exactly one of scenario, rate_mbit"),
        ({"scenario": "home_stable", "rate_mbit": 3}, "got scenario and rate_mbit"),
        ({"scenario": "mars_orbit"}, "unknown scenario 'mars_orbit'; use one of home_stable"),
        ({"uplink_mbit": 3}, "give rate_mbit, or both uplink_mbit and downlink_mbit"),
        ({"rate_mbit": 0}, "greater than 0"),
        ({"rate_mbit": 3, "offset_s": 4}, "offset_s applies to a trace only"),
        ({"rate_mbit": 3, "latency": 4}, "Extra inputs are not permitted"),
        (
            {"rate_mbit": 3, "outages": [{"at_s": 1, "duration_s": 5, "every_s": 2}]},
            "never ends",
        ),
        ({"rate_mbit": 3, "outages": [{"at_s": 1, "duration_s": 5, "kind": "drop"}]}, "'stall'"),
        ({"trace": "/no/such/trace.txt"}, "cannot read trace file /no/such/trace.txt"),
    ],
)
def test_a_bad_entry_says_what_is_wrong(entry: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        LinkSettings.model_validate(entry)
    assert problem in str(caught.value)


def test_a_malformed_trace_in_config_names_its_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.txt"
    trace.write_text("0 1\n1 x\n")
    with pytest.raises(ValidationError, match=r"bad.txt line 2"):
        LinkSettings(trace=trace)


def test_trace_paths_in_a_config_file_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "bus.txt").write_text("0 1\n1 2\n")
    data = yaml.safe_load(
        "links:\n  default: {trace: traces/bus.txt}\n"
        "  clients: {north-01: {trace: traces/bus.txt, offset_s: 1}}\n"
        "  regions: {south: {rate_mbit: 2}}\n"
    )
    resolve_trace_paths(data, tmp_path)
    links = LinksSettings.model_validate(data["links"])
    assert links.default is not None and links.default.trace == tmp_path / "traces" / "bus.txt"
    assert links.clients["north-01"].trace == tmp_path / "traces" / "bus.txt"


def test_fogfl_config_reads_links_from_its_file_with_traces_beside_it(tmp_path: Path) -> None:
    from fogfl.config import FogflConfig, load_config
    from fogfl.errors import ConfigError

    assert not FogflConfig().links.enabled
    (tmp_path / "bus.txt").write_text("0 1\n1 2\n")
    config_file = tmp_path / "fogfl.yaml"
    config_file.write_text("links:\n  regions: {north: {trace: bus.txt, latency_ms: 40}}\n")
    config = load_config(config_file, environ={})
    link = config.links.link_for("north", "north-01", config.federation.seed)
    assert link is not None and link.uplink.latency_s == pytest.approx(0.04)
    config_file.write_text("links:\n  clients: {north-01: {trace: missing.txt}}\n")
    with pytest.raises(ConfigError, match=r"links\.clients\.north-01\.trace: .*missing\.txt"):
        load_config(config_file, environ={})


def test_a_fog_sites_cloud_link_is_its_own_else_the_cloud_default(tmp_path: Path) -> None:
    (tmp_path / "wan.txt").write_text("0 8\n1 4\n")
    data = yaml.safe_load(
        "links:\n  cloud: {rate_mbit: 20}\n  cloud_regions: {south: {trace: wan.txt}}\n"
    )
    resolve_trace_paths(data, tmp_path)
    links = LinksSettings.model_validate(data["links"])
    # Cloud links alone emulate no client's link.
    assert links.any and not links.enabled
    north, south = links.cloud_entry_for("north"), links.cloud_entry_for("south")
    assert north is not None and north.rate_mbit == 20
    assert south is not None and south.trace == tmp_path / "wan.txt"
    assert links.cloud_link_name("south") == "cloud-south"
    assert LinksSettings().cloud_entry_for("north") is None


def test_link_bytes_are_split_into_the_clients_and_the_cloud(tmp_path: Path) -> None:
    counters = tmp_path / "counters.json"
    counted = {
        "north-01": {"uplink_bytes": 10, "downlink_bytes": 20},
        "north-02": {"uplink_bytes": 1, "downlink_bytes": 2},
        "cloud-north": {"uplink_bytes": 300, "downlink_bytes": 400},
    }
    counters.write_text(json.dumps({"written_unix_s": 1.0, "links": counted}))
    assert read_link_bytes(counters) == LinkBytes(11, 22, 300, 400)
