"""Mosquitto's password and ACL files: written for the local broker and the compose
deployment, read back by the embedded broker, so both brokers enforce the same rules.

Password lines are ``user:$7$<iterations>$<salt>$<hash>``: PBKDF2-HMAC-SHA512 over the
password with a 12-byte random salt, 64 bytes of output, salt and hash in standard base64
(Mosquitto 2.0's format; `mosquitto_passwd` writes the same). ACL files use only
``user NAME`` and ``topic read|write|readwrite TOPIC`` lines (and comments): every rule
belongs to one user, so nothing a pattern expands to can surprise a reader.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from fogfl.errors import ConfigError

PBKDF2_ITERATIONS = 101  # Mosquitto's own default
SALT_BYTES = 12
HASH_BYTES = 64

Access = Literal["read", "write", "readwrite"]


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The `$7$` hash Mosquitto checks a password against."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, HASH_BYTES)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${PBKDF2_ITERATIONS}${encoded[0]}${encoded[1]}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches a `$7$` hash (False for any other or a malformed one)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    iterations = int(parts[2])
    if not 1 <= iterations <= 1_000_000:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def password_file(passwords: Mapping[str, str]) -> str:
    """A Mosquitto password file for these user → plain-text password pairs."""
    return "".join(f"{user}:{hash_password(password)}\n" for user, password in passwords.items())


def read_password_file(text: str) -> dict[str, str]:
    """User → `$7$` hash, from a password file; ConfigError on a malformed line."""
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not user or not encoded.startswith("$7$"):
            raise ConfigError(f"password file line {number}: expected user:$7$… , got {line!r}")
        users[user] = encoded.strip()
    return users


@dataclass(frozen=True)
class AclRule:
    access: Access
    topic: str

    def allows(self, wanted: Literal["read", "write"]) -> bool:
        return self.access == "readwrite" or self.access == wanted


def acl_file(rules: Mapping[str, Iterable[AclRule]], header: str = "") -> str:
    """A Mosquitto ACL file granting each user exactly its rules (nothing else is allowed)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for user, user_rules in rules.items():
        lines += ["", f"user {user}", *(f"topic {rule.access} {rule.topic}" for rule in user_rules)]
    return "\n".join([*lines, ""])


def read_acl_file(text: str) -> dict[str, list[AclRule]]:
    """User → rules, from an ACL file of `user` and `topic` lines; ConfigError otherwise."""
    rules: dict[str, list[AclRule]] = {}
    user: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "user" and rest:
            user = rest
            rules.setdefault(user, [])
            continue
        if keyword == "topic" and user is not None:
            access, _, topic = rest.partition(" ")
            if access in ("read", "write", "readwrite") and topic.strip():
                rules[user].append(AclRule(access, topic.strip()))  # type: ignore[arg-type]
                continue
            if access and not topic:  # `topic TOPIC` alone means readwrite in Mosquitto
                rules[user].append(AclRule("readwrite", access))
                continue
        raise ConfigError(
            f"ACL file line {number}: expected 'user NAME' or 'topic read|write|readwrite TOPIC' "
            f"after a user line, got {raw!r}"
        )
    return rules
