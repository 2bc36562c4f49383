"""The experiment file of `fogfl sim`: a base configuration, the variants to run over it, and
the flags that shrink or reshape every variant for a quick run.

```yaml
name: comico
base: {federation: {rounds: 20}, training: {local_epochs: 2}}   # keys of configs/default.yaml
variants:                                     # each a full run; overrides use dotted keys
  - {name: fedavg, overrides: {training.proximal_mu: 0.0}}
sweep: {training.local_epochs: [1, 2]}        # cartesian; crossed with every variant; a
                                              # mapping names its points: {home: {…}, …}
centralized: {epochs: 25, learning_rate: 0.001, batch_size: 128}
metric: eval_mae
target: 0.06                                  # summary: what it took to reach this
baseline: fedavg                              # summary: savings against this variant, or
                                              # {training.proximal_mu: 0.0}: against each
                                              # variant's own counterpart
evaluation: all                               # every client evaluates every round's model
parts:                                        # several experiments in one file: each is the
  - {name: ecg, base: {task: {name: ecg5000}}, metric: eval_accuracy}   # file with these
  - {name: qoe, base: {task: {name: qoe}}, metric: eval_mae}            # keys over its own
```

Paths in the file (`python_path`, link traces, `wire.agent`) are relative to it.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fogfl.config import (
    ENV_PREFIX,
    FogflConfig,
    load_config,
    region_names,
    resolve_model_paths,
    resolve_python_path,
)
from fogfl.errors import ConfigError
from fogfl.links.settings import resolve_trace_paths

Metric = Literal["eval_loss", "eval_mae", "eval_rmse", "eval_accuracy"]
METRICS: tuple[str, ...] = ("eval_loss", "eval_mae", "eval_rmse", "eval_accuracy")
NAME_PATTERN = r"^[A-Za-z0-9_.,=+-]{1,80}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CentralizedSettings(_Strict):
    """The centralized baseline: one model trained on the union of the clients' data."""

    epochs: int = Field(25, ge=1, le=10_000)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(128, ge=1, le=1_000_000)


class VariantSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    overrides: dict[str, Any] = Field(default_factory=dict)


