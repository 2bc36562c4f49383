"""Throughput trace files: read as a looping rate, every malformed line named by file and
line, and the real traces in ../shared/data/bandwidth-traces all readable."""

from __future__ import annotations

from pathlib import Path

import pytest

from fogfl.errors import LinkError
from fogfl.links.model import BYTES_PER_MBIT, trace_link
from fogfl.links.traces import read_trace

SHARED_TRACES = Path(__file__).parents[2].parent / "shared" / "data" / "bandwidth-traces"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.txt"
    path.write_text(text)
    return path


def test_a_trace_is_a_looping_rate_from_its_first_sample(tmp_path: Path) -> None:
    path = _write(tmp_path, "# a comment\n\n0.5\t2.0\n1.5  4\n2.5 0\n3.5 8.0\n")
    trace = read_trace(path)
    assert trace.starts_s == (0.0, 1.0, 2.0, 3.0)
    assert trace.mbit_s == (2.0, 4.0, 0.0, 8.0)
    assert trace.period_s == 4.0  # the last sample holds for a typical interval
    assert trace.mean_mbit_s == pytest.approx(3.5)


def test_a_trace_link_replays_from_its_offset_and_loops(tmp_path: Path) -> None:
    trace = read_trace(_write(tmp_path, "0 2\n1 4\n2 0\n3 8\n"))
    link = trace_link("c", trace, offset_s=1.0, latency_ms=50)
    rates = [link.uplink.rate.rate_at(t + 0.5) / BYTES_PER_MBIT for t in range(6)]
    assert rates == [4.0, 0.0, 8.0, 2.0, 4.0, 0.0]
    # From offset 1: 0.5 MB in 1 s at 4 Mbit/s, nothing for 1 s, 1 MB in 1 s at 8 Mbit/s.
    assert link.transfer_time(1_500_000) == pytest.approx(3.0 + 0.05)
    assert link.downlink == link.uplink


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0 1\n1 2 3\n", "line 2: expected two columns"),
        ("0 1\n1 fast\n", "line 2: '1 fast' is not two numbers"),
        ("0 1\n2 1\n1 1\n", "line 3: time 1 s comes before the previous line's 2 s"),
        ("0 1\n1 -3\n", "line 2: throughput -3 Mbit/s is negative"),
        ("-1 1\n1 1\n", "line 1: time -1 s is negative"),
        ("0 1\n1 nan\n", "line 2: time and throughput must be finite"),
        ("# only a comment\n0 1\n", "has 1 samples"),
        ("", "has 0 samples"),
        ("0 0\n1 0\n", "every throughput is 0"),
        ("3 1\n3 2\n", "every sample is at the same time"),
    ],
)
def test_a_malformed_trace_names_its_file_and_line(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(LinkError) as caught:
        read_trace(path)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)


def test_a_missing_or_binary_trace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LinkError, match=r"cannot read trace file .*nope\.txt"):
        read_trace(tmp_path / "nope.txt")
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LinkError, match="not UTF-8"):
        read_trace(binary)


def test_an_edited_trace_is_read_again(tmp_path: Path) -> None:
    path = _write(tmp_path, "0 1\n1 1\n")
    assert read_trace(path).mbit_s == (1.0, 1.0)
    path.write_text("0 5\n1 5\n2 5\n")
    assert read_trace(path).mbit_s == (5.0, 5.0, 5.0)


def test_every_shared_real_trace_reads() -> None:
    files = sorted(p for p in SHARED_TRACES.glob("*/*") if p.is_file())
    if not files:
        pytest.skip(f"no real traces in {SHARED_TRACES}")
    for path in files:
        trace = read_trace(path)
        assert trace.period_s > 0 and trace.mean_mbit_s > 0, path
