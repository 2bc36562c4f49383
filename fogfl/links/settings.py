"""The `links:` configuration section: which emulated link each client talks over.

A client's link is its own entry under `links.clients`, else its region's under
`links.regions`, else `links.default`, else none (unshaped). Each entry is exactly one of
a named scenario, fixed rates, or a throughput trace file, with optional latency, jitter and
outages::

    links:
      default: {scenario: home_stable}
      regions:
        south: {rate_mbit: 4, latency_ms: 20, jitter_ms: 5}
      clients:
        north-01: {trace: traces/bus.txt, offset_s: 30, latency_ms: 60}
        north-02:
          rate_mbit: 10
          uplink_mbit: 2
          outages: [{at_s: 20, duration_s: 3, kind: reset, every_s: 60}]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fogfl.errors import LinkError
from fogfl.identity import client_ordinal, client_seed
from fogfl.links.model import LinkModel, Outage, fixed_link, scenario_link, trace_link
from fogfl.links.scenarios import BASE_SCENARIOS, SCENARIO_NAMES, client_scenario
from fogfl.links.traces import read_trace

# Offsets into a trace come from a stream of their own, apart from the tasks' data streams.
TRACE_OFFSET_STREAM = 0x11AC

# Set by `fogfl up` for a client on an emulated link: the Unix time of the links' time 0,
# so the client can read its own link model where the run has got to (the oracle).
LINK_ORIGIN_ENV = "FOGFL_LINK_ORIGIN"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


class OutageSettings(_Section):
    at_s: float = Field(ge=0, description="when the outage begins, in seconds of link time")
    duration_s: float = Field(gt=0, le=86_400)
    kind: Literal["stall", "reset"] = Field(
        "stall", description="stall: no bytes move; reset: the connection is closed as well"
    )
    every_s: float | None = Field(None, gt=0, description="repeat the outage this often")

    @model_validator(mode="after")
    def _ends(self) -> OutageSettings:
        if self.every_s is not None and self.every_s <= self.duration_s:
            raise ValueError(
                f"an outage of {self.duration_s:g} s every {self.every_s:g} s never ends; "
                "make every_s longer than duration_s"
            )
        return self

    def outage(self) -> Outage:
        return Outage(self.at_s, self.duration_s, self.kind, self.every_s)


_RATE = Field(None, gt=0, le=100_000, description="Mbit/s")


class LinkSettings(_Section):
    """One link: a scenario, fixed rates or a trace; latency, jitter and outages on top."""

    scenario: str | None = Field(None, description=f"one of {', '.join(SCENARIO_NAMES)}")
    rate_mbit: float | None = _RATE
    uplink_mbit: float | None = _RATE
    downlink_mbit: float | None = _RATE
    trace: Path | None = Field(None, description="a `time_s throughput_mbit_s` file")
    offset_s: float | None = Field(
        None, ge=0, description="where in the trace to start; default: per client, from its id"
    )
    latency_ms: float | None = Field(
        None, ge=0, le=60_000, description="one-way; default 0, or half the scenario's RTT"
    )
    jitter_ms: float | None = Field(None, ge=0, le=60_000, description="std. dev. of latency")
    outages: list[OutageSettings] = Field(default_factory=list)

    @field_validator("scenario")
    @classmethod
    def _known_scenario(cls, scenario: str | None) -> str | None:
        if scenario is not None and scenario not in SCENARIO_NAMES:
            raise ValueError(
                f"unknown scenario {scenario!r}; use one of {', '.join(SCENARIO_NAMES)}"
            )
        return scenario

    @field_validator("trace")
    @classmethod
    def _readable_trace(cls, trace: Path | None) -> Path | None:
        if trace is not None:
            try:
                read_trace(trace)
            except LinkError as exc:
                raise ValueError(str(exc)) from None
        return trace

    @model_validator(mode="after")
    def _one_source(self) -> LinkSettings:
        fixed = any(r is not None for r in (self.rate_mbit, self.uplink_mbit, self.downlink_mbit))
        sources = [
            name
            for name, given in (
                ("scenario", self.scenario is not None),
                ("rate_mbit/uplink_mbit/downlink_mbit", fixed),
                ("trace", self.trace is not None),
            )
            if given
        ]
        if len(sources) != 1:
            raise ValueError(
                "a link needs exactly one of scenario, rate_mbit (uplink_mbit, downlink_mbit) "
                f"or trace; got {' and '.join(sources) if sources else 'none'}"
            )
        if fixed and self.rate_mbit is None and None in (self.uplink_mbit, self.downlink_mbit):
            raise ValueError("give rate_mbit, or both uplink_mbit and downlink_mbit")
        if self.offset_s is not None and self.trace is None:
            raise ValueError("offset_s applies to a trace only")
        return self

    def build(self, client_id: str, seed: int) -> LinkModel:
        """This link as `client_id` sees it: scenarios are varied and traces offset per client,
        deterministically from its id and the federation's seed."""
        outages = [o.outage() for o in self.outages]
        if self.scenario is not None:
            # The QoE task's generator and draws, so a client's link is the one its data saw.
            rng = np.random.default_rng([seed, client_seed(client_id)])
            scenario = client_scenario(
                client_ordinal(client_id), rng, BASE_SCENARIOS, pinned=self.scenario
            )
            return scenario_link(
                f"{client_id}:{scenario.name}",
                scenario,
                rng,
                outages=outages,
                latency_ms=self.latency_ms,
                jitter_ms=self.jitter_ms,
            )
        latency, jitter = self.latency_ms or 0.0, self.jitter_ms or 0.0
        if self.trace is not None:
            trace = read_trace(self.trace)
            offset = self.offset_s
            if offset is None:
                stream = np.random.default_rng([seed, client_seed(client_id), TRACE_OFFSET_STREAM])
                offset = float(stream.uniform(0.0, trace.period_s))
            return trace_link(
                f"{client_id}:{self.trace.name}", trace, offset, latency, jitter, outages
            )
        rate = self.rate_mbit
        uplink = self.uplink_mbit or rate
        downlink = self.downlink_mbit or rate
        assert uplink is not None and downlink is not None  # checked by _one_source
        return fixed_link(f"{client_id}:fixed", uplink, downlink, latency, jitter, outages)


