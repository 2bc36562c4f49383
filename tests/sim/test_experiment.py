"""Experiment files: variants × sweep, baselines, the flags over every variant, and errors
that name the file, the variant and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fogfl.errors import ConfigError
from fogfl.sim.experiment import (
    Reshape,
    baselines,
    build_experiment,
    load_experiment,
    missing_agents,
    select,
)

QOE = {"task": {"name": "qoe", "options": {"duration_s": 60}}}


def experiment(reshape: Reshape | None = None, **raw: Any) -> Any:
    return build_experiment({"base": QOE, **raw}, reshape or Reshape(), source="test.yaml")


def test_every_variant_is_crossed_with_every_sweep_point() -> None:
    built = experiment(
        variants=[
            {"name": "fedavg"},
            {"name": "fedprox", "overrides": {"training.proximal_mu": 0.1}},
        ],
        sweep={"training.local_epochs": [1, 4], "federation.rounds": [3]},
    )
    names = [v.name for v in built.variants]
    assert names == [
        "fedavg,local_epochs=1,rounds=3",
        "fedavg,local_epochs=4,rounds=3",
        "fedprox,local_epochs=1,rounds=3",
        "fedprox,local_epochs=4,rounds=3",
    ]
    last = built.variants[-1].config
    assert (last.training.proximal_mu, last.training.local_epochs, last.federation.rounds) == (
        0.1,
        4,
        3,
    )
    assert last.task.options == {"duration_s": 60}


def test_without_variants_or_sweep_there_is_one_run_of_the_base() -> None:
    assert [v.name for v in experiment().variants] == ["base"]


def test_a_baseline_given_as_settings_pairs_each_variant_with_its_counterpart() -> None:
    built = experiment(
        sweep={
            "federation.participation.schedule": ["constant", "linear"],
            "federation.weighting": ["examples", "uniform"],
        },
        base={**QOE, "federation": {"participation": {"end_fraction": 0.2}}},
        baseline={"federation.participation.schedule": "constant"},
    )
    assert baselines(built) == {
        "schedule=constant,weighting=examples": "schedule=constant,weighting=examples",
        "schedule=constant,weighting=uniform": "schedule=constant,weighting=uniform",
        "schedule=linear,weighting=examples": "schedule=constant,weighting=examples",
        "schedule=linear,weighting=uniform": "schedule=constant,weighting=uniform",
    }


def test_the_flags_reshape_every_variant() -> None:
    reshape = Reshape(clients=10, regions=3, rounds=2, local_epochs=1, seed=5)
    built = experiment(reshape, variants=[{"name": "a"}, {"name": "b"}])
    for variant in built.variants:
        federation = variant.config.federation
        assert federation.regions == ["north", "south", "east"]
        assert federation.client_ids() == {
            "north": ["north-01", "north-02", "north-03", "north-04"],
            "south": ["south-05", "south-06", "south-07"],
            "east": ["east-08", "east-09", "east-10"],
        }
        assert (federation.rounds, federation.seed) == (2, 5)
        assert variant.config.training.local_epochs == 1


def test_clients_flag_also_sets_the_tasks_share_count() -> None:
    raw = {"task": {"name": "ecg5000", "options": {"num_clients": 6, "partition": "iid"}}}
    built = build_experiment({"base": raw}, Reshape(clients=4, data_dir=Path("/data")))
    options = built.variants[0].config.task.options
    assert options == {"num_clients": 4, "partition": "iid", "data_dir": "/data"}


def test_another_task_drops_the_files_task_options() -> None:
    built = experiment(Reshape(task="synthetic"))
    assert built.variants[0].config.task.model_dump() == {"name": "synthetic", "options": {}}


def test_set_values_apply_last() -> None:
    built = experiment(
        Reshape(rounds=4, settings={"federation.rounds": 2, "task.options.duration_s": 30})
    )
    config = built.variants[0].config
    assert (config.federation.rounds, config.task.options["duration_s"]) == (2, 30)


def test_set_values_of_the_experiment_itself_change_the_experiment() -> None:
    built = experiment(
        Reshape(settings={"target": 0.1, "centralized.epochs": 3}), centralized={"epochs": 25}
    )
    assert built.target == 0.1
    assert built.centralized is not None and built.centralized.epochs == 3


def test_only_keeps_the_named_variants() -> None:
    built = experiment(variants=[{"name": "a"}, {"name": "b"}], baseline="a")
    assert [v.name for v in select(built, ["b"]).variants] == ["b"]
    assert select(built, ["b"]).baseline is None
    with pytest.raises(ConfigError, match="no variant named"):
        select(built, ["c"])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"varients": []}, "varients: unknown key"),
        ({"sweep": {"training.local_epochs": []}}, "lists no values"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "variant names repeat"),
        ({"metric": "eval_f1"}, "metric"),
        ({"baseline": "nope", "variants": [{"name": "a"}]}, "baseline 'nope' is not a variant"),
        (
            {"variants": [{"name": "slow", "overrides": {"federation.rounds": 0}}]},
            "variant 'slow'",
        ),
        (
            {"variants": [{"name": "typo", "overrides": {"training.epochs": 3}}]},
            "training.epochs: unknown key",
        ),
    ],
)
def test_mistakes_name_what_is_wrong(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        experiment(**raw)
    assert "test.yaml" in str(error.value)


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_experiment(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_experiment(tmp_path / "missing.yaml")


def test_a_ddqn_arm_whose_agent_is_not_trained_yet_is_found(tmp_path: Path) -> None:
    (tmp_path / "models" / "agent").mkdir(parents=True)
    path = tmp_path / "experiments" / "adaptive.yaml"
    path.parent.mkdir()
    path.write_text(
        "base: {task: {name: qoe}, wire: {agent: ../models/agent}}\n"
        "variants:\n"
        "  - {name: int8, overrides: {wire.update_codec: int8}}\n"
        "  - {name: ddqn, overrides: {wire.update_codec: adaptive, wire.controller: ddqn}}\n"
    )
    # wire.agent is relative to the experiment file, like its traces.
    folder = (tmp_path / "models" / "agent").resolve()
    assert missing_agents(load_experiment(path)) == {"ddqn": folder}
    (folder / "agent.json").write_text("{}")
    assert missing_agents(load_experiment(path)) == {}