class ExperimentFile(_Strict):
    """What an experiment YAML may hold; every key is checked, unknown ones are errors."""

    name: str = Field("experiment", pattern=NAME_PATTERN)
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    variants: list[VariantSpec] = Field(default_factory=list)
    sweep: dict[str, list[Any] | dict[str, Any]] = Field(
        default_factory=dict,
        description="values per dotted key, or a mapping of named values, crossed",
    )
    centralized: CentralizedSettings | None = None
    metric: Metric | None = Field(None, description="default: eval_mae or eval_accuracy")
    target: float | None = Field(None, description="the metric value runs are measured to reach")
    baseline: str | dict[str, Any] | None = Field(
        None,
        description="the variant others are compared with, by name, or as the settings that "
        "turn each variant into its own baseline ({federation.participation.schedule: constant})",
    )
    evaluation: Literal["participants", "all"] = Field(
        "participants",
        description="who evaluates each round's model: the next round's participants, as in "
        "the runtime, or every client",
    )
    parts: list[dict[str, Any]] = Field(
        default_factory=list,
        description="experiments of their own, run one after another: each this file with "
        "the part's keys over it (its `base` merged key by key, its name after the file's)",
    )

    @field_validator("variants")
    @classmethod
    def _names_are_unique(cls, variants: list[VariantSpec]) -> list[VariantSpec]:
        names = [v.name for v in variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant names repeat: {repeated}")
        return variants

    @field_validator("sweep")
    @classmethod
    def _sweep_lists_values(
        cls, sweep: dict[str, list[Any] | dict[str, Any]]
    ) -> dict[str, list[Any] | dict[str, Any]]:
        for key, values in sweep.items():
            if not values:
                raise ValueError(f"sweep key {key!r} lists no values")
            bad = [n for n in values if isinstance(values, dict) and not _NAME.fullmatch(n)]
            if bad:
                raise ValueError(f"sweep key {key!r}: point names {bad} must match {NAME_PATTERN}")
        return sweep


_NAME = re.compile(NAME_PATTERN)
# Keys of the experiment itself rather than of its runs' configuration.
EXPERIMENT_KEYS = frozenset(ExperimentFile.model_fields) - {"base", "variants", "sweep", "parts"}


@dataclass
class Variant:
    """One full federated run of an experiment."""

    name: str
    config: FogflConfig
    description: str = ""


@dataclass
class Experiment:
    name: str
    description: str
    variants: list[Variant]
    centralized: CentralizedSettings | None
    metric: Metric | None
    target: float | None
    baseline: str | dict[str, Any] | None
    evaluation: Literal["participants", "all"] = "participants"
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reshape:
    """The command line's changes to every variant (None leaves a setting as the file has it).

    `clients` is the total over all regions, spread as evenly as the regions allow (and the
    task's ``num_clients`` option follows it where the file sets one); `task` replaces the
    task and drops the file's task options; `settings` are dotted keys, applied last: the
    experiment's own (``target``, ``centralized.epochs``, …) to it, the others to each run.
    """

    task: str | None = None
    clients: int | None = None
    regions: int | None = None
    rounds: int | None = None
    local_epochs: int | None = None
    seed: int | None = None
    data_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def apply(self, data: dict[str, Any]) -> None:
        """Change one variant's configuration (nested dicts, before validation)."""
        federation = data.setdefault("federation", {})
        task = data.setdefault("task", {})
        if self.task is not None and self.task != task.get("name", "qoe"):
            data["task"] = task = {"name": self.task, "options": {}}
        if self.regions is not None:
            federation["regions"] = region_names(self.regions)
            federation["clients"] = None
            federation["min_regions"] = None
        if self.clients is not None:
            regions = federation.get("regions") or FogflConfig().federation.regions
            federation.update(_spread(self.clients, list(regions)))
            options = task.get("options")
            if isinstance(options, dict) and "num_clients" in options:
                # Tasks that split one dataset into shares (ecg5000) need one per client.
                options["num_clients"] = self.clients
        for key, value in (
            ("federation.rounds", self.rounds),
            ("training.local_epochs", self.local_epochs),
            ("federation.seed", self.seed),
            ("task.options.data_dir", str(self.data_dir) if self.data_dir else None),
        ):
            if value is not None:
                set_dotted(data, key, value)
        for key, value in self.settings.items():
            if key.split(".")[0] not in EXPERIMENT_KEYS:
                set_dotted(data, key, value)


def load_experiment(path: Path, reshape: Reshape | None = None) -> Experiment:
    """The one experiment of a file without `parts` (`load_experiments`)."""
    experiments = load_experiments(path, reshape)
    if len(experiments) != 1:
        raise ConfigError(
            f"experiment file {path} holds {len(experiments)} experiments (parts); "
            "read it with load_experiments"
        )
    return experiments[0]


def load_experiments(path: Path, reshape: Reshape | None = None) -> list[Experiment]:
    """Read and validate an experiment file and resolve every variant's configuration: the
    file's experiment, or one per entry of its `parts`.

    Raises ConfigError naming the file, the part, the variant and the offending key.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read experiment file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"experiment file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"experiment file {path} must hold a mapping of name, base, variants…")
    parts = raw.pop("parts", None)
    if parts is None:
        return [_load(raw, reshape or Reshape(), str(path), path.parent)]
    if not (isinstance(parts, list) and parts and all(_is_part(p) for p in parts)):
        raise ConfigError(
            f"experiment file {path}: parts must list experiments, each a mapping with a "
            "name and no parts of its own"
        )
    return [
        _load(_part(raw, part), reshape or Reshape(), f"{path}, part {part['name']!r}", path.parent)
        for part in parts
    ]


def _is_part(part: object) -> bool:
    return isinstance(part, dict) and isinstance(part.get("name"), str) and "parts" not in part


def _part(raw: Mapping[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment one part describes: the file's keys with the part's over them."""
    merged = copy.deepcopy(dict(raw))
    for key, value in part.items():
        if key == "base" and isinstance(value, Mapping) and isinstance(merged.get("base"), dict):
            for dotted, inner in value.items():
                set_dotted(merged["base"], dotted, inner)
        elif key == "name":
            merged["name"] = f"{raw.get('name', 'experiment')}-{value}"
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _load(raw: dict[str, Any], reshape: Reshape, source: str, root: Path) -> Experiment:
    """One experiment of a file in folder `root`, its base's paths relative to it."""
    if isinstance(raw.get("base"), dict):
        resolve_python_path(raw["base"], root)
        resolve_trace_paths(raw["base"], root)
        resolve_model_paths(raw["base"], root)
    return build_experiment(raw, reshape, source=source, root=root)


def build_experiment(
    raw: Mapping[str, Any], reshape: Reshape, source: str = "", root: Path | None = None
) -> Experiment:
    """The experiment `raw` describes (the parsed YAML), with `reshape` applied to each run;
    trace paths in its variants and sweep relative to `root`, when given."""
    where = f"experiment {source}" if source else "experiment"
    given = copy.deepcopy(dict(raw))
    for key, value in reshape.settings.items():
        if key.split(".")[0] in EXPERIMENT_KEYS:
            set_dotted(given, key, value)
    try:
        spec = ExperimentFile.model_validate(given)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
            + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()
        )
        raise ConfigError(f"invalid {where}:\n{problems}") from None
    variants = [
        Variant(
            name, _resolve(spec.base, overrides, reshape, f"{where}, variant {name!r}", root), text
        )
        for name, text, overrides in _expand(spec)
    ]
    if isinstance(spec.baseline, str) and spec.baseline not in {v.name for v in variants}:
        raise ConfigError(
            f"invalid {where}: baseline {spec.baseline!r} is not a variant; "
            f"variants: {[v.name for v in variants]}"
        )
    return Experiment(
        name=spec.name,
        description=spec.description,
        variants=variants,
        centralized=spec.centralized,
        metric=spec.metric,
        target=spec.target,
        baseline=spec.baseline,
        evaluation=spec.evaluation,
        source=given,
    )


