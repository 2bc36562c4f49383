"""The starter project of `fogfl new`: its task learns, follows the Task interface through
fogfl's own loader, reads a CSV of the user's, and is the example docs/tasks.md shows."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from fogfl.config import TrainingSettings, load_config
from fogfl.errors import FogflError
from fogfl.tasks import load_task
from fogfl.tasks.base import Task, shared_partitions
from fogfl.templates import STARTER_FILES, starter_text, write_starter

ROOT = Path(__file__).resolve().parents[2]
STARTER = ROOT / "fogfl" / "templates" / "starter"
TRAINING = TrainingSettings(local_epochs=2, batch_size=32, learning_rate=0.01)


@pytest.fixture(autouse=True)
def _own_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading user code puts its python_path on sys.path; keep that to each test.
    monkeypatch.setattr(sys, "path", list(sys.path))


def starter_task(options: dict[str, object] | None = None) -> Task:
    return load_task("digits_task:DigitsTask", options or {}, [STARTER])


def python_blocks(markdown: str, after_heading: str) -> list[str]:
    section = markdown.split(f"\n## {after_heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_docs_show_the_starter_task_as_it_is() -> None:
    blocks = python_blocks((ROOT / "docs" / "tasks.md").read_text(), "A complete example")
    assert blocks[0] == starter_text("digits_task.py")


def test_the_starter_config_names_the_starter_task(tmp_path: Path) -> None:
    write_starter(tmp_path / "project")
    config = load_config(tmp_path / "project" / "fogfl.yaml", environ={})
    assert config.python_path == [(tmp_path / "project").resolve()]
    assert load_task(config.task.name, config.task.options, config.python_path).name == "digits"


def test_the_starter_task_learns_the_digits_from_one_client_s_data() -> None:
    task = starter_task()
    data = task.load_partition("north-01", 42)
    assert (data.num_train, data.num_test) == (240, 60)
    model = task.build_model(42)
    before = task.evaluate(model, data)
    assert before["eval_examples"] == 60 and before["eval_accuracy"] < 0.3
    for round_ in range(5):
        train = task.train(model, data, TRAINING, seed=round_)
    after = task.evaluate(model, data)
    assert after["eval_loss"] < before["eval_loss"] and after["eval_accuracy"] > 0.8
    assert train["train_loss"] < 1.0


def test_the_starter_task_is_deterministic_and_gives_clients_their_own_data() -> None:
    task, twin = starter_task(), starter_task()
    for name, tensor in task.build_model(7).state_dict().items():
        assert np.array_equal(tensor.numpy(), twin.build_model(7).state_dict()[name].numpy())
    north, south = task.load_partition("north-01", 42), task.load_partition("south-01", 42)
    assert np.array_equal(north.y_train, twin.load_partition("north-01", 42).y_train)
    assert not np.array_equal(north.x_train, south.x_train)
    assert shared_partitions(task, ["north-01", "south-01"]) == {}


def test_the_starter_task_reads_a_csv_of_the_user_s(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 3))
    labels = (features[:, 0] + features[:, 1] > 0).astype(int)
    csv = tmp_path / "mine.csv"
    rows = "\n".join(",".join(map(str, [*f, y])) for f, y in zip(features, labels, strict=True))
    csv.write_text("a,b,c,label\n" + rows + "\n")
    task = starter_task({"csv": str(csv), "examples": 200, "hidden": 8})
    data = task.load_partition("client-1", 1)
    assert data.x_train.shape == (160, 3) and set(np.unique(data.y_train)) == {0, 1}
    model = task.build_model(1)
    for round_ in range(10):
        task.train(model, data, TRAINING, seed=round_)
    assert task.evaluate(model, data)["eval_accuracy"] > 0.85


def test_a_wrong_starter_option_is_named() -> None:
    with pytest.raises(FogflError, match=r"task\.options\.colour"):
        starter_task({"colour": "red"})


def test_write_starter_writes_every_file_and_fills_the_readme(tmp_path: Path) -> None:
    written = write_starter(tmp_path / "new" / "proj")
    assert [p.name for p in written] == list(STARTER_FILES)
    readme = (tmp_path / "new" / "proj" / "README.md").read_text()
    assert readme.startswith("# proj: a fogfl project")
    assert f"fogfl up --config {tmp_path / 'new' / 'proj'}/fogfl.yaml" in readme
    assert "{{" not in readme


def test_write_starter_refuses_a_file_or_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(FogflError, match="is a file"):
        write_starter(tmp_path / "taken")
    with pytest.raises(FogflError, match="is not empty"):
        write_starter(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
