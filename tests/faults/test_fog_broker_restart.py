"""A fog broker killed mid-round comes back and closes the round with every update: those
it had accepted before the crash (its round journal), those published while it was down
(its persistent MQTT session), and those that come after."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from fogfl.broker import LocalBroker
from fogfl.codecs import Reference
from fogfl.fog_state import RoundJournal
from fogfl.wire import Envelope, decode, encode
from tests.integration.harness import (
    Recorder,
    Roles,
    publisher,
    rejected_reasons,
    roles,
    write_config,
)
from tests.integration.test_fog_broker import (
    SCHEMA,
    TOPICS,
    announce,
    model,
    partial_of,
    start_fog_broker,
    update,
)

pytestmark = pytest.mark.integration


def kill_fog_broker(started: Roles) -> None:
    """SIGKILL the north fog broker and wait until it is gone."""
    fog = started.children["fog"]
    fog.popen.send_signal(signal.SIGKILL)
    fog.popen.wait()


def start_fog_broker_again(started: Roles, config: Path, *flags: str) -> None:
    """The north fog broker's restart, as "fog-again" (not waited for)."""
    started.start("fog-again", "fog-broker", "--region", "north", *flags, "--config", str(config))


def wait_for_files(folder: Path, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(folder.glob("*.msg"))) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{folder} never held {count} accepted updates")