def select(experiment: Experiment, names: Iterable[str]) -> Experiment:
    """The experiment with only the named variants (all of them when none are named)."""
    wanted = list(names)
    if not wanted:
        return experiment
    known = [v.name for v in experiment.variants]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(f"--only: no variant named {unknown}; the variants are {known}")
    chosen = [v for v in experiment.variants if v.name in wanted]
    baseline = experiment.baseline
    if isinstance(baseline, str) and baseline not in wanted:
        baseline = None
    return replace(experiment, variants=chosen, baseline=baseline)


def select_each(experiments: list[Experiment], names: Iterable[str]) -> list[Experiment]:
    """Each of a file's experiments with only the named variants (all when none are named),
    leaving out those that have none of them."""
    wanted = list(names)
    if not wanted:
        return experiments
    known = [v.name for experiment in experiments for v in experiment.variants]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(f"--only: no variant named {unknown}; the variants are {known}")
    chosen = []
    for experiment in experiments:
        own = [n for n in wanted if n in {v.name for v in experiment.variants}]
        if own:
            chosen.append(select(experiment, own))
    return chosen


def missing_agents(experiment: Experiment) -> dict[str, Path]:
    """The variants whose `wire.controller: ddqn` names an agent folder that holds no trained
    agent yet (`fogfl agent train --out DIR` writes DIR/agent.json), with the folder."""
    from fogfl.bandwidth.adaptive import ADAPTIVE
    from fogfl.bandwidth.agent import STEM

    missing = {}
    for variant in experiment.variants:
        wire = variant.config.wire
        ddqn = wire.update_codec == ADAPTIVE and wire.controller == "ddqn"
        if ddqn and wire.agent is not None and not (wire.agent / f"{STEM}.json").is_file():
            missing[variant.name] = wire.agent
    return missing


def baselines(experiment: Experiment) -> dict[str, str]:
    """Each variant's baseline variant, where it has one.

    A named baseline is everyone's; a mapping of settings names, for each variant, the
    variant whose configuration is this one's with those settings changed.
    """
    names = [v.name for v in experiment.variants]
    if experiment.baseline is None:
        return {}
    if isinstance(experiment.baseline, str):
        return {name: experiment.baseline for name in names if experiment.baseline in names}
    by_config = {
        _fingerprint(v.config.model_dump(mode="json")): v.name for v in experiment.variants
    }
    found = {}
    for variant in experiment.variants:
        counterpart = variant.config.model_dump(mode="json")
        for key, value in experiment.baseline.items():
            set_dotted(counterpart, key, value)
        match = by_config.get(_fingerprint(counterpart))
        if match is not None:
            found[variant.name] = match
    return found


def describe_baseline(baseline: str | Mapping[str, Any] | None) -> str:
    if baseline is None or isinstance(baseline, str):
        return baseline or ""
    return ", ".join(f"{key}={_label(value)}" for key, value in baseline.items())


