"""Logging for the roles: one logger per role, with the role and region on every line,
and a counter of rejected messages by reason."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from fogfl.errors import FogflError, WireError

FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
FIRST_PROGRESS_S = 1.0
PROGRESS_EVERY_S = 5.0


def setup_logging(level: str) -> None:
    """Send log lines to stderr; the launcher redirects each role's stderr to its log file."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    for noisy in ("flwr", "grpc", "amqtt", "asyncio", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


class RoleLogger(logging.LoggerAdapter):
    """Prefixes every line with ``role[region/id]`` so interleaved logs stay readable."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"{self.extra['tag'] if self.extra else ''} {msg}", kwargs


def role_logger(role: str, *where: str) -> RoleLogger:
    tag = f"{role}[{'/'.join(w for w in where if w)}]" if any(where) else role
    return RoleLogger(logging.getLogger(f"fogfl.{role.replace('-', '_')}"), {"tag": tag})


class Rejections:
    """Counts rejected messages by reason and logs each one with its explanation."""

    def __init__(self, log: RoleLogger | logging.LoggerAdapter[Any] | logging.Logger) -> None:
        self.log = log
        self.counts: Counter[str] = Counter()

    def record(self, reason: str, explanation: str, topic: str = "") -> None:
        self.counts[reason] += 1
        where = f" on {topic}" if topic else ""
        self.log.warning("rejected message%s [%s]: %s", where, reason, explanation)

    def record_error(self, error: WireError, topic: str = "") -> None:
        self.record(error.reason, str(error), topic)

    @contextmanager
    def guard(self, topic: str) -> Iterator[None]:
        """Handle one message: a WireError is a rejection with its reason; any other
        unexpected exception is logged with its traceback and counted as ``internal``, so
        one message never kills the role. FogflErrors that are not about the message
        (the broker is gone, the configuration is wrong) still end the role."""
        try:
            yield
        except WireError as error:
            self.record_error(error, topic)
        except FogflError:
            raise
        except Exception:
            self.counts["internal"] += 1
            self.log.exception("internal error while handling a message on %s; carrying on", topic)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class WaitProgress:
    """Says at INFO what a wait is for: after a second, then every few seconds
    ("waiting for the MQTT broker at H:P (6 s): Connection refused")."""

    def __init__(
        self, log: logging.Logger | logging.LoggerAdapter[Any], waiting_for: str, started: float
    ) -> None:
        self.log = log
        self.waiting_for = waiting_for
        self.started = started
        self.last_said: float | None = None

    def report(self, reason: str) -> None:
        now = time.monotonic()
        due = (
            self.started + FIRST_PROGRESS_S
            if self.last_said is None
            else self.last_said + PROGRESS_EVERY_S
        )
        if now >= due:
            self.log.info("%s (%.0f s): %s", self.waiting_for, now - self.started, reason)
            self.last_said = now

    def finish(self, done: str) -> None:
        """Say that the wait is over, if it was long enough to have been mentioned."""
        if self.last_said is not None:
            self.log.info("%s after %.0f s", done, time.monotonic() - self.started)
