"""`fogfl new DIR`: a starter project (a task module, a fogfl.yaml that names it by import
path, a README with the commands) copied from `starter/`, which the tests run as it is."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fogfl.errors import FogflError

STARTER_FILES = ("digits_task.py", "fogfl.yaml", "README.md")


def starter_text(name: str) -> str:
    """The template file `name` of the starter project, unfilled."""
    return (files(__package__) / "starter" / name).read_text(encoding="utf-8")


def write_starter(directory: Path) -> list[Path]:
    """Write the starter project into `directory` (created; it must not hold anything yet);
    returns the files written."""
    if directory.exists() and not directory.is_dir():
        raise FogflError(f"{directory} is a file; give a directory to create")
    if directory.is_dir() and any(directory.iterdir()):
        raise FogflError(
            f"{directory} is not empty; give a new or empty directory, nothing was written"
        )
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in STARTER_FILES:
        text = starter_text(name)
        if name == "README.md":
            text = text.replace("{{name}}", directory.resolve().name)
            text = text.replace("{{path}}", str(directory))
        target = directory / name
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
