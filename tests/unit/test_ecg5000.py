"""The ecg5000 task: the UCR loader reads the real file and rejects corrupted copies clearly,
the partitions are disjoint, complete and seeded, and a short FedAvg run learns above chance.

Reads the real file from the shared data folder beside the repository and skips without it;
the data is never committed, and corrupted copies live only in tmp_path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

from fogfl.aggregation import WeightedModelMean
from fogfl.config import TrainingSettings
from fogfl.errors import ConfigError, TaskError
from fogfl.tasks import load_task
from fogfl.tasks.base import Partition, Task, load_tensors, model_tensors
from fogfl.tasks.ecg5000 import ECG5000Task, client_shares, read_ucr_file
from fogfl.wire import ModelSchema

DATA_FILE = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "ecg5000" / "ECG5000_TRAIN.txt"
)
LABEL_COUNTS = [292, 177, 10, 19, 2]  # UCR labels 1..5 in the 500-series train file


@pytest.fixture
def real_file() -> Path:
    if not DATA_FILE.is_file():
        pytest.skip(f"ECG5000 data not found at {DATA_FILE}")
    return DATA_FILE


def label_mix(labels: npt.NDArray[np.int64], classes: int = 5) -> npt.NDArray[np.float64]:
    return np.bincount(labels, minlength=classes) / len(labels)


def skew(labels: npt.NDArray[np.int64], shares: list[npt.NDArray[np.int64]]) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    overall = label_mix(labels)
    return float(np.mean([0.5 * np.abs(label_mix(labels[s]) - overall).sum() for s in shares]))


def all_series(partitions: list[Partition]) -> npt.NDArray[np.float32]:
    rows = np.concatenate([np.concatenate([p.x_train, p.x_test]) for p in partitions])
    return rows[np.lexsort(rows.T[::-1])]


def test_reads_the_real_file(real_file: Path) -> None:
    series, labels = read_ucr_file(real_file)
    assert series.shape == (500, 140) and series.dtype == np.float32
    assert np.bincount(labels).tolist() == LABEL_COUNTS
    assert np.allclose(series.mean(axis=1), 0, atol=1e-5)  # UCR series are z-normalised


def test_finds_the_file_from_data_dir_or_the_environment(
    real_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ECG5000Task({"data_dir": str(real_file.parent)}).data_files() == [real_file]
    monkeypatch.setenv("FOGFL_DATA_DIR", str(real_file.parents[1]))  # a root with ecg5000/
    assert ECG5000Task({}).data_files() == [real_file]


def test_a_folder_pools_the_test_file_when_asked(real_file: Path, tmp_path: Path) -> None:
    lines = real_file.read_text().splitlines(keepends=True)
    (tmp_path / "ECG5000_TRAIN.txt").write_text("".join(lines))
    (tmp_path / "ECG5000_TEST.txt").write_text("".join(lines[:50]))
    pooled = ECG5000Task({"data_dir": str(tmp_path)})
    assert len(pooled.dataset()[1]) == 550
    train_only = ECG5000Task({"data_dir": str(tmp_path), "include_test_file": False})
    assert len(train_only.dataset()[1]) == 500


def test_reads_tab_separated_files(real_file: Path, tmp_path: Path) -> None:
    lines = real_file.read_text().splitlines()[:20]
    tsv = tmp_path / "ECG5000_TRAIN.tsv"
    tsv.write_text("".join("\t".join(line.split()) + "\n" for line in lines))
    series, labels = read_ucr_file(tsv)
    expected_series, expected_labels = read_ucr_file(real_file)
    np.testing.assert_array_equal(series, expected_series[:20])
    np.testing.assert_array_equal(labels, expected_labels[:20])


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (lambda fields: fields[:-1], "has 140 values, not 141"),
        (lambda fields: [*fields[:9], "abc", *fields[10:]], "value 10 is 'abc', not a number"),
        (lambda fields: ["7", *fields[1:]], "label '7'; ECG5000 labels are 1 to 5"),
        (lambda fields: [*fields[:3], "nan", *fields[4:]], "value 4 is 'nan', not a finite"),
    ],
    ids=["short-line", "not-a-number", "unknown-label", "nan"],
)
def test_a_corrupted_copy_is_rejected_naming_file_and_line(
    real_file: Path, tmp_path: Path, corrupt: Callable[[list[str]], list[str]], problem: str
) -> None:
    lines = real_file.read_text().splitlines()
    lines[36] = "  ".join(corrupt(lines[36].split()))
    copy = tmp_path / "ECG5000_TRAIN.txt"
    copy.write_text("\n".join(lines) + "\n")
    task = load_task("ecg5000", {"data_dir": str(tmp_path)})
    with pytest.raises(TaskError) as error:
        task.load_partition("north-01", 42)
    message = str(error.value)
    assert f"{copy}, line 37" in message
    assert problem in message
    assert "UCR archive" in message  # says where to get an intact copy


def test_a_missing_file_says_where_it_looked_and_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FOGFL_DATA_DIR", raising=False)
    with pytest.raises(TaskError, match=r"set task\.options\.data_path.*FOGFL_DATA_DIR"):
        load_task("ecg5000").load_partition("north-01", 42)
    with pytest.raises(TaskError, match=rf"no ECG5000 data in {tmp_path}.*ECG5000_TRAIN\.txt"):
        load_task("ecg5000", {"data_dir": str(tmp_path)}).load_partition("north-01", 42)
    missing = tmp_path / "nope.txt"
    with pytest.raises(TaskError, match=rf"{missing} does not exist"):
        load_task("ecg5000", {"data_path": str(missing)}).load_partition("north-01", 42)


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_partitions_are_disjoint_complete_and_seeded(
    real_file: Path, partition: Literal["iid", "dirichlet"]
) -> None:
    _, labels = read_ucr_file(real_file)
    shares = client_shares(labels, 6, partition, 0.5, seed=42, min_series=10)
    everything = np.concatenate(shares)
    assert len(everything) == len(np.unique(everything)) == 500
    assert min(len(s) for s in shares) >= 10
    again = client_shares(labels, 6, partition, 0.5, seed=42)
    other = client_shares(labels, 6, partition, 0.5, seed=43)
    assert all(np.array_equal(a, b) for a, b in zip(shares, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(shares, other, strict=True))


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_clients_hold_every_series_once_between_them(real_file: Path, partition: str) -> None:
    task = load_task(
        "ecg5000", {"data_path": str(real_file), "num_clients": 4, "partition": partition}
    )
    ids = ["north-01", "north-02", "south-03", "south-04"]
    partitions = [task.load_partition(client_id, 7) for client_id in ids]
    series, _ = read_ucr_file(real_file)
    np.testing.assert_array_equal(all_series(partitions), series[np.lexsort(series.T[::-1])])
    assert all(1 <= p.num_test < p.num_train for p in partitions)
    fresh = load_task(
        "ecg5000", {"data_path": str(real_file), "num_clients": 4, "partition": partition}
    )
    np.testing.assert_array_equal(fresh.load_partition("south-03", 7).x_test, partitions[2].x_test)


def test_small_alpha_skews_labels_far_more_than_iid(real_file: Path) -> None:
    _, labels = read_ucr_file(real_file)
    iid = [skew(labels, client_shares(labels, 6, "iid", 1.0, seed)) for seed in range(5)]
    skewed = [
        skew(labels, client_shares(labels, 6, "dirichlet", 0.1, seed, 10)) for seed in range(5)
    ]
    assert max(iid) < 0.1
    assert min(skewed) > 0.3


def test_binary_mode_is_normal_versus_the_rest(real_file: Path) -> None:
    task = load_task("ecg5000", {"data_path": str(real_file), "mode": "binary"})
    assert isinstance(task, ECG5000Task)
    _, labels = task.dataset()
    assert np.bincount(labels).tolist() == [292, 500 - 292]
    assert model_tensors(task.build_model(0))["head.3.bias"].shape == (2,)
    assert model_tensors(load_task("ecg5000").build_model(0))["head.3.bias"].shape == (5,)


def test_a_client_beyond_num_clients_is_told_what_to_change(real_file: Path) -> None:
    task = load_task("ecg5000", {"data_path": str(real_file)})
    with pytest.raises(TaskError, match=r"'south-07' is number 7.*num_clients=6"):
        task.load_partition("south-07", 42)
    too_many = load_task("ecg5000", {"data_path": str(real_file), "num_clients": 60})
    with pytest.raises(TaskError, match="500 series, too few"):
        too_many.load_partition("north-01", 42)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"task\.options\.colour"):
        load_task("ecg5000", {"colour": "red"})
    with pytest.raises(ConfigError, match=r"task\.options\.alpha"):
        load_task("ecg5000", {"alpha": 0})
    with pytest.raises(ConfigError, match="data_path or data_dir, not both"):
        load_task("ecg5000", {"data_path": "a.txt", "data_dir": "b"})


def federated_run(
    task: Task, partitions: list[Partition], rounds: int, settings: TrainingSettings
) -> list[float]:
    """Example-weighted test accuracy of the global model after each round of flat FedAvg."""
    global_model = task.build_model(0)
    schema = ModelSchema.of(model_tensors(global_model))
    accuracies = []
    for round_number in range(1, rounds + 1):
        mean = WeightedModelMean(schema)
        for ordinal, data in enumerate(partitions, start=1):
            local = task.build_model(0)
            load_tensors(local, model_tensors(global_model))
            task.train(local, data, settings, seed=round_number * 100 + ordinal)
            mean.add(model_tensors(local), data.num_train)
        load_tensors(global_model, mean.result())
        correct = sum(
            task.evaluate(global_model, data)["eval_accuracy"] * data.num_test
            for data in partitions
        )
        accuracies.append(correct / sum(data.num_test for data in partitions))
    return accuracies


def test_a_short_federated_run_learns_above_the_majority_class(real_file: Path) -> None:
    task = load_task("ecg5000", {"data_path": str(real_file), "num_clients": 3})
    partitions = [task.load_partition(f"north-0{k}", 42) for k in (1, 2, 3)]
    train_labels = np.concatenate([p.y_train for p in partitions])
    test_labels = np.concatenate([p.y_test for p in partitions])
    majority = float(np.mean(test_labels == np.bincount(train_labels).argmax()))
    settings = TrainingSettings(local_epochs=2, batch_size=32, learning_rate=3e-3)
    accuracies = federated_run(task, partitions, rounds=5, settings=settings)
    assert accuracies[-1] > majority + 0.15, (accuracies, majority)
