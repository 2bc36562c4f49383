"""Ports fogfl picks for its listeners."""

from __future__ import annotations

import socket

import pytest

from fogfl.processes import _ephemeral_range, free_port, reserve_port


def test_listener_ports_are_below_the_ephemeral_range() -> None:
    # A reconnecting client is never given such a port as its source port, so it cannot
    # connect to itself and take the port while the listener is down.
    low, _ = _ephemeral_range()
    assert all(1024 <= free_port() < low for _ in range(20))
    holder = reserve_port()
    try:
        port = holder.getsockname()[1]
        assert 1024 <= port < low
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
    finally:
        holder.close()
