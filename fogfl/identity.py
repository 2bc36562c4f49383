"""Numbers that follow from a client's id alone, the same in every process and on every
machine: its seed and its ordinal. Tasks draw a client's data from them, the link models its
link (numpy and torch free, so light roles and the link emulator can use them)."""

from __future__ import annotations

import hashlib
import re


def client_seed(client_id: str) -> int:
    """A stable 64-bit number from the whole client id (SHA-256, the same in every process
    and on every machine): the seed of a client's own data and training, so that
    ``north-01`` and ``south-01`` differ."""
    return int.from_bytes(hashlib.sha256(client_id.encode()).digest()[:8], "little")


def client_ordinal(client_id: str) -> int:
    """A client's number, for tasks that hand out data by position (a share of a fixed data
    set, scenarios cycled over clients): the id's trailing digits, else a hash of the id.
    ``north-01`` and ``south-01`` have the same number; use `client_seed` for what must
    differ between clients."""
    match = re.search(r"(\d+)$", client_id)
    if match:
        return int(match.group(1))
    return int.from_bytes(hashlib.sha256(client_id.encode()).digest()[:4], "little")
