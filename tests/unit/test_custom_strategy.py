"""A Flower strategy of the user's own, by import path: built with server.strategy_options,
given what fogfl passes when it accepts it, run by Flower's own aggregation with the regions
weighted by their examples; and the one-line errors when it does not fit."""

from __future__ import annotations

import itertools
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays
from flwr.server.strategy import FedAvg

from fogfl import flower
from fogfl.config import load_config
from fogfl.errors import ConfigError
from tests.unit.test_flower import Hooks, region_result

_modules = itertools.count()

STRATEGIES = """
from flwr.server.strategy import FedAdam, FedAvg, Strategy


class ScaledFedAvg(FedAvg):
    '''FedAvg whose result is multiplied by `scale`; remembers its other options.'''

    def __init__(self, *, scale, label, steps, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.label, self.steps = scale, label, steps

    def aggregate_fit(self, server_round, results, failures):
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        scaled = [a * self.scale for a in parameters_to_ndarrays(parameters)]
        return ndarrays_to_parameters(scaled), metrics


class Minimal(Strategy):
    '''A strategy from scratch: takes only the initial model and one option of its own.'''

    def __init__(self, initial_parameters, keep=1.0):
        self.initial, self.keep = initial_parameters, keep

    def initialize_parameters(self, client_manager):
        return self.initial

    def configure_fit(self, server_round, parameters, client_manager):
        return []

    def aggregate_fit(self, server_round, results, failures):
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class MyFedAdam(FedAdam):
    pass


class NoInitial(FedAvg):
    def __init__(self, fraction_fit):
        super().__init__(fraction_fit=fraction_fit)


class Unfinished(Strategy):
    def __init__(self, initial_parameters):
        pass


class NotAStrategy:
    pass
"""


@pytest.fixture
def module(tmp_path: Path) -> str:
    name = f"user_strategies_{next(_modules)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(STRATEGIES))
    return name


@pytest.fixture(autouse=True)
def _own_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading user code puts its python_path on sys.path; keep that to each test.
    monkeypatch.setattr(sys, "path", list(sys.path))


def make(path: str, tmp_path: Path, **options: object) -> Any:
    return flower.make_strategy(path, [np.zeros(3, np.float32)], 2, options, [tmp_path])


def test_a_fedavg_subclass_gets_its_options_and_keeps_the_region_weighting(
    module: str, tmp_path: Path
) -> None:
    inner = make(f"{module}:ScaledFedAvg", tmp_path, scale=2.0, label="x", steps=[1, 2])
    assert isinstance(inner, FedAvg)
    assert (inner.label, inner.steps) == ("x", [1, 2])
    assert inner.min_fit_clients == 2 and inner.fraction_fit == 1.0
    cloud = flower.HierarchicalStrategy(inner, Hooks(), num_rounds=3, min_regions=2)
    parameters, _ = cloud.aggregate_fit(
        1, [region_result("north", 0.1, 7), region_result("south", 0.7, 3)], []
    )
    assert parameters is not None
    expected = 2.0 * (0.1 * 7 + 0.7 * 3) / 10
    np.testing.assert_allclose(parameters_to_ndarrays(parameters)[0], expected, rtol=1e-6)


def test_a_strategy_from_scratch_is_given_only_what_it_accepts(module: str, tmp_path: Path) -> None:
    inner = make(f"{module}:Minimal", tmp_path, keep=0.5)
    assert inner.keep == 0.5
    cloud = flower.HierarchicalStrategy(inner, Hooks(), num_rounds=1, min_regions=2)
    initial = cloud.initialize_parameters(client_manager=None)
    assert initial is not None
    assert np.array_equal(parameters_to_ndarrays(initial)[0], np.zeros(3, np.float32))


def test_a_custom_fedopt_strategy_keeps_its_state_across_a_resume(
    module: str, tmp_path: Path
) -> None:
    inner = make(f"{module}:MyFedAdam", tmp_path, eta=0.1)
    cloud = flower.HierarchicalStrategy(inner, Hooks(), num_rounds=3, min_regions=2)
    cloud.aggregate_fit(1, [region_result("north", 1.0, 5), region_result("south", 3.0, 5)], [])
    state = flower.strategy_state(inner)
    assert set(state.values) == {"current_weights", "m_t", "v_t"} and state.tensors
    fresh = make(f"{module}:MyFedAdam", tmp_path, eta=0.1)
    flower.restore_strategy_state(fresh, state)
    assert flower.strategy_state(fresh).tensors.keys() == state.tensors.keys()


@pytest.mark.parametrize(
    ("attribute", "options", "message"),
    [
        ("NotAStrategy", {}, "is not a subclass of flwr.server.strategy.Strategy"),
        ("Unfinished", {}, "Unfinished lacks aggregate_evaluate(), aggregate_fit(),"),
        ("NoInitial", {}, "must accept the keyword argument initial_parameters"),
        ("ScaledFedAvg", {"scale": 1.0}, "refused server.strategy_options {'scale': 1.0}: "),
        ("Missing", {}, "has no attribute 'Missing'"),
    ],
)
def test_a_strategy_that_does_not_fit_is_named_in_one_line(
    module: str, tmp_path: Path, attribute: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make(f"{module}:{attribute}", tmp_path, **options)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert f"server.strategy '{module}:{attribute}'" in str(caught.value)


def test_config_takes_a_strategy_by_name_or_import_path_and_json_safe_options(
    tmp_path: Path,
) -> None:
    def load(server: dict[str, object]) -> Any:
        return load_config(overrides={"server": server}, environ={}).server

    assert load({"strategy": "mypkg.strat:MyFedAvg"}).strategy == "mypkg.strat:MyFedAvg"
    options = {"eta": 1, "on": True, "name": "x", "steps": [1, 2.5], "none": None}
    assert load({"strategy_options": options}).strategy_options == options
    with pytest.raises(ConfigError, match="unknown strategy 'fedsomething'"):
        load({"strategy": "fedsomething"})
    for bad in ({"nested": {"a": 1}}, {"eta": float("nan")}, {"grid": [[1, 2]]}):
        with pytest.raises(ConfigError) as caught:
            load({"strategy_options": bad})
        (key,) = bad
        assert f"server.strategy_options: Value error, {key}: " in str(caught.value)
        assert "is not a finite number, bool, string, null or a list of them" in str(caught.value)


def test_the_strategy_docs_tasks_md_shows_runs_as_it_says(tmp_path: Path) -> None:
    markdown = (Path(__file__).resolve().parents[2] / "docs" / "tasks.md").read_text()
    section = markdown.split("\n## Your own strategy\n", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    name = f"doc_strategies_{next(_modules)}"
    (tmp_path / f"{name}.py").write_text(code)
    initial = [np.zeros(3, np.float32)]
    inner = flower.make_strategy(f"{name}:DampedFedAvg", initial, 2, {"step": 0.5}, [tmp_path])
    cloud = flower.HierarchicalStrategy(inner, Hooks(), num_rounds=3, min_regions=2)
    results = [region_result("north", 0.1, 7), region_result("south", 0.7, 3)]
    first, _ = cloud.aggregate_fit(1, results, [])
    second, _ = cloud.aggregate_fit(2, results, [])
    mean = (0.1 * 7 + 0.7 * 3) / 10
    assert first is not None and second is not None
    np.testing.assert_allclose(parameters_to_ndarrays(first)[0], 0.5 * mean, rtol=1e-6)
    np.testing.assert_allclose(parameters_to_ndarrays(second)[0], 0.75 * mean, rtol=1e-6)
