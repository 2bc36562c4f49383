"""Workloads behind one small interface (`fogfl.tasks.base.Task`, described in docs/tasks.md).

`task.name` names a task in one of three ways:

- an import path ``package.module:ClassName`` — the user's own class, from an installed
  package or from a directory in the config's `python_path`;
- a name an installed distribution registers in the ``fogfl.tasks`` entry-point group
  (``[project.entry-points."fogfl.tasks"] mytask = "mypkg.mytask:MyTask"``);
- a built-in name: `qoe`, `ecg5000`, `synthetic`. fogfl registers these as entry points
  too; `BUILTIN_TASKS` is the fallback for a checkout run without being installed.

Tasks import torch when loaded, never here, so roles that never train (fog brokers, the
monitor) never import it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fogfl.errors import ConfigError
from fogfl.plugins import import_object, is_import_path, registrations

if TYPE_CHECKING:
    from fogfl.tasks.base import Task

ENTRY_POINT_GROUP = "fogfl.tasks"
BUILTIN_TASKS: dict[str, str] = {
    "ecg5000": "fogfl.tasks.ecg5000:ECG5000Task",
    "qoe": "fogfl.tasks.qoe:QoETask",
    "synthetic": "fogfl.tasks.synthetic:SyntheticTask",
}
TASK_METHODS = ("build_model", "load_partition", "train", "evaluate")
PROBLEMS = ("regression", "classification")


def known_tasks() -> dict[str, str]:
    """Every task reachable by a plain name, with its import path: the built-ins and what
    installed distributions register (a name registered twice maps to its first target)."""
    known = dict(BUILTIN_TASKS)
    for name, found in registrations(ENTRY_POINT_GROUP).items():
        known[name] = found[0].target
    return dict(sorted(known.items()))


def task_class(name: str, python_path: Sequence[Path | str] = ()) -> type[Task]:
    """The Task subclass `name` stands for (see the module's docstring for the three ways),
    checked to define everything a task must."""
    key = f"task.name {name!r}"
    if is_import_path(name):
        target = name
    else:
        found = registrations(ENTRY_POINT_GROUP).get(name, [])
        if len(found) > 1:
            rivals = "; ".join(f"{r.target} (from {r.distribution})" for r in found)
            raise ConfigError(
                f"{key}: registered by more than one installed distribution: {rivals}; "
                "name the one you mean by its import path"
            )
        if found:
            target = found[0].target
            key = f"{key} (entry point of {found[0].distribution})"
        elif name in BUILTIN_TASKS:
            target = BUILTIN_TASKS[name]
        else:
            raise ConfigError(
                f"task.name: unknown task {name!r}; known tasks: {', '.join(known_tasks())}; "
                "or name your own class as package.module:ClassName"
            )
    return _checked(import_object(target, key, python_path), key)


def load_task(
    name: str, options: Mapping[str, Any] | None = None, python_path: Sequence[Path | str] = ()
) -> Task:
    """The task `name` stands for, configured with its `options` (`task.options`)."""
    cls = task_class(name, python_path)
    try:
        inspect.signature(cls).bind(dict(options or {}))
    except TypeError:
        raise ConfigError(
            f"task.name {name!r}: {cls.__qualname__} cannot be built as "
            f"{cls.__qualname__}(options); its __init__ must take the task.options mapping "
            "as its one argument"
        ) from None
    except ValueError:
        pass  # no signature to check (a C extension); calling it will tell
    return cls(dict(options or {}))


def _checked(candidate: object, key: str) -> type[Task]:
    from fogfl.tasks.base import Task

    if not isinstance(candidate, type):
        raise ConfigError(
            f"{key}: is a {type(candidate).__name__}, not a class; name a subclass of "
            "fogfl.tasks.base.Task"
        )
    if not issubclass(candidate, Task):
        raise ConfigError(
            f"{key}: {candidate.__module__}.{candidate.__qualname__} is not a subclass of "
            "fogfl.tasks.base.Task"
        )
    lacks = []
    if not isinstance(getattr(candidate, "name", None), str) or not candidate.name:
        lacks.append("name (a str class attribute)")
    problem = getattr(candidate, "problem", None)
    if problem is None:
        lacks.append("problem ('regression' or 'classification')")
    abstract: frozenset[str] = getattr(candidate, "__abstractmethods__", frozenset())
    lacks.extend(f"{method}()" for method in TASK_METHODS if method in abstract)
    faults = [f"lacks {', '.join(lacks)}"] if lacks else []
    if problem is not None and problem not in PROBLEMS:
        faults.append(f"has problem {problem!r}, not 'regression' or 'classification'")
    if faults:
        raise ConfigError(f"{key}: {candidate.__qualname__} {'; '.join(faults)}; see docs/tasks.md")
    return candidate
