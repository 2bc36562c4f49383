"""Link series: the synthetic kinds stay in the seed's ranges, the QoE scenarios come from the
task's own constants, trace files are read as documented and bad ones are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fogfl.bandwidth.series import (
    FEATURES,
    PROFILES,
    TRACE_CONSTANTS,
    generator_forecast,
    load_sources,
    read_trace,
    read_traces,
    synthetic_series,
    write_series,
)
from fogfl.errors import BandwidthError
from fogfl.tasks.qoe import BASE_SCENARIOS
from tests.bandwidth.conftest import TRACES, write_trace


@pytest.mark.parametrize(
    ("kind", "bounds"),
    [
        ("datacenter", [(0.1, 2.0), (8000, 12000), (0.0, 0.01), (0.99, 1.0)]),
        ("internet", [(10, 200), (80, 120), (0.0, 0.05), (0.90, 0.99)]),
    ],
)
def test_seed_kinds_stay_in_their_ranges(kind: str, bounds: list[tuple[float, float]]) -> None:
    series = synthetic_series(kind, 2000, seed=3)
    assert series.features.shape == (2000, len(FEATURES))
    for column, (low, high) in enumerate(bounds):
        values = series.features[:, column]
        assert values.min() >= low - 1e-9 and values.max() <= high + 1e-9, FEATURES[column]
        assert values.max() - values.min() > 0.2 * (high - low), "the feature hardly moves"
    # Latency rises when bandwidth falls (congestion drives both).
    assert np.corrcoef(series.features[:, 0], series.features[:, 1])[0, 1] < -0.5


def test_the_same_seed_gives_the_same_series_and_another_seed_another() -> None:
    a, b = synthetic_series("internet", 500, 1), synthetic_series("internet", 500, 1)
    assert np.array_equal(a.features, b.features)
    assert not np.array_equal(a.features, synthetic_series("internet", 500, 2).features)


def test_qoe_scenarios_use_the_task_constants() -> None:
    for scenario in BASE_SCENARIOS:
        series = synthetic_series(scenario.name, 3000, seed=0)
        # The QoE scenarios state throughput in kbit/s; the series in Mbit/s.
        assert series.bandwidth.mean() == pytest.approx(scenario.throughput_kbps / 1000, rel=0.25)
        assert series.features[:, 0].mean() == pytest.approx(scenario.latency_ms, rel=0.4)


@pytest.mark.parametrize("kind", ["datacenter", "internet"])
def test_the_generator_forecast_beats_the_last_value_by_the_noise_it_cannot_know(
    kind: str,
) -> None:
    series = synthetic_series(kind, 3000, seed=4, variant=2)
    forecast = generator_forecast(kind, 3000, seed=4, variant=2)
    known = np.mean((forecast[1:] - series.bandwidth[1:]) ** 2)
    last_value = np.mean(np.diff(series.bandwidth) ** 2)
    assert known < last_value
    # What is left is the AR(1) shocks (and a little clipping): σ²(1 − ρ²).
    shocks = (PROFILES[kind].noise * PROFILES[kind].bandwidth_mbit_s[1]) ** 2 * (1 - 0.95**2)
    assert known == pytest.approx(shocks, rel=0.15)
    with pytest.raises(BandwidthError, match="no generator forecast"):
        generator_forecast("satellite", 10, 0)


def test_a_scenarios_generator_forecast_is_its_variants_mean() -> None:
    series = synthetic_series("rural_unstable", 4000, seed=1, variant=3)
    forecast = generator_forecast("rural_unstable", 4000, seed=1, variant=3)
    assert np.all(forecast == forecast[0])
    # Independent draws: the mean is the best forecast, the last value's error is twice it.
    assert forecast[0] == pytest.approx(series.bandwidth.mean(), rel=0.02)
    known = np.mean((forecast[1:] - series.bandwidth[1:]) ** 2)
    assert np.mean(np.diff(series.bandwidth) ** 2) == pytest.approx(2 * known, rel=0.1)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(BandwidthError, match="unknown synthetic link kind 'lte'"):
        synthetic_series("lte", 10, 0)


def test_two_column_trace_has_constant_other_features(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.txt", [(5.0, 1.5), (5.5, 2.0), (6.5, 0.0)])
    series = read_trace(path)
    assert series.time_s.tolist() == [0.0, 0.5, 1.5]
    assert series.bandwidth.tolist() == [1.5, 2.0, 0.0]
    assert set(series.constant) == set(TRACE_CONSTANTS)
    assert series.features[:, FEATURES.index("reliability")].tolist() == [1.0, 1.0, 1.0]


def test_generated_five_column_file_reads_back(tmp_path: Path) -> None:
    series = synthetic_series("datacenter", 50, 0)
    write_series(tmp_path / "dc.txt", series)
    back = read_trace(tmp_path / "dc.txt")
    assert back.constant == ()
    np.testing.assert_allclose(back.features, series.features, rtol=1e-9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 1 2\n1 2 3\n", "line 1 has 3 columns"),
        ("0 1\n1 2\n2 3 4 5 6\n", "line 3 has 5 columns, earlier lines 2"),
        ("0 1\n1 fast\n", r"line 2: '1 fast' is not numbers"),
        ("0 1\n1 nan\n", "non-finite"),
        ("0 1\n0 2\n", "time_s does not rise"),
        ("0 1\n1 -2\n", "negative throughput"),
        ("# only a comment\n", "0 samples"),
        ("\x00\xff\xfe", "cannot read trace|not numbers|columns"),
    ],
)
def test_bad_trace_files_are_refused_with_their_place(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(BandwidthError, match=message):
        read_trace(path)


def test_folder_reading_skips_readme_and_names_by_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    write_trace(tmp_path / "a" / "one.txt", [(0, 1), (1, 2)])
    (tmp_path / "README.md").write_text("# not a trace\nsome words\n")
    assert [s.name for s in read_traces(tmp_path)] == ["a/one"]
    with pytest.raises(BandwidthError, match="no such file"):
        read_traces(tmp_path / "missing")
    with pytest.raises(BandwidthError, match="no data"):
        load_sources(None, [], 10, 0)


@pytest.mark.skipif(not TRACES.is_dir(), reason="no ../shared/data/bandwidth-traces")
def test_the_real_trace_collection_reads() -> None:
    series = read_traces(TRACES / "hsdpa")
    assert len(series) == 80
    assert all(len(s) >= 20 and s.bandwidth.max() > 0 for s in series)
