"""`python -m fogfl.links`: many proxies in one process, their ports, their counters written
while it runs and once more when SIGTERM stops it, and a bad spec refused in one line."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from fogfl.links.runner import main
from tests.links.helpers import link_runner


class _Sink:
    """A TCP server on loopback that reads every connection to its end."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                chunks = []
                while data := conn.recv(65536):
                    chunks.append(data)
                self.received.append(b"".join(chunks))

    def close(self) -> None:
        self.server.close()


def _send(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the sink closes once it has read everything


def test_the_runner_hosts_proxies_counts_and_stops_cleanly(tmp_path: Path) -> None:
    sink = _Sink()
    spec = {
        "upstream_port": sink.port,
        "counters_every_s": 0.1,
        "proxies": [
            {"name": "north-01", "link": {"rate_mbit": 40, "latency_ms": 5}},
            {"name": "north-02", "link": {"scenario": "home_stable"}},
            {"name": "south-03"},
        ],
    }
    try:
        with link_runner(tmp_path, spec) as runner:
            assert set(runner.ports) == {"north-01", "north-02", "south-03"}
            assert len(set(runner.ports.values())) == 3
            _send(runner.ports["north-01"], b"a" * 300_000)
            _send(runner.ports["south-03"], b"b" * 1000)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                counters = runner.counters()
                if counters["north-01"]["uplink_bytes"] == 300_000:
                    break
                time.sleep(0.05)
            assert counters["north-01"]["uplink_bytes"] == 300_000
            assert counters["north-02"]["state"] == "up"
            assert 0 < counters["north-02"]["rate_mbit"]["uplink"] < 20
            code, stdout = runner.stop()
            assert code == 0
            for name, port in runner.ports.items():
                assert f"listening {name} 127.0.0.1:{port}" in stdout
            final = runner.counters()
            assert final["south-03"]["uplink_bytes"] == 1000
            assert final["north-01"]["connections"] == 1
            assert sorted(sink.received) == [b"a" * 300_000, b"b" * 1000]
    finally:
        sink.close()


def test_a_bad_spec_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "links.json"
    spec.write_text(
        json.dumps(
            {"upstream_port": 1883, "proxies": [{"name": "a", "link": {"scenario": "moon"}}]}
        )
    )
    assert main([str(spec)]) == 2
    error = capsys.readouterr().err
    assert error.strip().count("\n") == 0
    assert "proxies.0.link.scenario" in error and "unknown scenario 'moon'" in error
    spec.write_text(json.dumps({"upstream_port": 1883, "proxies": [{"name": "a"}, {"name": "a"}]}))
    assert main([str(spec)]) == 2
    assert "proxy names repeat: a" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read link spec" in capsys.readouterr().err
