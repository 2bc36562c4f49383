"""User code named in configuration: an import path ``package.module:Name`` (a task in
`task.name`, a Flower strategy in `server.strategy`) or a name an installed distribution
registers under an entry-point group. Every failure is one ConfigError line that says
which key, what was looked for and what went wrong."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from fogfl.errors import ConfigError

_IDENTIFIER = r"[A-Za-z_]\w*"
IMPORT_PATH = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}(\.{_IDENTIFIER})*")


def is_import_path(name: str) -> bool:
    """Whether `name` is meant as ``package.module:Name`` rather than a registered name."""
    return ":" in name


@dataclass(frozen=True)
class Registration:
    """One name an installed distribution registers under an entry-point group."""

    name: str
    target: str
    distribution: str


def registrations(group: str) -> dict[str, list[Registration]]:
    """Every name registered under `group` by an installed distribution, each with its
    distinct targets (a distribution found twice on sys.path counts once)."""
    found: dict[str, list[Registration]] = {}
    for entry in entry_points(group=group):
        dist = entry.dist.name if entry.dist is not None else "an unknown distribution"
        known = found.setdefault(entry.name, [])
        if all(r.target != entry.value for r in known):
            known.append(Registration(entry.name, entry.value, dist))
    return found


def extend_import_path(directories: Sequence[Path | str]) -> None:
    """Put `directories` (config's `python_path`) first on sys.path, once each."""
    for directory in reversed([str(Path(d)) for d in directories]):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    # A module written after this interpreter started (a new project) must be found too.
    importlib.invalidate_caches()


def import_object(path: str, key: str, python_path: Sequence[Path | str] = ()) -> object:
    """The object named by the import path ``package.module:Name`` (``Name`` may be dotted).

    `key` names the setting in messages (``task.name 'x:Y'``); `python_path` directories
    are searched before the rest of sys.path.
    """
    if not IMPORT_PATH.fullmatch(path):
        raise ConfigError(
            f"{key}: {path!r} is not an import path; write it as package.module:ClassName"
        )
    module_name, _, attribute = path.partition(":")
    extend_import_path(python_path)
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # whatever the module raised on import is the user's to see
        hint = ""
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            searched = f" ({', '.join(map(str, python_path))})" if python_path else ""
            hint = f"; is it installed, or is its directory in python_path{searched}?"
        raise ConfigError(
            f"{key}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}){hint}"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            where = getattr(sys.modules.get(module_name), "__file__", None) or module_name
            raise ConfigError(
                f"{key}: module {module_name!r} ({where}) has no attribute {attribute!r}"
            ) from None
    return target