def set_dotted(data: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts; a mapping value is merged key by key, not swapped in."""
    if isinstance(value, Mapping) and value:
        for key, inner in value.items():
            set_dotted(data, f"{dotted_key}.{key}", inner)
        return
    *parents, leaf = dotted_key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = copy.deepcopy(value)


def _fingerprint(config: dict[str, Any]) -> str:
    config.get("federation", {}).pop("run_id", None)
    return json.dumps(config, sort_keys=True, default=str)


def _expand(spec: ExperimentFile) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, description, overrides) of every run: each variant crossed with the sweep. A
    point is named by its key and value (``local_epochs=2``), or by its own name."""
    variants = spec.variants or [VariantSpec(name="base")]
    keys = list(spec.sweep)
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    labels = [
        leaf if leaves.count(leaf) == 1 else key for leaf, key in zip(leaves, keys, strict=True)
    ]
    named = [
        list(values.items())
        if isinstance(values, dict)
        else [(f"{label}={_label(value)}", value) for value in values]
        for label, values in zip(labels, spec.sweep.values(), strict=True)
    ]
    points = list(itertools.product(*named)) if keys else [()]
    runs = []
    for variant in variants:
        for point in points:
            parts = [name for name, _ in point]
            if spec.variants or not parts:
                parts.insert(0, variant.name)
            values = [value for _, value in point]
            overrides = {**variant.overrides, **dict(zip(keys, values, strict=True))}
            runs.append((",".join(parts), variant.description, overrides))
    return runs


def _resolve(
    base: Mapping[str, Any],
    overrides: Mapping[str, Any],
    reshape: Reshape,
    where: str,
    root: Path | None = None,
) -> FogflConfig:
    data: dict[str, Any] = {}
    for key, value in base.items():
        set_dotted(data, key, value)
    for key, value in overrides.items():
        set_dotted(data, key, value)
    if root is not None:
        resolve_trace_paths(data, root)  # the command line's paths are the shell's
    reshape.apply(data)
    # Sections go in whole so that a null in the file clears a value; the environment's
    # FOGFL_* variables are for the runtime's processes and do not reach experiments.
    try:
        return load_config(None, overrides=data, environ={})
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _spread(total: int, regions: list[str]) -> dict[str, Any]:
    """`total` clients over `regions`, named as the runtime names them."""
    if total < len(regions):
        raise ConfigError(
            f"--clients {total}: every one of the {len(regions)} regions needs a client"
        )
    if total % len(regions) == 0:
        return {"clients_per_region": total // len(regions), "clients": None}
    sizes = [total // len(regions) + (i < total % len(regions)) for i in range(len(regions))]
    clients, number = {}, 1
    for region, size in zip(regions, sizes, strict=True):
        clients[region] = [f"{region}-{number + k:02d}" for k in range(size)]
        number += size
    return {"clients_per_region": max(sizes), "clients": clients}


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, separators=(",", ":")).replace('"', "")


def is_experiment_file(path: Path) -> bool:
    """Whether `path` holds an experiment (name, base, variants, …) rather than a fogfl
    configuration (mqtt, federation, training, …); ConfigError if it mixes the two."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        return False
    experiment = sorted(set(raw) & set(ExperimentFile.model_fields))
    configuration = sorted(set(raw) & set(FogflConfig.model_fields))
    if experiment and configuration:
        raise ConfigError(
            f"{path} mixes experiment keys {experiment} with configuration keys "
            f"{configuration}; put the configuration under `base:`"
        )
    return bool(experiment)


def plain_experiment(
    path: Path | None, reshape: Reshape, environ: Mapping[str, str] | None = None
) -> Experiment:
    """One variant from the configuration as `fogfl up` builds it — defaults ← the YAML
    file `path` ← the FOGFL_* variables of `environ` (the process's by default) — with
    the command line's `reshape` over it."""
    config = load_config(path, environ=environ)
    task = reshape.task or config.task.name
    name = re.sub(r"[^A-Za-z0-9_.,=+-]+", "-", task.rsplit(":", 1)[-1])[:80] or "run"
    raw = {"name": name, "base": config.model_dump(mode="json"), "variants": [{"name": name}]}
    return build_experiment(raw, reshape, source=str(path) if path else "")


def configuration_variables(environ: Mapping[str, str]) -> list[str]:
    """The FOGFL_* variables in `environ` that change the configuration `fogfl up` would
    run with (an invalid one counts)."""
    plain = load_config(None, environ={})
    found = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        try:
            changed = load_config(None, environ={name: value}) != plain
        except ConfigError:
            changed = True
        if changed:
            found.append(name)
    return found
