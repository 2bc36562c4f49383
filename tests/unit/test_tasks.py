"""Naming a task: built-in, import path, entry point; the one-line errors; whose data a
client gets."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from fogfl.config import FederationSettings, load_config
from fogfl.errors import ConfigError
from fogfl.tasks import BUILTIN_TASKS, ENTRY_POINT_GROUP, known_tasks, load_task, task_class
from fogfl.tasks.base import client_ordinal, client_seed, shared_partitions, training_seed
from fogfl.tasks.ecg5000 import ECG5000Task
from fogfl.tasks.qoe import QoETask
from fogfl.tasks.synthetic import SyntheticTask

_modules = itertools.count()

GOOD_TASK = """
from typing import ClassVar, Literal
from fogfl.tasks.synthetic import SyntheticTask

class {name}(SyntheticTask):
    name: ClassVar[str] = "mine"
    problem: ClassVar[Literal["regression", "classification"]] = "regression"
"""


@pytest.fixture(autouse=True)
def _own_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading a task puts its python_path on sys.path; keep that to each test.
    monkeypatch.setattr(sys, "path", list(sys.path))


def write_module(directory: Path, source: str) -> str:
    """A module of `source` in `directory` under a fresh name (imports are cached)."""
    name = f"user_task_{next(_modules)}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def config_error(name: str, python_path: list[Path] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_task(name, {}, python_path or [])
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_built_in_names_load_their_classes() -> None:
    assert type(load_task("qoe")) is QoETask
    assert isinstance(load_task("synthetic", {"megabytes": 0.01}), SyntheticTask)
    assert task_class("ecg5000") is ECG5000Task


def test_built_in_tasks_are_the_entry_points_fogfl_registers() -> None:
    installed = entry_points(group=ENTRY_POINT_GROUP)
    assert {e.name: e.value for e in installed if e.dist and e.dist.name == "fogfl"} == (
        BUILTIN_TASKS
    )
    assert set(BUILTIN_TASKS) <= set(known_tasks())


def test_an_import_path_loads_a_class_from_python_path(tmp_path: Path) -> None:
    module = write_module(tmp_path, GOOD_TASK.format(name="MyTask"))
    task = load_task(f"{module}:MyTask", {"megabytes": 0.01}, [tmp_path])
    assert type(task).__name__ == "MyTask" and task.name == "mine"


def test_python_path_in_a_config_file_is_relative_to_the_file(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    module = write_module(project, GOOD_TASK.format(name="MyTask"))
    (project / "fogfl.yaml").write_text(f"python_path: ['.']\ntask: {{name: '{module}:MyTask'}}\n")
    config = load_config(project / "fogfl.yaml", environ={})
    assert config.python_path == [project.resolve()]
    task = load_task(config.task.name, {"megabytes": 0.01}, config.python_path)
    assert task.name == "mine"


def test_an_installed_distribution_registers_a_task_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(tmp_path, GOOD_TASK.format(name="Registered"))
    dist_info = tmp_path / "fake_tasks-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-tasks\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nregistered = {module}:Registered\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert known_tasks()["registered"] == f"{module}:Registered"
    task = load_task("registered", {"megabytes": 0.01})
    assert type(task).__name__ == "Registered"


def test_a_name_registered_by_two_distributions_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for dist, target in (("one", "a_mod:A"), ("two", "b_mod:B")):
        dist_info = tmp_path / f"{dist}-1.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntwice = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = config_error("twice")
    assert "a_mod:A (from one)" in message and "b_mod:B (from two)" in message


def test_an_unknown_name_lists_the_known_tasks() -> None:
    message = config_error("nope")
    assert "unknown task 'nope'" in message
    assert "ecg5000, qoe, synthetic" in message and "package.module:ClassName" in message


def test_a_module_that_is_not_there_is_named_with_where_it_was_looked_for(
    tmp_path: Path,
) -> None:
    message = config_error("no_such_module_anywhere:Task", [tmp_path])
    assert "cannot import module 'no_such_module_anywhere'" in message
    assert "ModuleNotFoundError" in message and str(tmp_path) in message


def test_a_module_that_fails_on_import_says_why(tmp_path: Path) -> None:
    module = write_module(tmp_path, "import not_installed_dependency_xyz\n")
    message = config_error(f"{module}:Task", [tmp_path])
    assert f"cannot import module {module!r}" in message
    assert "No module named 'not_installed_dependency_xyz'" in message
    broken = write_module(tmp_path, "raise RuntimeError('the data file is missing')\n")
    assert "RuntimeError: the data file is missing" in config_error(f"{broken}:T", [tmp_path])


def test_a_missing_attribute_is_named(tmp_path: Path) -> None:
    module = write_module(tmp_path, "class Other: ...\n")
    message = config_error(f"{module}:MyTask", [tmp_path])
    assert f"module {module!r}" in message and "has no attribute 'MyTask'" in message


def test_a_malformed_import_path_is_refused() -> None:
    assert "is not an import path" in config_error("my task:Task")
    assert "is not an import path" in config_error("mod:")


def test_something_that_is_not_a_task_class_is_refused(tmp_path: Path) -> None:
    module = write_module(tmp_path, "def make(): ...\nclass Plain: ...\n")
    assert "is a function, not a class" in config_error(f"{module}:make", [tmp_path])
    assert "Plain is not a subclass of fogfl.tasks.base.Task" in config_error(
        f"{module}:Plain", [tmp_path]
    )


def test_a_class_lacking_parts_of_the_interface_names_exactly_those(tmp_path: Path) -> None:
    module = write_module(
        tmp_path,
        """
        from fogfl.tasks.base import Task

        class Half(Task):
            problem = "classification"

            def build_model(self, seed): ...
            def load_partition(self, client_id, seed): ...

        class Odd(Task):
            name = "odd"
            problem = "clustering"

            def build_model(self, seed): ...
            def load_partition(self, client_id, seed): ...
            def train(self, model, data, settings, seed): ...
        """,
    )
    half = config_error(f"{module}:Half", [tmp_path])
    assert "Half lacks name (a str class attribute), train(), evaluate()" in half
    assert "build_model" not in half and "problem" not in half
    odd = config_error(f"{module}:Odd", [tmp_path])
    assert "Odd lacks evaluate(); has problem 'clustering'" in odd


def test_a_constructor_that_cannot_take_the_options_is_named(tmp_path: Path) -> None:
    module = write_module(
        tmp_path,
        GOOD_TASK.format(name="Base")
        + "\nclass NoOptions(Base):\n    def __init__(self, size, other):\n        pass\n",
    )
    message = config_error(f"{module}:NoOptions", [tmp_path])
    assert "__init__ must take the task.options mapping as its one argument" in message


def test_a_task_without_options_refuses_options_given_to_it(tmp_path: Path) -> None:
    module = write_module(
        tmp_path,
        """
        from fogfl.tasks.base import Task

        class Bare(Task):
            name = "bare"
            problem = "regression"
            def build_model(self, seed): ...
            def load_partition(self, client_id, seed): ...
            def train(self, model, data, settings, seed): ...
            def evaluate(self, model, data): ...
        """,
    )
    assert load_task(f"{module}:Bare", {}, [tmp_path]).name == "bare"
    with pytest.raises(ConfigError, match=r"takes no options, got task.options \['size'\]"):
        load_task(f"{module}:Bare", {"size": 3}, [tmp_path])


def test_fog_brokers_and_the_monitor_do_not_import_torch_when_tasks_are_importable() -> None:
    probe = (
        "import sys, fogfl.roles.fog_broker, fogfl.roles.monitor, fogfl.tasks, fogfl.plugins; "
        "fogfl.tasks.known_tasks(); print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# Whose data a client gets.


def test_client_seed_is_stable_and_uses_the_whole_id() -> None:
    assert client_seed("north-01") == client_seed("north-01")
    assert client_seed("north-01") != client_seed("south-01")
    assert client_ordinal("north-01") == client_ordinal("south-01") == 1
    # A value pinned here: the seed must not depend on the process (Python's hash() does).
    assert client_seed("north-01") == int.from_bytes(
        hashlib.sha256(b"north-01").digest()[:8], "little"
    )
    assert training_seed(42, 1, "north-01") != training_seed(42, 1, "south-01")


@pytest.mark.parametrize(
    ("name", "options"),
    [("qoe", {"duration_s": 60, "replays": 0}), ("synthetic", {"megabytes": 0.01})],
)
def test_clients_of_the_same_number_in_different_regions_get_different_data(
    name: str, options: dict[str, object]
) -> None:
    task = load_task(name, options)
    north, south = task.load_partition("north-01", 42), task.load_partition("south-01", 42)
    assert not np.array_equal(north.x_train[:10], south.x_train[:10])
    assert shared_partitions(task, ["north-01", "south-01", "north-02"]) == {}
    again = task.load_partition("north-01", 42)
    assert np.array_equal(north.x_train, again.x_train)


def test_qoe_still_cycles_base_scenarios_by_client_number() -> None:
    task = load_task("qoe", {"duration_s": 60, "replays": 0})
    described = {c: task.load_partition(c, 42).description for c in ("north-01", "south-01")}
    assert all(d.startswith("home_stable_") for d in described.values())
    assert task.load_partition("north-02", 42).description.startswith("rural_unstable_")


def test_clients_holding_the_same_ecg5000_share_are_reported() -> None:
    task = ECG5000Task({"num_clients": 6})
    explicit = FederationSettings(
        regions=["north", "south"],
        clients={"north": ["north-01", "north-02"], "south": ["south-01", "south-02"]},
    )
    ids = [c for members in explicit.client_ids().values() for c in members]
    assert shared_partitions(task, ids) == {
        "ECG5000 share 1": ["north-01", "south-01"],
        "ECG5000 share 2": ["north-02", "south-02"],
    }
    numbered = [c for members in FederationSettings().client_ids().values() for c in members]
    assert shared_partitions(task, numbered) == {}


def test_the_server_and_fogfl_up_warn_of_clients_sharing_a_partition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fogfl.roles.launcher import preflight
    from fogfl.roles.server import Server

    shared = {
        "task": {"name": "ecg5000", "options": {"num_clients": 4}},
        "federation": {"clients": {"north": ["north-01"], "south": ["south-01", "south-02"]}},
        "security": {"insecure": True},
    }
    config = load_config(overrides=shared, environ={})
    assert Server(config).shared_partitions == {"ECG5000 share 1": ["north-01", "south-01"]}
    caplog.clear()  # the server's own warning: it runs open
    with caplog.at_level("WARNING", logger="fogfl"):
        preflight(config, "embedded")
    assert [r.getMessage() for r in caplog.records] == [
        "launcher clients north-01, south-01 would train on the same data (ECG5000 share 1)"
    ]
    numbered = load_config(
        overrides={"task": shared["task"], "security": shared["security"]}, environ={}
    )
    assert Server(numbered).shared_partitions == {}
