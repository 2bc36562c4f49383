"""The fog broker's round journal: what a restarted broker finds of its open round."""

from __future__ import annotations

from pathlib import Path

import pytest

from fogfl.errors import FogflError
from fogfl.fog_state import RoundJournal


def test_a_new_journal_restores_an_open_round_in_order(tmp_path: Path) -> None:
    journal = RoundJournal(tmp_path)
    assert journal.open(("run-a", 3, "fit"), b"announcement").payloads == []
    for payload in (b"first", b"second", b"third"):
        journal.accept(payload)

    after_crash = RoundJournal(tmp_path)
    assert after_crash.open_announcement() == b"announcement"
    restored = after_crash.open(("run-a", 3, "fit"), b"announcement")
    assert restored.payloads == [b"first", b"second", b"third"]
    assert restored.edge_round == 1
    after_crash.accept(b"fourth")
    assert (
        RoundJournal(tmp_path).open(("run-a", 3, "fit"), b"announcement").payloads[-1] == b"fourth"
    )


def test_edge_rounds_keep_only_the_open_edge_rounds_updates(tmp_path: Path) -> None:
    journal = RoundJournal(tmp_path)
    journal.open(("r", 1, "fit"), b"announcement")
    journal.accept(b"edge-1 update")
    journal.next_edge_round(2, region_bytes=1234)
    journal.accept(b"edge-2 update")

    restored = RoundJournal(tmp_path).open(("r", 1, "fit"), b"announcement")
    assert (restored.edge_round, restored.region_bytes) == (2, 1234)
    assert restored.payloads == [b"edge-2 update"]


def test_a_closed_round_is_remembered_and_its_updates_forgotten(tmp_path: Path) -> None:
    journal = RoundJournal(tmp_path)
    journal.open(("r", 2, "fit"), b"announcement")
    journal.accept(b"update")
    journal.close(("r", 2, "fit"))

    again = RoundJournal(tmp_path)
    assert again.last_closed() == ("r", 2, "fit")
    assert again.open_announcement() is None
    assert again.open(("r", 2, "fit"), b"announcement").payloads == []


def test_opening_another_round_drops_every_other_round_on_disk(tmp_path: Path) -> None:
    journal = RoundJournal(tmp_path)
    journal.open(("old-run", 5, "fit"), b"announcement")
    journal.accept(b"stale")
    journal.open(("new-run", 1, "fit"), b"announcement")
    assert not (tmp_path / "run-old-run").exists()
    assert RoundJournal(tmp_path).open(("old-run", 5, "fit"), b"announcement").payloads == []


def test_a_hostile_run_id_stays_inside_the_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    journal = RoundJournal(state)
    journal.open(("..", 1, "fit"), b"announcement")
    journal.accept(b"update")
    assert [p for p in tmp_path.iterdir()] == [state]
    assert RoundJournal(state).open(("..", 1, "fit"), b"announcement").payloads == [b"update"]


def test_a_journal_that_cannot_be_written_is_an_error_that_names_it(tmp_path: Path) -> None:
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state directory should be")
    journal = RoundJournal(blocked / "fog-north")
    with pytest.raises(FogflError, match="cannot write the fog broker's round journal"):
        journal.open(("r", 1, "fit"), b"announcement")