CLOUD_LINK_PREFIX = "cloud-"


class LinksSettings(_Section):
    """Emulated links per client, and per fog site to the cloud; no entry at all means
    every link is unshaped."""

    default: LinkSettings | None = Field(None, description="every client without its own entry")
    regions: dict[str, LinkSettings] = Field(default_factory=dict)
    clients: dict[str, LinkSettings] = Field(default_factory=dict)
    cloud: LinkSettings | None = Field(
        None,
        description="every fog site's link to the cloud: its bridge's connection to the "
        "Flower server, which carries the global model down and the partial up",
    )
    cloud_regions: dict[str, LinkSettings] = Field(
        default_factory=dict, description="a fog site's own cloud link, over `cloud`"
    )

    @property
    def enabled(self) -> bool:
        """Whether any client's link is emulated."""
        return self.default is not None or bool(self.regions) or bool(self.clients)

    @property
    def any(self) -> bool:
        """Whether any link at all is emulated (a client's or a fog site's)."""
        return self.enabled or self.cloud is not None or bool(self.cloud_regions)

    def cloud_entry_for(self, region: str) -> LinkSettings | None:
        """A fog site's cloud link: its own, the `cloud` default, or None (unshaped)."""
        return self.cloud_regions.get(region, self.cloud)

    @staticmethod
    def cloud_link_name(region: str) -> str:
        """The name of a fog site's cloud link (its proxy, its counters, its variation)."""
        return f"{CLOUD_LINK_PREFIX}{region}"

    def entry_for(self, region: str, client_id: str) -> LinkSettings | None:
        """The entry that applies to a client: its own, its region's, the default, or None."""
        if client_id in self.clients:
            return self.clients[client_id]
        if region in self.regions:
            return self.regions[region]
        return self.default

    def link_for(self, region: str, client_id: str, seed: int) -> LinkModel | None:
        """The client's link model, or None when its link is unshaped."""
        entry = self.entry_for(region, client_id)
        return entry.build(client_id, seed) if entry is not None else None


def resolve_trace_paths(data: dict[str, Any], base: Path) -> None:
    """Make the relative `trace` paths of a config file's `links:` section relative to
    `base`, the file's directory, like `python_path`."""
    links = data.get("links")
    if not isinstance(links, dict):
        return
    entries = [links.get("default"), links.get("cloud")]
    for group in ("regions", "clients", "cloud_regions"):
        if isinstance(links.get(group), dict):
            entries += list(links[group].values())
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("trace"), str):
            entry["trace"] = str((base / Path(entry["trace"]).expanduser()).resolve())


def read_links_file(path: Path) -> LinksSettings:
    """The `links:` section of a YAML file (`fogfl up --links FILE`), its trace paths
    relative to the file; LinkError saying what is wrong."""
    import yaml
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LinkError(f"cannot read the links file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise LinkError(f"the links file {path} is not YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("links"), dict):
        raise LinkError(f"the links file {path} holds no `links:` section")
    resolve_trace_paths(data, path.parent)
    try:
        return LinksSettings.model_validate(data["links"])
    except ValidationError as exc:
        problems = "; ".join(
            f"links.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise LinkError(f"the links file {path}: {problems}") from None
