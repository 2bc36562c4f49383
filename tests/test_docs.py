"""The documents that describe the code say what the code does: every rejection reason, kind,
topic and plan key in docs/protocol.md, every metrics.csv column and summary.json key in the
README. Each list comes from the code, so a new reason or column cannot go undocumented."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from fogfl.config import RoundPlan, WireSettings
from fogfl.mqtt import Topics
from fogfl.run_dir import COLUMNS
from fogfl.wire import KINDS

ROOT = Path(__file__).parents[1]
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()
README = (ROOT / "README.md").read_text()


def _strings(node: ast.expr) -> list[str]:
    """The string constants an expression can evaluate to (both branches of an if)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def rejection_reasons() -> set[str]:
    """Every reason a `WireError` is raised with in fogfl/, including those chosen by a
    conditional expression or assigned to a variable first (``when = "late" if …``)."""
    reasons: set[str] = set()
    for path in (ROOT / "fogfl").rglob("*.py"):
        tree = ast.parse(path.read_text())
        assigned: dict[str, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).extend(_strings(node.value))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name != "WireError":
                continue
            first = node.args[0]
            reasons.update(_strings(first))
            if isinstance(first, ast.Name):
                reasons.update(assigned.get(first.id, []))
    return reasons


def test_the_reasons_are_found_at_all() -> None:
    # The scan itself must see the reasons raised in several ways and places.
    assert {"late", "future-round", "not-participant", "bad-config", "malformed"} <= (
        rejection_reasons()
    )


def test_every_rejection_reason_is_in_the_protocol_doc() -> None:
    missing = sorted(r for r in rejection_reasons() if f"`{r}`" not in PROTOCOL)
    assert not missing, f"docs/protocol.md does not explain the reasons {missing}"


def test_every_kind_is_in_the_protocol_doc() -> None:
    missing = [kind for kind in KINDS if f"`{kind}`" not in PROTOCOL]
    assert not missing, f"docs/protocol.md does not describe the kinds {missing}"


def test_every_topic_is_in_the_protocol_doc() -> None:
    topics = Topics()
    for name, member in inspect.getmembers(Topics):
        if name.startswith("_") or name in ("region_of", "client_of"):
            continue
        if not callable(member):
            topic = getattr(topics, name)
        else:
            places = ("<region>", "<client id>")
            wanted = len(inspect.signature(member).parameters) - 1
            topic = getattr(topics, name)(*places[:wanted])
        assert isinstance(topic, str)
        assert f"`{topic}`" in PROTOCOL or topic.endswith(("+", "#")), (
            f"docs/protocol.md does not name the topic {topic} (Topics.{name})"
        )


def test_every_plan_key_and_the_payload_limit_are_in_the_protocol_doc() -> None:
    missing = [key for key in RoundPlan.model_fields if f"`{key}`" not in PROTOCOL]
    assert not missing, f"docs/protocol.md does not explain the round plan's keys {missing}"
    default = WireSettings().max_payload_bytes
    assert f"{default:,}" in PROTOCOL, "docs/protocol.md gives another default max_payload_bytes"
    assert "`F32`" in PROTOCOL and "`float32`" in PROTOCOL


def test_the_readme_lists_every_metrics_column() -> None:
    line = next(row for row in README.splitlines() if row.startswith("| `metrics.csv`"))
    listed = re.findall(r"[a-z_]+", line.split("one row per round:")[1].split(";")[0])
    assert listed == list(COLUMNS)


def test_the_readme_lists_every_summary_key_the_server_writes() -> None:
    source = (ROOT / "fogfl" / "roles" / "server.py").read_text()
    keys: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "summary" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            keys += [
                k.value
                for k in node.value.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            ]
    assert "short_rounds" in keys
    line = next(row for row in README.splitlines() if row.startswith("| `summary.json`"))
    missing = [key for key in keys if f"`{key}`" not in line]
    assert not missing, f"README's summary.json row does not name {missing}"
