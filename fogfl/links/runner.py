"""One process hosting many link proxies: `python -m fogfl.links SPEC`.

The spec (JSON or YAML) names the upstream broker and the proxies, each with its link in
the `links:` section's entry format (or none: unshaped, counted only)::

    {"upstream_host": "127.0.0.1", "upstream_port": 1883, "seed": 42,
     "proxies": [{"name": "north-01", "link": {"rate_mbit": 4, "latency_ms": 20}},
                 {"name": "north-02", "link": {"scenario": "rural_unstable"}}]}

Once every proxy listens, the runner prints one line `listening NAME HOST:PORT` per proxy
and writes `--ports FILE` ({name: port}); it writes every proxy's counters to `--counters
FILE` every `counters_every_s` and once more on exit. SIGTERM or SIGINT stop it cleanly
(exit 0); an invalid spec exits 2 with one line saying what is wrong."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fogfl.errors import LinkError
from fogfl.links.proxy import LinkClock, LinkProxy
from fogfl.links.settings import LinkSettings

logger = logging.getLogger("fogfl.links")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProxySpec(_Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    client_id: str | None = Field(None, description="whose variation of the link; default name")
    link: LinkSettings | None = Field(None, description="none: unshaped, counted only")
    listen_port: int = Field(0, ge=0, le=65535, description="0: a free port")
    upstream_host: str | None = None
    upstream_port: int | None = Field(None, ge=1, le=65535)


class RunnerSpec(_Spec):
    upstream_host: str = "127.0.0.1"
    upstream_port: int = Field(ge=1, le=65535)
    listen_host: str = "127.0.0.1"
    seed: int = Field(42, ge=0, description="the federation's seed (per-client variation)")
    counters_every_s: float = Field(1.0, gt=0, le=3600)
    proxies: list[ProxySpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> RunnerSpec:
        names = [p.name for p in self.proxies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"proxy names repeat: {', '.join(repeated)}")
        return self


def read_spec(path: Path) -> RunnerSpec:
    """The runner's spec from a JSON or YAML file; LinkError saying what is wrong."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LinkError(f"cannot read link spec {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise LinkError(f"link spec {path} is neither JSON nor YAML: {exc}") from None
    try:
        return RunnerSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()
        )
        raise LinkError(f"invalid link spec {path}: {problems}") from None


def build_proxies(spec: RunnerSpec, clock: LinkClock) -> list[LinkProxy]:
    """One proxy per entry of the spec, each with its client's link model."""
    proxies = []
    for entry in spec.proxies:
        client_id = entry.client_id or entry.name
        model = entry.link.build(client_id, spec.seed) if entry.link is not None else None
        proxies.append(
            LinkProxy(
                entry.name,
                model,
                entry.upstream_host or spec.upstream_host,
                entry.upstream_port or spec.upstream_port,
                clock,
                spec.listen_host,
                entry.listen_port,
                spec.seed,
            )
        )
    return proxies


def _write_json(path: Path, data: Any) -> None:
    """Whole or not at all: readers never see half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True))
    partial.replace(path)


def counters_report(proxies: Sequence[LinkProxy], clock: LinkClock) -> dict[str, Any]:
    return {
        "link_time_s": round(clock.now(), 6),
        "written_unix_s": round(time.time(), 6),
        "links": {proxy.name: proxy.snapshot() for proxy in proxies},
    }


async def serve(
    spec: RunnerSpec, ports_path: Path | None, counters_path: Path | None
) -> dict[str, Any]:
    """Run every proxy until SIGTERM or SIGINT; the final counters."""
    clock = LinkClock()
    proxies = build_proxies(spec, clock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        for proxy in proxies:
            await proxy.start()
        for proxy in proxies:
            print(f"listening {proxy.name} {spec.listen_host}:{proxy.port}", flush=True)
        if ports_path is not None:
            _write_json(ports_path, {proxy.name: proxy.port for proxy in proxies})
        while not stop.is_set():
            if counters_path is not None:
                _write_json(counters_path, counters_report(proxies, clock))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), spec.counters_every_s)
    finally:
        for proxy in proxies:
            await proxy.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    report = counters_report(proxies, clock)
    if counters_path is not None:
        _write_json(counters_path, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fogfl.links",
        description="Run emulated links: one TCP proxy per link, forwarding to the broker.",
    )
    parser.add_argument("spec", type=Path, help="JSON or YAML file naming the proxies")
    parser.add_argument("--ports", type=Path, help="write {name: listen port} here")
    parser.add_argument("--counters", type=Path, help="write per-link counters here")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s links: %(message)s"
    )
    try:
        spec = read_spec(args.spec)
        asyncio.run(serve(spec, args.ports, args.counters))
    except LinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen or write: {exc}", file=sys.stderr)
        return 2
    return 0
