"""A fog broker's durable round state: what it accepted in the open round, on disk.

A fog broker that crashes mid-round and comes back must close that round with every update
it had accepted. Each accepted update is written here (its payload as it arrived, so a
restart re-validates it like any message) before the broker acknowledges it to MQTT; an
update not yet written is not yet acknowledged, so the broker redelivers it. After the
round's partial is published the round is marked closed and its updates are deleted.

Layout under the state directory::

    closed.json                      the last (run, round, phase) whose partial went out
    run-<run>/<round>-<phase>/announcement  the server's announcement that opened it
    run-<run>/<round>-<phase>/round.json the open round's edge round and bytes so far
    run-<run>/<round>-<phase>/<n>.msg accepted updates of the open edge round, in order
    run-<run>/<round>-<phase>/reference  the model the open edge round's clients trained from
                                         (the global or region model, as it arrived), which
                                         coded updates are deltas from

Files are replaced atomically: a crash leaves the old state or the new, never half of one.
It survives the process, not the machine: nothing is fsynced.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fogfl.errors import FogflError
from fogfl.run_dir import write_atomic

RoundKey = tuple[str, int, str]
_CLOSED = "closed.json"
_ROUND = "round.json"
_ANNOUNCEMENT = "announcement"
_REFERENCE = "reference"


@dataclass
class Restored:
    """An open round as a crashed broker left it."""

    edge_round: int = 1
    region_bytes: int = 0
    payloads: list[bytes] = field(default_factory=list)
    reference: bytes | None = None  # the model the accepted updates were trained from


class RoundJournal:
    """The durable state of one fog broker (one region)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._open: RoundKey | None = None
        self._count = 0

    def last_closed(self) -> RoundKey | None:
        """The last round whose partial was published, if any."""
        try:
            run_id, round_, phase = json.loads((self.directory / _CLOSED).read_text())
            return str(run_id), int(round_), str(phase)
        except (OSError, ValueError, TypeError):
            return None

    def open_announcement(self) -> bytes | None:
        """The announcement of the round that was open when the broker stopped, if any: a
        restarted broker reopens that round before its queued updates arrive."""
        for path in sorted(self.directory.glob(f"run-*/*/{_ANNOUNCEMENT}")):
            try:
                return path.read_bytes()
            except OSError:
                return None
        return None

    def open(self, key: RoundKey, announcement: bytes | bytearray) -> Restored:
        """Start (or resume) the round `key` that `announcement` opened; returns what was
        accepted before a crash."""
        with self._writing():
            return self._open_round(key, announcement)

    def _open_round(self, key: RoundKey, announcement: bytes | bytearray) -> Restored:
        self._drop_other_rounds(key)
        self._open = key
        restored = Restored()
        folder = self._folder(key)
        if not (folder / _ANNOUNCEMENT).exists():
            write_atomic(folder / _ANNOUNCEMENT, bytes(announcement))
        try:
            state = json.loads((folder / _ROUND).read_text())
            restored.edge_round = int(state["edge_round"])
            restored.region_bytes = int(state["region_bytes"])
        except (OSError, ValueError, TypeError, KeyError):
            self._write_round(key, 1, 0)
        messages = sorted(folder.glob("*.msg"), key=lambda p: int(p.stem))
        restored.payloads = [path.read_bytes() for path in messages]
        reference = folder / _REFERENCE
        restored.reference = reference.read_bytes() if reference.exists() else None
        self._count = int(messages[-1].stem) + 1 if messages else 0
        return restored

    def accept(self, payload: bytes | bytearray) -> None:
        """Keep an update the open round has just accepted."""
        assert self._open is not None, "no round is open"
        with self._writing():
            write_atomic(self._folder(self._open) / f"{self._count}.msg", bytes(payload))
        self._count += 1

    def keep_reference(self, payload: bytes | bytearray) -> None:
        """Keep the model the open edge round's clients trained from, so that a restarted
        broker can decode the deltas it replays."""
        assert self._open is not None, "no round is open"
        with self._writing():
            write_atomic(self._folder(self._open) / _REFERENCE, bytes(payload))

    def next_edge_round(
        self, edge_round: int, region_bytes: int, reference: bytes | bytearray | None = None
    ) -> None:
        """The open round moved on to `edge_round`, whose clients train from `reference`
        (the region model, kept before it is published): its earlier updates are folded in."""
        assert self._open is not None, "no round is open"
        folder = self._folder(self._open)
        with self._writing():
            if reference is not None:
                write_atomic(folder / _REFERENCE, bytes(reference))
            self._write_round(self._open, edge_round, region_bytes)
            for path in folder.glob("*.msg"):
                path.unlink(missing_ok=True)
        self._count = 0

    def close(self, key: RoundKey) -> None:
        """The round's partial is out: remember that, forget its updates."""
        with self._writing():
            write_atomic(self.directory / _CLOSED, json.dumps(list(key)).encode())
        shutil.rmtree(self._folder(key), ignore_errors=True)
        self._open = None
        self._count = 0

    def abandon(self) -> None:
        """The open round will never close (the server moved on); forget it."""
        if self._open is not None:
            shutil.rmtree(self._folder(self._open), ignore_errors=True)
        self._open = None
        self._count = 0

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A journal that cannot be written ends the fog broker: acknowledging an update
        it could not keep would lose it on the next restart."""
        try:
            yield
        except OSError as exc:
            raise FogflError(
                f"cannot write the fog broker's round journal in {self.directory}: {exc}; "
                "is the disk full or read-only (fog.state_dir)?"
            ) from None

    def _folder(self, key: RoundKey) -> Path:
        run_id, round_, phase = key
        # The prefix keeps a run id such as ".." a plain name.
        return self.directory / f"run-{run_id}" / f"{round_}-{phase}"

    def _write_round(self, key: RoundKey, edge_round: int, region_bytes: int) -> None:
        state = {"edge_round": edge_round, "region_bytes": region_bytes}
        write_atomic(self._folder(key) / _ROUND, json.dumps(state).encode())

    def _drop_other_rounds(self, key: RoundKey) -> None:
        """Only one round is ever open: anything else on disk belongs to the past."""
        if not self.directory.is_dir():
            return
        keep = self._folder(key)
        for run_folder in self.directory.iterdir():
            if not run_folder.is_dir():
                continue
            for round_folder in run_folder.iterdir():
                if round_folder != keep:
                    shutil.rmtree(round_folder, ignore_errors=True)
            if run_folder != keep.parent and not any(run_folder.iterdir()):
                run_folder.rmdir()
