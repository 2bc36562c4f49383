"""Shared helpers: tiny series and traces written to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

TRACES = Path(__file__).parents[3] / "shared" / "data" / "bandwidth-traces"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def write_trace(path: Path, rows: list[tuple[float, float]]) -> Path:
    path.write_text("".join(f"{t}\t{v}\n" for t, v in rows))
    return path
