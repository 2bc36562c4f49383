"""Retained messages outlive runs; only the current run may start work, and roles move only
forward. Also: a fog broker and a client with --serve take part in run after run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fogfl.broker import LocalBroker
from fogfl.mqtt import Topics
from fogfl.tasks import load_task
from fogfl.tasks.base import model_tensors
from fogfl.wire import Envelope, ModelSchema, encode
from tests.integration.harness import Recorder, publisher, roles, write_config
from tests.integration.test_fog_broker import announce, model, partial_of, update

pytestmark = pytest.mark.integration
TOPICS = Topics("fl")
SYNTHETIC = {"name": "synthetic", "options": {"megabytes": 0.01, "tensors": 2, "examples": 50}}


def synthetic_model(seed: int) -> dict[str, np.ndarray]:
    return model_tensors(load_task("synthetic", SYNTHETIC["options"]).build_model(seed))


def global_model(
    run: str, round_: int, tensors: dict[str, np.ndarray], final: bool = False
) -> bytes:
    return encode(
        Envelope(
            kind="global", run_id=run, round=round_, sender="server", tensors=tensors, final=final
        )
    )


def test_a_retained_region_model_of_an_earlier_run_does_not_start_work(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    tensors = synthetic_model(0)
    session = publisher(fresh_broker)
    stale_region_model = Envelope(
        kind="region",
        run_id="old-run",
        round=4,
        edge_round=2,
        sender="fog-north",
        region="north",
        num_examples=100,
        tensors={name: array + 1 for name, array in tensors.items()},
    )
    session.publish(TOPICS.region_model("north"), encode(stale_region_model), retain=True)
    session.publish(TOPICS.global_model, global_model("new-run", 1, tensors), retain=True)
    config = write_config(tmp_path / "c.yaml", fresh_broker, task=SYNTHETIC)
    recorder = Recorder(fresh_broker, [TOPICS.region_updates("north")])
    with roles(tmp_path / "logs") as started:
        started.start(
            "client", "client", "--id", "north-01", "--region", "north", "--config", str(config)
        )
        recorder.wait_for(60, kind="update", run_id="new-run", round="1")
        # The new run's global model, published after the client began: it trains on it too.
        session.publish(TOPICS.global_model, global_model("new-run", 2, tensors), retain=True)
        recorder.wait_for(60, kind="update", run_id="new-run", round="2")
    session.close()
    recorder.close()
    updates = [meta for _, meta in recorder.where(kind="update")]
    assert [(m["run_id"], m["round"], m["edge_round"]) for m in updates] == [
        ("new-run", "1", "1"),
        ("new-run", "2", "1"),
    ]


def test_a_fog_broker_started_after_a_run_ended_waits_for_the_next_run(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    session = publisher(fresh_broker)
    announce(session, 5, final=True, run="finished-run", ended=True)
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    recorder = Recorder(fresh_broker, [TOPICS.partial("north")])
    with roles(tmp_path / "logs") as started:
        started.start(
            "fog", "fog-broker", "--region", "north", "--expected", "1", "--config", str(config)
        )
        started.wait_for_log("fog", "run finished-run is over; waiting for the next run")
        announce(session, 1)
        session.publish(TOPICS.updates("north", "c1"), update("c1", 1, 100, model(1)))
        partial = partial_of(recorder, 1)
        log = started.log("fog")
    session.close()
    recorder.close()
    assert partial.run_id == "run-fog"
    assert "finished-run opened" not in log and "final evaluation 5" not in log


def test_a_fog_broker_never_goes_back_to_a_run_it_left(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    session = publisher(fresh_broker)
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    recorder = Recorder(fresh_broker, [TOPICS.partial("north")])
    with roles(tmp_path / "logs") as started:
        started.start(
            "fog", "fog-broker", "--region", "north", "--expected", "1", "--config", str(config)
        )
        started.wait_for_log("fog", "ready")
        announce(session, 2, run="run-a")
        started.wait_for_log("fog", "round 2 of run run-a opened")
        announce(session, 1, run="run-fog")
        started.wait_for_log("fog", "round 1 of run run-fog opened")
        announce(session, 3, run="run-a")  # an old server still talking: ignored
        announce(session, 1, run="run-fog")  # the same round again: nothing new
        session.publish(TOPICS.updates("north", "c1"), update("c1", 1, 100, model(1)))
        partial = partial_of(recorder, 1)
        log = started.log("fog")
    session.close()
    recorder.close()
    assert partial.run_id == "run-fog"
    assert "run run-a opened" in log and "round 3 of run run-a" not in log
    assert log.count("round 1 of run run-fog opened") == 1


def test_serve_keeps_a_fog_broker_and_a_client_for_run_after_run(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    tensors = synthetic_model(0)
    schema = ModelSchema.of(tensors)
    session = publisher(fresh_broker)
    config = write_config(tmp_path / "c.yaml", fresh_broker, task=SYNTHETIC)
    recorder = Recorder(fresh_broker, [TOPICS.partial("north"), TOPICS.region_updates("north")])

    def announce_round(run: str, round_: int, final: bool = False) -> None:
        message = Envelope(
            kind="round", run_id=run, round=round_, sender="server", final=final, schema=schema
        )
        session.publish(TOPICS.round_announcement, encode(message), retain=True)
        session.publish(TOPICS.global_model, global_model(run, round_, tensors, final), retain=True)

    with roles(tmp_path / "logs") as started:
        started.start(
            "fog",
            "fog-broker",
            "--region",
            "north",
            "--expected",
            "1",
            "--serve",
            "--config",
            str(config),
        )
        started.start(
            "client",
            "client",
            "--id",
            "north-01",
            "--region",
            "north",
            "--serve",
            "--config",
            str(config),
        )
        for run in ("first-run", "second-run"):
            announce_round(run, 1)
            recorder.wait_for(60, kind="partial", run_id=run, round="1", final="false")
            announce_round(run, 1, final=True)
            recorder.wait_for(60, kind="partial", run_id=run, final="true")
        for name in ("fog", "client"):
            assert started.children[name].poll() is None, f"{name} ended:\n{started.log(name)}"
    session.close()
    recorder.close()
    for run in ("first-run", "second-run"):
        assert len(recorder.where(kind="update", run_id=run)) == 1
        assert len(recorder.where(kind="evaluation", run_id=run)) == 1
