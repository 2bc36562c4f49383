"""Workloads behind one small interface. A task is named in config (`task.name`); adding one
touches one new module and one line of `REGISTRY`. Tasks import torch lazily, so roles that
never train (fog brokers, monitor) never import it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fogfl.errors import ConfigError

if TYPE_CHECKING:
    from fogfl.tasks.base import Task

REGISTRY: dict[str, str] = {
    "ecg5000": "fogfl.tasks.ecg5000:ECG5000Task",
    "qoe": "fogfl.tasks.qoe:QoETask",
    "synthetic": "fogfl.tasks.synthetic:SyntheticTask",
}


def load_task(name: str, options: dict[str, Any] | None = None) -> Task:
    """The task registered under `name`, configured with its `options`."""
    if name not in REGISTRY:
        raise ConfigError(f"task.name: unknown task {name!r}; known tasks: {sorted(REGISTRY)}")
    module_name, class_name = REGISTRY[name].split(":")
    task_class = getattr(importlib.import_module(module_name), class_name)
    task: Task = task_class(options or {})
    return task
