"""The LSTM: the seed's shapes, a tiny training that learns, early stopping, and its saved
form read back (and refused when damaged)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fogfl.bandwidth.predictor import (
    Architecture,
    BandwidthLSTM,
    EarlyStopping,
    Predictor,
    TrainSettings,
    train_predictor,
)
from fogfl.bandwidth.series import synthetic_series
from fogfl.bandwidth.windows import windowed
from fogfl.errors import BandwidthError


def test_the_seed_architecture() -> None:
    model = BandwidthLSTM()
    sizes = [(lstm.input_size, lstm.hidden_size) for lstm in model.lstms]
    assert sizes == [(4, 128), (128, 64), (64, 32)]
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 16), (16, 8), (8, 1)]
    assert [n.num_features for n in model.norms] == [128, 64, 32]
    assert model.eval()(torch.zeros(5, 10, 4)).shape == (5,)


def test_early_stopping_by_hand() -> None:
    stopping = EarlyStopping(patience=2)
    assert stopping.update(1.0) and not stopping.stop
    assert not stopping.update(1.0) and not stopping.stop
    assert stopping.update(0.5)
    assert not stopping.update(0.6) and not stopping.update(0.7) and stopping.stop


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Predictor, object, object]:
    torch.set_num_threads(1)
    data = windowed([synthetic_series("internet", 400, seed=0)])
    small = Architecture(lstm_units=(16, 8), dense_units=(8, 4), target="level")
    predictor, report = train_predictor(data, TrainSettings(epochs=6, patience=6), small)
    return predictor, report, data


def test_tiny_training_learns_and_reports(trained: tuple) -> None:
    predictor, report, data = trained
    assert report.epochs_run == 6 and 1 <= report.best_epoch <= 6
    assert report.validation_loss[report.best_epoch - 1] == min(report.validation_loss)
    assert report.train_loss[-1] < report.train_loss[0]
    assert report.windows == {"train": 270, "validation": 60, "test": 60}
    assert set(report.test) >= {"mse", "mae", "mape", "accuracy", "within_10pct"}
    forecasts = predictor.predict(data.test.inputs)
    assert forecasts.shape == (60,)
    assert 70 < forecasts.mean() < 130  # in Mbit/s, the internet link's range


def test_save_and_load_give_the_same_forecasts(trained: tuple, tmp_path: Path) -> None:
    predictor, _, data = trained
    predictor.metadata = {"report": {"mse": 1.0}}
    predictor.save(tmp_path)
    document = json.loads((tmp_path / "predictor.json").read_text())
    assert document["normalisation"]["low"] == predictor.normalisation.low.tolist()
    assert document["architecture"]["lstm_units"] == [16, 8]
    loaded = Predictor.load(tmp_path)
    np.testing.assert_array_equal(
        loaded.predict(data.test.inputs), predictor.predict(data.test.inputs)
    )
    assert loaded.report == {"mse": 1.0}
    assert loaded.forecast_from_throughputs([100.0] * 3) is None
    assert loaded.forecast_from_throughputs([100.0] * 10) is not None


def test_wrong_inputs_are_refused(trained: tuple) -> None:
    predictor, _, _ = trained
    with pytest.raises(BandwidthError, match="10 steps × 4 features"):
        predictor.predict(np.zeros((1, 9, 4)))
    with pytest.raises(BandwidthError, match="NaN"):
        predictor.predict(np.full((1, 10, 4), np.nan))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "predictor.safetensors").write_bytes(b"\x00" * 40), "safetensors"),
        (lambda d: (d / "predictor.json").write_text("{not json"), "not a readable JSON"),
        (lambda d: (d / "predictor.json").unlink(), "predictor.json is missing"),
        (
            lambda d: (d / "predictor.json").write_text(json.dumps({"format": "keras-h5"})),
            "format 'keras-h5'",
        ),
    ],
)
def test_a_damaged_model_is_refused(trained: tuple, tmp_path: Path, damage, message: str) -> None:
    trained[0].save(tmp_path)
    damage(tmp_path)
    with pytest.raises(BandwidthError, match=message):
        Predictor.load(tmp_path)


def test_weights_of_another_architecture_are_refused(trained: tuple, tmp_path: Path) -> None:
    trained[0].save(tmp_path)
    meta = json.loads((tmp_path / "predictor.json").read_text())
    meta["architecture"]["lstm_units"] = [32, 8]
    (tmp_path / "predictor.json").write_text(json.dumps(meta))
    with pytest.raises(BandwidthError, match="has shape"):
        Predictor.load(tmp_path)


def test_a_residual_lstm_keeps_its_target_and_beats_the_level_on_a_smooth_link(
    trained: tuple, tmp_path: Path
) -> None:
    _, level_report, data = trained
    small = Architecture(lstm_units=(16, 8), dense_units=(8, 4), target="residual")
    residual, report = train_predictor(data, TrainSettings(epochs=6, patience=6), small)
    # Same layers, same data, same epochs: learning the change from the last value is the
    # easier task on a series whose steps are ~1 % of its level.
    assert report.test["mae"] < level_report.test["mae"]
    residual.save(tmp_path)
    loaded = Predictor.load(tmp_path)
    assert loaded.architecture.target == "residual"
    np.testing.assert_array_equal(
        loaded.predict(data.test.inputs), residual.predict(data.test.inputs)
    )