def test_a_fog_broker_killed_mid_round_closes_it_with_every_update(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    journal = tmp_path / "fog-state" / "fog-north" / "run-run-fog" / "1-fit"
    recorder = Recorder(fresh_broker, [TOPICS.partial("north")])
    session = publisher(fresh_broker)
    weights = [100, 250, 400, 50]
    with roles(tmp_path / "logs") as started:
        start_fog_broker(started, config, "--expected", "4", "--deadline", "120")
        announce(session, 1)
        session.publish(TOPICS.updates("north", "c1"), update("c1", 1, weights[0], model(1)))
        session.publish(TOPICS.updates("north", "c2"), update("c2", 1, weights[1], model(2)))
        wait_for_files(journal, 2)
        kill_fog_broker(started)
        # While it is down: queued for it in its persistent session.
        session.publish(TOPICS.updates("north", "c3"), update("c3", 1, weights[2], model(3)))
        start_fog_broker_again(started, config, "--expected", "4", "--deadline", "120")
        started.wait_for_log("fog-again", "restored")
        session.publish(TOPICS.updates("north", "c4"), update("c4", 1, weights[3], model(4)))
        partial = partial_of(recorder, 1, timeout=30)
        log = started.log("fog-again")
    session.close()
    recorder.close()

    assert sorted(partial.contributors) == ["c1", "c2", "c3", "c4"]
    assert partial.num_examples == sum(weights)
    for name in SCHEMA.names:
        expected = np.average(
            np.stack([model(i)[name] for i in (1, 2, 3, 4)]), axis=0, weights=weights
        )
        np.testing.assert_allclose(partial.tensors[name], expected, rtol=1e-6, atol=1e-7)
    assert "restored edge round 1 with 2 updates" in log
    assert "duplicate" not in rejected_reasons(log)


def test_a_fog_broker_killed_in_an_edge_round_resumes_that_edge_round(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    journal = tmp_path / "fog-state" / "fog-north" / "run-run-fog" / "1-fit"
    recorder = Recorder(fresh_broker, [TOPICS.partial("north"), TOPICS.region_model("north")])
    session = publisher(fresh_broker)
    with roles(tmp_path / "logs") as started:
        start_fog_broker(started, config, "--expected", "2")
        announce(session, 1, edge_rounds=2)
        session.publish(
            TOPICS.updates("north", "c1"), update("c1", 1, 100, model(11), edge_round=1)
        )
        session.publish(
            TOPICS.updates("north", "c2"), update("c2", 1, 300, model(12), edge_round=1)
        )
        recorder.wait_for(20, kind="region", edge_round="2")
        session.publish(
            TOPICS.updates("north", "c1"), update("c1", 1, 100, model(21), edge_round=2)
        )
        wait_for_files(journal, 1)
        kill_fog_broker(started)
        start_fog_broker_again(started, config, "--expected", "2")
        started.wait_for_log("fog-again", "restored edge round 2 with 1 updates")
        session.publish(
            TOPICS.updates("north", "c2"), update("c2", 1, 300, model(22), edge_round=2)
        )
        partial = partial_of(recorder, 1, timeout=30)
    session.close()
    recorder.close()

    # Edge round 1 was not redone: its region model went out once (and, from the journal,
    # again after the restart, byte for byte).
    region_models = recorder.where(kind="region")
    assert {bytes(received.payload) for received, _ in region_models} == {
        bytes(region_models[0][0].payload)
    }
    assert {meta["edge_round"] for _, meta in region_models} == {"2"}
    assert partial.contributors == ["c1", "c2"]
    np.testing.assert_allclose(
        partial.tensors["layer.bias"],
        np.average(
            np.stack([model(21)["layer.bias"], model(22)["layer.bias"]]), axis=0, weights=[100, 300]
        ),
        rtol=1e-6,
        atol=1e-7,
    )
    assert partial.stats["region_bytes"] > 0


def test_a_round_complete_in_the_journal_closes_as_soon_as_the_broker_is_back(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    """Killed after its last update was kept but before the partial was out: the restarted
    broker publishes the partial once it is connected."""
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    announcement = Envelope(kind="round", run_id="run-fog", round=1, sender="server", schema=SCHEMA)
    journal = RoundJournal(tmp_path / "fog-state" / "fog-north")
    journal.open(("run-fog", 1, "fit"), encode(announcement))
    for i, examples in ((1, 100), (2, 300)):
        journal.accept(update(f"c{i}", 1, examples, model(i)))
    recorder = Recorder(fresh_broker, [TOPICS.partial("north")])
    with roles(tmp_path / "logs") as started:
        start_fog_broker(started, config, "--expected", "2")
        partial = partial_of(recorder, 1)
    recorder.close()
    assert partial.contributors == ["c1", "c2"] and partial.num_examples == 400
    assert RoundJournal(tmp_path / "fog-state" / "fog-north").last_closed() == (
        "run-fog",
        1,
        "fit",
    )


def test_a_fog_broker_killed_mid_round_decodes_the_int8_deltas_it_replays(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    """Coded updates are deltas from the round's global model: the journal keeps that model,
    so a restarted broker decodes what it replays even after the global model is gone from
    the broker. An update that comes before the global model waits for it."""
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    journal = tmp_path / "fog-state" / "fog-north" / "run-run-fog" / "1-fit"
    recorder = Recorder(fresh_broker, [TOPICS.partial("north")])
    session = publisher(fresh_broker)
    start = model(0)
    reference = Reference(start, SCHEMA)
    weights = {"c1": 100, "c2": 250, "c3": 400}
    updates = {
        client: encode(
            Envelope(
                kind="update",
                run_id="run-fog",
                round=1,
                sender=client,
                region="north",
                num_examples=weights[client],
                tensors=model(i + 1),
            ),
            "int8",
            reference=reference,
        )
        for i, client in enumerate(weights)
    }
    global_model = encode(
        Envelope(kind="global", run_id="run-fog", round=1, sender="server", tensors=start)
    )
    with roles(tmp_path / "logs") as started:
        start_fog_broker(started, config, "--expected", "3", "--deadline", "120")
        announce(session, 1, update_codec="int8")
        # Before its reference: one publisher's messages arrive in the order it sent them.
        session.publish(TOPICS.updates("north", "c1"), updates["c1"])
        session.publish(TOPICS.global_model, global_model, retain=True)
        session.publish(TOPICS.updates("north", "c2"), updates["c2"])
        wait_for_files(journal, 2)
        kill_fog_broker(started)
        session.publish(TOPICS.global_model, b"", retain=True)  # the broker forgets it
        session.publish(TOPICS.updates("north", "c3"), updates["c3"])
        start_fog_broker_again(started, config, "--expected", "3", "--deadline", "120")
        partial = partial_of(recorder, 1, timeout=30)
        log = started.log("fog") + started.log("fog-again")
    session.close()
    recorder.close()

    assert sorted(partial.contributors) == ["c1", "c2", "c3"]
    assert "restored edge round 1 with 2 updates" in log
    assert rejected_reasons(log) == []
    decoded = {
        client: decode(
            payload, kinds={"update"}, max_bytes=10**8, schema=SCHEMA, reference=reference
        )
        for client, payload in updates.items()
    }
    for name in SCHEMA.names:
        expected = np.average(
            np.stack([decoded[c].tensors[name] for c in weights]),
            axis=0,
            weights=list(weights.values()),
        )
        np.testing.assert_allclose(partial.tensors[name], expected, rtol=1e-6, atol=1e-7)
