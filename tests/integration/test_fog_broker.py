"""A real fog-broker process on a real broker, fed hand-made updates by the test."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from fogfl.broker import LocalBroker
from fogfl.mqtt import Topics
from fogfl.wire import Envelope, ModelSchema, decode, encode
from tests.integration.harness import (
    Recorder,
    Roles,
    publisher,
    rejected_reasons,
    roles,
    write_config,
)

pytestmark = pytest.mark.integration
TOPICS = Topics("fl")
RUN = "run-fog"


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": rng.normal(size=(8, 4)).astype(np.float32),
        "layer.bias": rng.normal(size=8).astype(np.float32),
    }


SCHEMA = ModelSchema.of(model(0))


def announce(session, round_: int, final: bool = False, run: str = RUN, **config: object) -> None:  # type: ignore[no-untyped-def]
    message = Envelope(
        kind="round",
        run_id=run,
        round=round_,
        sender="server",
        final=final,
        schema=SCHEMA,
        config=config,
    )
    session.publish(TOPICS.round_announcement, encode(message), retain=True)


def update(
    sender: str, round_: int, num_examples: int, tensors: dict[str, np.ndarray], **changes: object
) -> bytes:
    fields: dict[str, object] = dict(
        kind="update",
        run_id=RUN,
        round=round_,
        sender=sender,
        region="north",
        num_examples=num_examples,
        tensors=tensors,
        metrics={"train_loss": float(num_examples)},
    )
    fields.update(changes)
    return encode(Envelope(**fields))  # type: ignore[arg-type]


def start_fog_broker(started: Roles, config: Path, *flags: str) -> None:
    """The north fog broker as a process, ready (subscribed) when this returns."""
    started.start("fog", "fog-broker", "--region", "north", *flags, "--config", str(config))
    started.wait_for_log("fog", "ready")


def partial_of(recorder: Recorder, round_: int, timeout: float = 20) -> Envelope:
    received, _ = recorder.wait_for(timeout, kind="partial", round=str(round_))
    return decode(received.payload, kinds={"partial"}, max_bytes=10**8, schema=SCHEMA)


def test_partial_is_the_example_weighted_mean_despite_bad_messages(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    recorder = Recorder(fresh_broker, [TOPICS.partial("north")])
    session = publisher(fresh_broker)
    with roles(tmp_path / "logs") as started:
        start_fog_broker(started, config, "--expected", "3", "--deadline", "60")
        announce(session, 1)
        models, weights = [model(i) for i in (1, 2, 3)], [1440, 300, 2000]
        session.publish(TOPICS.updates("north", "c1"), update("c1", 1, weights[0], models[0]))
        wrong_shape = {
            "layer.weight": np.zeros((4, 4), np.float32),
            "layer.bias": np.zeros(8, np.float32),
        }
        nan = model(9)
        nan["layer.bias"][0] = np.nan
        for sender, bad in (
            ("c9", b"\x00garbage that is not safetensors"),
            ("intruder", update("intruder", 1, 10, wrong_shape)),
            ("c1", update("c1", 1, weights[0], models[0])),  # duplicate
            ("c9", update("c9", 1, 10, model(9), run_id="another-run")),
            ("c9", update("c9", 2, 10, model(9))),  # future round
            ("c9", update("c9", 1, 10, model(9), region="south")),
            ("c9", update("c9", 1, 10, nan)),
            ("c9", update("c9", 1, 0, model(9))),
            ("c2", update("c9", 1, 10, model(9))),  # on c2's topic: impersonation
        ):
            session.publish(TOPICS.updates("north", sender), bad)
        session.publish(TOPICS.updates("north", "c2"), update("c2", 1, weights[1], models[1]))
        session.publish(TOPICS.updates("north", "c3"), update("c3", 1, weights[2], models[2]))
        partial = partial_of(recorder, 1)
        session.publish(
            TOPICS.updates("north", "c4"), update("c4", 1, 5, model(4))
        )  # after the close: late
        announce(session, 1, final=True)
        for sender in ("c1", "c2", "c3"):
            session.publish(
                TOPICS.updates("north", sender),
                encode(
                    Envelope(
                        kind="evaluation",
                        run_id=RUN,
                        round=1,
                        sender=sender,
                        region="north",
                        num_examples=100,
                        metrics={"eval_loss": 1.0, "eval_examples": 100},
                    )
                ),
            )
        assert started.wait("fog", 20) == 0
        log = started.log("fog")
    session.close()
    recorder.close()

    assert partial.num_examples == sum(weights)
    assert partial.contributors == ["c1", "c2", "c3"]
    for name in SCHEMA.names:
        expected = np.average(np.stack([m[name] for m in models]), axis=0, weights=weights)
        np.testing.assert_allclose(partial.tensors[name], expected, rtol=1e-6, atol=1e-7)
    assert partial.metrics["train_loss"] == pytest.approx(np.average(weights, weights=weights))
    reasons = rejected_reasons(log)
    for reason in (
        "malformed",
        "wrong-shape",
        "duplicate",
        "other-run",
        "future-round",
        "wrong-region",
        "not-finite",
        "no-examples",
        "impersonation",
        "late",
    ):
        assert reason in reasons, f"{reason} not logged; log:\n{log}"
    assert sum(partial.stats["rejected"].values()) == 9
    assert "final evaluation 1 closed" in log


def test_round_closes_at_the_deadline_with_the_updates_it_has(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    recorder = Recorder(fresh_broker, [TOPICS.partial("north")])
    session = publisher(fresh_broker)
    with roles(tmp_path / "logs") as started:
        start_fog_broker(
            started, config, "--expected", "3", "--deadline", "2", "--min-updates", "2"
        )
        announce(session, 1)
        session.publish(TOPICS.updates("north", "c1"), update("c1", 1, 100, model(1)))
        session.publish(TOPICS.updates("north", "c2"), update("c2", 1, 300, model(2)))
        partial = partial_of(recorder, 1)
        assert "deadline of 2 s passed" in started.log("fog")
    session.close()
    recorder.close()
    assert partial.contributors == ["c1", "c2"] and partial.num_examples == 400


def test_a_new_run_replaces_the_old_one(fresh_broker: LocalBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    recorder = Recorder(fresh_broker, [TOPICS.partial("north")])
    session = publisher(fresh_broker)
    with roles(tmp_path / "logs") as started:
        start_fog_broker(started, config, "--expected", "1")
        announce(session, 3, run="old-run")
        announce(session, 1)
        session.publish(TOPICS.updates("north", "c1"), update("c1", 1, 100, model(1)))
        partial = partial_of(recorder, 1)
    session.close()
    recorder.close()
    assert partial.run_id == RUN


def test_only_announced_participants_count_and_uniform_weighting_weighs_clients_equally(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    recorder = Recorder(fresh_broker, [TOPICS.partial("north")])
    session = publisher(fresh_broker)
    with roles(tmp_path / "logs") as started:
        start_fog_broker(started, config, "--expected", "5")
        announce(
            session, 1, participants={"north": ["c1", "c3"], "south": ["c9"]}, weighting="uniform"
        )
        session.publish(TOPICS.updates("north", "c2"), update("c2", 1, 500, model(2)))  # not picked
        session.publish(TOPICS.updates("north", "c1"), update("c1", 1, 100, model(1)))
        session.publish(TOPICS.updates("north", "c3"), update("c3", 1, 900, model(3)))
        partial = partial_of(recorder, 1)
        log = started.log("fog")
    session.close()
    recorder.close()
    assert partial.contributors == ["c1", "c3"]
    assert partial.num_examples == 1000 and partial.stats["weight"] == 2
    for name in SCHEMA.names:
        np.testing.assert_allclose(
            partial.tensors[name], (model(1)[name] + model(3)[name]) / 2, rtol=1e-6, atol=1e-7
        )
    assert "not-participant" in rejected_reasons(log)


def test_edge_rounds_send_the_region_model_down_and_one_partial_up(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    recorder = Recorder(fresh_broker, [TOPICS.partial("north"), TOPICS.region_model("north")])
    session = publisher(fresh_broker)
    with roles(tmp_path / "logs") as started:
        start_fog_broker(started, config, "--expected", "2")
        announce(session, 1, edge_rounds=3)
        for edge in (1, 2, 3):
            if edge > 1:
                received, _ = recorder.wait_for(20, kind="region", edge_round=str(edge))
                region = decode(received.payload, kinds={"region"}, max_bytes=10**8, schema=SCHEMA)
                expected = np.average(
                    np.stack([model(10 * (edge - 1) + i)["layer.bias"] for i in (1, 2)]),
                    axis=0,
                    weights=[100, 300],
                )
                np.testing.assert_allclose(
                    region.tensors["layer.bias"], expected, rtol=1e-6, atol=1e-7
                )
                session.publish(
                    TOPICS.updates("north", "c1"),
                    update("c1", 1, 100, model(0), edge_round=edge - 1),
                )  # stale edge round
            session.publish(
                TOPICS.updates("north", "c1"),
                update("c1", 1, 100, model(10 * edge + 1), edge_round=edge),
            )
            session.publish(
                TOPICS.updates("north", "c2"),
                update("c2", 1, 300, model(10 * edge + 2), edge_round=edge),
            )
        partial = partial_of(recorder, 1)
        log = started.log("fog")
    session.close()
    recorder.close()
    assert len(recorder.where(kind="partial")) == 1
    assert len(recorder.where(kind="region")) == 2
    np.testing.assert_allclose(
        partial.tensors["layer.bias"],
        np.average(
            np.stack([model(31)["layer.bias"], model(32)["layer.bias"]]), axis=0, weights=[100, 300]
        ),
        rtol=1e-6,
        atol=1e-7,
    )
    assert partial.stats["region_bytes"] > 0
    assert rejected_reasons(log).count("late") == 2


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_fog_broker_waiting_past_its_deadline_does_not_spin(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", fresh_broker)
    session = publisher(fresh_broker)
    with roles(tmp_path / "logs") as started:
        start_fog_broker(
            started, config, "--expected", "3", "--deadline", "1", "--min-updates", "2"
        )
        announce(session, 1)
        session.publish(TOPICS.updates("north", "c1"), update("c1", 1, 100, model(1)))
        started.wait_for_log("fog", "deadline passed with 1 updates, 2 needed; still waiting")
        pid = started.children["fog"].pid
        before = cpu_seconds(pid)
        time.sleep(3)
        used = cpu_seconds(pid) - before
    session.close()
    # Waiting costs next to nothing; a loop polling with no timeout burns a whole core.
    assert used < 0.5, f"the waiting fog broker used {used:.2f} s of CPU in 3 s"
