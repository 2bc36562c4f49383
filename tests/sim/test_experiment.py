"""Experiment files: variants × sweep (named points too), parts, baselines, the flags over
every variant, paths relative to the file, and errors that name the file, the variant and
the key."""

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
    load_experiments,
    missing_agents,
    select,
    select_each,
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


def write_trace(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("0 2.0\n1 3.0\n2 2.5\n")
    return path


def test_named_sweep_points_name_the_runs_and_their_traces_are_the_files(
    tmp_path: Path,
) -> None:
    """Links as a sweep: each point named, a trace relative to the experiment file whether
    it is in the sweep or a variant's overrides."""
    trace = write_trace(tmp_path / "traces" / "bus.txt").resolve()
    path = tmp_path / "experiments" / "links.yaml"
    path.parent.mkdir()
    path.write_text(
        "base: {task: {name: qoe}}\n"
        "variants:\n"
        "  - {name: float32}\n"
        "  - {name: slow, overrides: {links.clients.north-01: {trace: ../traces/bus.txt}}}\n"
        "sweep:\n"
        "  links.default:\n"
        "    home: {scenario: home_stable}\n"
        "    bus: {trace: ../traces/bus.txt}\n"
    )
    built = load_experiment(path)
    assert [v.name for v in built.variants] == [
        "float32,home",
        "float32,bus",
        "slow,home",
        "slow,bus",
    ]
    links = {v.name: v.config.links for v in built.variants}
    assert links["float32,home"].default.scenario == "home_stable"
    assert links["float32,bus"].default.trace == trace
    assert links["slow,home"].clients["north-01"].trace == trace
    with pytest.raises(ConfigError, match="point names"):
        experiment(sweep={"links.default": {"a/b": {"scenario": "home_stable"}}})


def test_parts_are_experiments_of_their_own_over_the_file(tmp_path: Path) -> None:
    """A file of parts: each part is the file with its keys over it — its base merged key by
    key, its own metric and target — and --only picks variants in every part."""
    path = tmp_path / "codecs.yaml"
    path.write_text(
        "name: codecs\n"
        "base: {federation: {rounds: 3}, training: {local_epochs: 2}}\n"
        "variants: [{name: float32}, {name: int8, overrides: {wire.update_codec: int8}}]\n"
        "parts:\n"
        "  - {name: qoe, base: {task: {name: qoe}}, metric: eval_mae, target: 0.03}\n"
        "  - name: short\n"
        "    base: {task: {name: qoe}, training.local_epochs: 1}\n"
        "    variants: [{name: int8, overrides: {wire.update_codec: int8}}]\n"
    )
    qoe, short = load_experiments(path, Reshape(rounds=2))
    assert (qoe.name, qoe.metric, qoe.target) == ("codecs-qoe", "eval_mae", 0.03)
    assert [v.name for v in qoe.variants] == ["float32", "int8"]
    assert [v.name for v in short.variants] == ["int8"] and short.target is None
    config = short.variants[0].config
    assert (config.federation.rounds, config.training.local_epochs) == (2, 1)
    assert qoe.variants[0].config.training.local_epochs == 2
    assert [e.name for e in select_each([qoe, short], ["float32"])] == ["codecs-qoe"]
    with pytest.raises(ConfigError, match="holds 2 experiments"):
        load_experiment(path)
    path.write_text("base: {task: {name: qoe}}\nparts: [{metric: eval_mae}]\n")
    with pytest.raises(ConfigError, match="each a mapping with a name"):
        load_experiments(path)
    path.write_text("base: {task: {name: qoe}}\nparts: [{name: a, rounds: 3}]\n")
    with pytest.raises(ConfigError, match=r"(?s)part .a.:.*rounds: unknown key"):
        load_experiments(path)
