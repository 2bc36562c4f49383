"""Throughput trace files: two whitespace-separated columns per line, `time_s
throughput_mbit_s`, as public 3G/HSDPA and broadband trace collections use them. Blank lines
and lines starting with `#` are skipped; every other line must hold exactly two finite
numbers, times must not decrease and throughputs must not be negative."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from fogfl.errors import LinkError

MAX_TRACE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ThroughputTrace:
    """A trace as a piecewise-constant rate: `mbit_s[i]` holds from `starts_s[i]` until the
    next start, the last one until `period_s`, after which the trace starts again. Times are
    shifted so the first sample is at 0."""

    path: Path
    starts_s: tuple[float, ...]
    mbit_s: tuple[float, ...]
    period_s: float

    @property
    def mean_mbit_s(self) -> float:
        bounds = (*self.starts_s[1:], self.period_s)
        volume = sum(
            r * (e - s) for r, s, e in zip(self.mbit_s, self.starts_s, bounds, strict=True)
        )
        return volume / self.period_s


def read_trace(path: Path) -> ThroughputTrace:
    """The trace in `path`; LinkError naming the file and line of the first problem."""
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise LinkError(f"cannot read trace file {path}: {exc.strerror}") from None
    return _read_trace_cached(resolved, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _read_trace_cached(path: Path, mtime_ns: int, size: int) -> ThroughputTrace:
    # Keyed by modification time and size too, so an edited file is read again.
    if size > MAX_TRACE_BYTES:
        raise LinkError(
            f"trace file {path} has {size} bytes, more than {MAX_TRACE_BYTES}; is it a trace?"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise LinkError(f"cannot read trace file {path}: {reason}") from None
    return parse_trace(text, path)


def parse_trace(text: str, path: Path) -> ThroughputTrace:
    """The trace in `text` (read from `path`, which error messages name)."""
    times: list[float] = []
    rates: list[float] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.strip()
        if not content or content.startswith("#"):
            continue
        where = f"trace file {path} line {number}"
        fields = content.split()
        if len(fields) != 2:
            raise LinkError(
                f"{where}: expected two columns `time_s throughput_mbit_s`, got {content[:80]!r}"
            )
        try:
            time_s, rate = float(fields[0]), float(fields[1])
        except ValueError:
            raise LinkError(f"{where}: {content[:80]!r} is not two numbers") from None
        if not (math.isfinite(time_s) and math.isfinite(rate)):
            raise LinkError(f"{where}: time and throughput must be finite numbers")
        if time_s < 0:
            raise LinkError(f"{where}: time {time_s:g} s is negative")
        if rate < 0:
            raise LinkError(f"{where}: throughput {rate:g} Mbit/s is negative")
        if times and time_s < times[-1]:
            raise LinkError(
                f"{where}: time {time_s:g} s comes before the previous line's {times[-1]:g} s; "
                "times must not decrease"
            )
        times.append(time_s)
        rates.append(rate)
    if len(times) < 2:
        raise LinkError(
            f"trace file {path} has {len(times)} samples; a trace needs at least two lines "
            "`time_s throughput_mbit_s`"
        )
    first = times[0]
    starts = [t - first for t in times]
    if starts[-1] <= 0:
        raise LinkError(f"trace file {path}: every sample is at the same time {first:g} s")
    # The last sample holds for a typical sample interval before the trace loops.
    steps = sorted(b - a for a, b in itertools.pairwise(starts) if b > a)
    period = starts[-1] + steps[len(steps) // 2]
    trace = ThroughputTrace(path, tuple(starts), tuple(rates), period)
    if trace.mean_mbit_s <= 0:
        raise LinkError(f"trace file {path}: every throughput is 0, nothing would ever arrive")
    return trace
