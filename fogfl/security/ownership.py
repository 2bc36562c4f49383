"""Handing provisioned credentials to the users that run the roles and the broker.

Secret files are mode 0600, so a role's process must own its identity directory, and the
broker's user must own ``broker/``. When one privileged step provisions for containers
that run as other users (the compose `credentials` service, as root, for the fogfl image's
uid 10001 and eclipse-mosquitto's uid 1883), it gives them their files here. The bundle's
root, the CA key and the trust list stay with whoever provisioned.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fogfl.errors import ConfigError


@dataclass(frozen=True)
class Owner:
    """A numeric user and group, as containers name them."""

    uid: int
    gid: int

    @classmethod
    def parse(cls, text: str) -> Owner:
        """`UID:GID` (or `UID`, for group = uid); ConfigError otherwise."""
        uid, _, gid = text.partition(":")
        if not uid.isdigit() or not (gid or uid).isdigit():
            raise ConfigError(f"owner {text!r} must be numeric UID:GID, e.g. 10001:10001")
        return cls(int(uid), int(gid or uid))

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


def hand_over(directories: Iterable[Path], owner: Owner) -> None:
    """Make `owner` the owner of each directory and of the files in it (modes unchanged);
    ConfigError, saying what to do, when this process may not."""
    for directory in directories:
        for path in [directory, *sorted(directory.iterdir())]:
            try:
                os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
            except PermissionError:
                raise ConfigError(
                    f"cannot give {path} to {owner}: only root may; run `fogfl certs` as root "
                    "(the compose credentials service does) or drop --owner/--broker-owner"
                ) from None
