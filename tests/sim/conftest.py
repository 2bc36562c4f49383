"""Fixtures of the simulation tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fogfl.sim.workers import ClientPool


@pytest.fixture(scope="module")
def pool() -> Iterator[ClientPool]:
    """Clients run in the test process: no worker start-up, same results (see test_workers)."""
    with ClientPool(0) as inline:
        yield inline
