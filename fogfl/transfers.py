"""How long each client's transfers took in a round, and which updates missed the fog
deadline: collected by the fog broker, handed on by the bridge, summed up by the server
(and computed the same way by the simulation) into metrics.csv's per-round columns.

A transfer's seconds run from the message's `sent_at` to its arrival: an update's at its
fog broker (upload), the global or region model's at the client (download; the client
reports it as its update's `download_seconds` metric). Sender and receiver share a clock
on one machine (`fogfl up`); across machines the figures are only as good as their clocks.
A client's seconds in a round are the sum over its edge rounds.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DOWNLOAD_METRIC = "download_seconds"
# What an adaptive update's metrics add (fogfl.bandwidth.adaptive).
SHARE_METRIC = "upload_share"
PREDICTED_METRIC = "predicted_upload_s"
_CODEC_LABEL = re.compile(r"[a-z0-9_.]{1,24}")
STATS_KEY = "transfers"
# What a bridge hands Flower beside the partial's metrics.
TRANSFERS_METRIC = "transfers"
CLOUD_UPLOAD_METRIC = "cloud_upload_seconds"
# Anything longer is no transfer time but a clock that is off (or a late joiner's retained
# model); such a figure is dropped, not reported.
MAX_TRANSFER_S = 86_400.0


@dataclass
class RegionTransfers:
    """One region's round: seconds per client each way, updates missing at each close
    (`stragglers`), and updates that arrived after their round closed (`late`, by round)."""

    upload_s: dict[str, float] = field(default_factory=dict)
    download_s: dict[str, float] = field(default_factory=dict)
    stragglers: int = 0
    late: dict[int, int] = field(default_factory=dict)
    # Adaptive update codecs: each client's codec (its last edge round's) and the upload
    # seconds its controller predicted (summed over edge rounds, like upload_s).
    codecs: dict[str, str] = field(default_factory=dict)
    predicted_upload_s: dict[str, float] = field(default_factory=dict)

    def add_upload(self, client_id: str, seconds: float) -> None:
        _add(self.upload_s, client_id, seconds)

    def add_download(self, client_id: str, seconds: float | None) -> None:
        if seconds is not None:
            _add(self.download_s, client_id, seconds)

    def add_choice(self, client_id: str, metrics: Mapping[str, float]) -> None:
        """The codec an adaptive update's controller chose, and the upload seconds it
        predicted (the update's `upload_share` and `predicted_upload_s` metrics)."""
        share = metrics.get(SHARE_METRIC)
        if not (isinstance(share, float) and 0 < share <= 1):
            return  # a fixed codec: nothing was chosen
        from fogfl.bandwidth.ladder import codec_for_share

        self.codecs[client_id] = codec_for_share(share).label
        _add(self.predicted_upload_s, client_id, metrics.get(PREDICTED_METRIC, -1.0))

    def as_stats(self) -> dict[str, Any]:
        """The partial's `stats.transfers`."""
        stats: dict[str, Any] = {
            "upload_s": {c: round(s, 6) for c, s in self.upload_s.items()},
            "download_s": {c: round(s, 6) for c, s in self.download_s.items()},
            "stragglers": self.stragglers,
            "late": {str(r): n for r, n in self.late.items()},
        }
        if self.codecs:
            stats["codecs"] = dict(self.codecs)
            stats["predicted_upload_s"] = {
                c: round(s, 6) for c, s in self.predicted_upload_s.items()
            }
        return stats

    @classmethod
    def of_stats(cls, stats: Mapping[str, Any]) -> RegionTransfers:
        """The transfers in a partial's stats; whatever is malformed is left out."""
        raw = stats.get(STATS_KEY)
        found = cls()
        if not isinstance(raw, Mapping):
            return found
        for name, into in (
            ("upload_s", found.upload_s),
            ("download_s", found.download_s),
            ("predicted_upload_s", found.predicted_upload_s),
        ):
            values = raw.get(name)
            if isinstance(values, Mapping):
                for client, seconds in values.items():
                    if _plausible(seconds):
                        into[str(client)] = float(seconds)
        if _count(raw.get("stragglers")):
            found.stragglers = int(raw["stragglers"])
        codecs = raw.get("codecs")
        if isinstance(codecs, Mapping):
            found.codecs = {
                str(client): codec
                for client, codec in codecs.items()
                if isinstance(codec, str) and _CODEC_LABEL.fullmatch(codec)
            }
        late = raw.get("late")
        if isinstance(late, Mapping):
            for round_text, count in late.items():
                if str(round_text).isdigit() and _count(count):
                    found.late[int(round_text)] = int(count)
        return found

    def to_json(self) -> str:
        """For a Flower metrics value (a string), as the bridge hands it on."""
        return json.dumps(self.as_stats(), separators=(",", ":"))

    @classmethod
    def of_json(cls, text: object) -> RegionTransfers:
        try:
            loaded = json.loads(str(text))
        except ValueError:
            return cls()
        return cls.of_stats({STATS_KEY: loaded})


@dataclass
class RoundTransfers:
    """A round's transfers over every region, as metrics.csv reports them."""

    upload_s_max: float | None
    upload_s_median: float | None
    download_s_max: float | None
    download_s_median: float | None
    stragglers: int
    codecs: str | None = None
    predicted_upload_s_median: float | None = None
    upload_prediction_error: float | None = None


def combine(regions: Iterable[RegionTransfers]) -> RoundTransfers:
    """The slowest and the median client each way, and the stragglers, over all regions."""
    uploads: list[float] = []
    downloads: list[float] = []
    stragglers = 0
    chosen: Counter[str] = Counter()
    predicted: list[float] = []
    errors: list[float] = []
    for region in regions:
        uploads += region.upload_s.values()
        downloads += region.download_s.values()
        stragglers += region.stragglers
        chosen.update(region.codecs.values())
        for client, seconds in region.predicted_upload_s.items():
            predicted.append(seconds)
            measured = region.upload_s.get(client)
            if measured:
                errors.append(abs(seconds - measured) / measured)
    return RoundTransfers(
        max(uploads, default=None),
        statistics.median(uploads) if uploads else None,
        max(downloads, default=None),
        statistics.median(downloads) if downloads else None,
        stragglers,
        " ".join(f"{codec}:{n}" for codec, n in sorted(chosen.items())) or None,
        statistics.median(predicted) if predicted else None,
        statistics.median(errors) if errors else None,
    )


def transfer_seconds(sent_at: float | str, arrived_at: float) -> float | None:
    """Seconds from `sent_at` (Unix time, or its metadata text) to `arrived_at`, None when
    either is unknown or the difference is implausible."""
    try:
        sent_at = float(sent_at)
    except ValueError:
        return None
    if not math.isfinite(sent_at) or sent_at <= 0 or arrived_at <= 0:
        return None
    seconds = arrived_at - sent_at
    return max(0.0, seconds) if seconds <= MAX_TRANSFER_S and seconds > -1.0 else None


def _add(into: dict[str, float], client_id: str, seconds: float) -> None:
    if _plausible(seconds):
        into[client_id] = into.get(client_id, 0.0) + float(seconds)


def _plausible(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= MAX_TRANSFER_S
    )


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= 10**12
