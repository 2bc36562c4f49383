"""Whole federations of real fogfl processes on a real broker."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from fogfl.broker import LocalBroker
from fogfl.config import load_config
from fogfl.mqtt import Received, Topics
from fogfl.processes import free_port
from fogfl.run_dir import METRICS_FILE, MODEL_FILE, read_metrics
from fogfl.sim.hierarchy import simulate
from fogfl.sim.workers import ClientPool
from fogfl.wire import Envelope, decode, encode
from tests.integration.harness import (
    Recorder,
    Roles,
    publisher,
    rejected_reasons,
    roles,
    write_config,
)
from tests.sim.helpers import assert_same_model

pytestmark = pytest.mark.integration
TOPICS = Topics("fl")
LIMIT = 10**8


def start_federation(
    started: Roles,
    tmp_path: Path,
    broker: LocalBroker,
    clients: dict[str, list[tuple[str, int]]],
    rounds: int,
    fog: dict[str, object] | None = None,
    bridge_timeout: float = 60,
    min_regions: int | None = None,
    fog_regions: list[str] | None = None,
    extra: dict[str, dict[str, object]] | None = None,
    late: frozenset[str] = frozenset(),
) -> Path:
    """Start server, fog brokers, bridges and clients; clients are (id, trace seconds) so each
    has its own number of examples. Returns the run directory."""
    port = free_port()
    regions = list(clients)
    sections: dict[str, dict[str, object]] = {
        "federation": {
            "rounds": rounds,
            "regions": regions,
            "min_regions": min_regions,
            "run_id": "itest",
        },
        "fog": {"deadline_s": 60, **(fog or {})},
        "bridge": {"server_address": f"127.0.0.1:{port}", "partial_timeout_s": bridge_timeout},
        "server": {
            "address": f"127.0.0.1:{port}",
            "run_dir": str(tmp_path / "run"),
            "round_timeout_s": bridge_timeout + 30,
        },
    }
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    common = write_config(tmp_path / "common.yaml", broker, **sections)
    for region in regions:
        if fog_regions is None or region in fog_regions:
            started.start(
                f"fog-{region}",
                "fog-broker",
                "--region",
                region,
                "--expected",
                str(len(clients[region])),
                "--config",
                str(common),
            )
        started.start(f"bridge-{region}", "fog-bridge", "--region", region, "--config", str(common))
    for region, members in clients.items():
        for client_id, seconds in members:
            own = write_config(
                tmp_path / f"{client_id}.yaml",
                broker,
                task={"name": "qoe", "options": {"duration_s": seconds}},
            )
            if client_id not in late:
                started.start(
                    client_id, "client", "--id", client_id, "--region", region, "--config", str(own)
                )
    # Start the clock only when everyone listens, so that a short deadline bites on purpose.
    for name in started.children:
        started.wait_for_log(name, "ready", timeout=60)
    started.start("server", "server", "--config", str(common))
    return tmp_path / "run"


def tensors_of(received: Received) -> Envelope:
    return decode(received.payload, kinds={"update", "global", "partial"}, max_bytes=LIMIT)


def test_hierarchy_equals_flat_fedavg_and_survives_garbage(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    clients = {
        "north": [("north-1", 600), ("north-2", 400), ("north-3", 250)],
        "south": [("south-4", 500), ("south-5", 200)],
    }
    intruder = publisher(fresh_broker)
    injected: list[str] = []

    def inject_garbage_mid_run(received: Received, meta: dict[str, str]) -> None:
        # As round 2's global model goes out: the fog broker has the round's announcement
        # (the server sent it first) and no client has trained yet, so the round is open.
        if not injected and meta.get("kind") == "global" and meta.get("round") == "2":
            injected.append("yes")
            intruder.publish(
                TOPICS.updates("north", "intruder"), b"\x07\x00\x00\x00\x00\x00\x00\x00{broken"
            )
            wrong = Envelope(
                kind="update",
                run_id="itest",
                round=2,
                sender="intruder",
                region="north",
                num_examples=50,
                tensors={"net.0.weight": np.zeros((3, 3), np.float32)},
            )
            intruder.publish(TOPICS.updates("north", "intruder"), encode(wrong))

    recorder = Recorder(
        fresh_broker, [TOPICS.all_updates, TOPICS.global_model], on_message=inject_garbage_mid_run
    )
    with roles(tmp_path / "logs") as started:
        run_dir = start_federation(started, tmp_path, fresh_broker, clients, rounds=3)
        assert started.wait("server", 180) == 0, started.log("server")
        for name in started.children:
            assert started.wait(name, 30) == 0, started.log(name)
        fog_log = started.log("fog-north")
    recorder.close()
    intruder.close()

    globals_by_round = {
        (int(m["round"]), m["final"]): tensors_of(r)
        for r, m in recorder.messages
        if m.get("kind") == "global"
    }
    sizes = set()
    for round_ in (1, 2, 3):
        updates = [
            tensors_of(r)
            for r, m in recorder.messages
            if m.get("kind") == "update" and m["round"] == str(round_) and m["sender"] != "intruder"
        ]
        assert sorted(u.sender for u in updates) == sorted(
            c for members in clients.values() for c, _ in members
        )
        sizes |= {u.num_examples for u in updates}
        after = (
            globals_by_round[(round_ + 1, "false")] if round_ < 3 else globals_by_round[(3, "true")]
        )
        weights = [u.num_examples for u in updates]
        for name, value in after.tensors.items():
            flat = np.average(
                np.stack([u.tensors[name] for u in updates]).astype(np.float64),
                axis=0,
                weights=weights,
            )
            relative = np.linalg.norm(value - flat) / np.linalg.norm(flat)
            assert relative <= 1e-6, f"round {round_} {name}: relative error {relative}"
    assert len(sizes) == 5, "every client should hold a different number of examples"

    reasons = rejected_reasons(fog_log)
    assert injected and "malformed" in reasons and "wrong-tensors" in reasons

    rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
    assert [rows[r]["clients"] for r in (1, 2, 3)] == ["5", "5", "5"]
    assert float(rows[3]["eval_loss"]) < 0.7 * float(rows[1]["eval_loss"])
    final_file = decode((run_dir / MODEL_FILE).read_bytes(), kinds={"global"}, max_bytes=LIMIT)
    assert final_file.final and all(
        np.array_equal(final_file.tensors[k], v)
        for k, v in globals_by_round[(3, "true")].tensors.items()
    )


def test_a_client_killed_mid_run_is_left_behind_at_the_deadline(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    clients = {
        "north": [("north-1", 300), ("north-2", 300), ("north-3", 300)],
        "south": [("south-4", 300), ("south-5", 300)],
    }
    with roles(tmp_path / "logs") as started:
        victim: list[int] = []

        def kill_after_first_update(received: Received, meta: dict[str, str]) -> None:
            if not victim and meta.get("sender") == "north-2" and meta.get("round") == "1":
                victim.append(started.children["north-2"].pid)
                os.kill(victim[0], signal.SIGKILL)

        recorder = Recorder(fresh_broker, [TOPICS.all_updates], on_message=kill_after_first_update)
        run_dir = start_federation(
            started,
            tmp_path,
            fresh_broker,
            clients,
            rounds=3,
            fog={"deadline_s": 3, "min_updates": 2},
        )
        assert started.wait("server", 180) == 0, started.log("server")
        fog_log = started.log("fog-north")
        recorder.close()
    assert victim, "the client was never killed"
    rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
    assert rows[2]["clients"] == "4" and rows[3]["clients"] == "4"
    assert "deadline of 3 s passed" in fog_log


def test_a_silent_region_is_a_failure_not_a_stale_model(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    clients = {"north": [("north-1", 300), ("north-2", 300)], "south": [("south-3", 300)]}
    recorder = Recorder(fresh_broker, [TOPICS.all_partials, TOPICS.global_model])
    with roles(tmp_path / "logs") as started:
        run_dir = start_federation(
            started,
            tmp_path,
            fresh_broker,
            clients,
            rounds=2,
            bridge_timeout=4,
            min_regions=1,
            fog_regions=["north"],
        )
        assert started.wait("server", 180) == 0, started.log("server")
        server_log, south_log = started.log("server"), started.log("bridge-south")
        north_log = started.log("bridge-north")
    recorder.close()
    # South fails every round and the final evaluation, and says why; north never fails.
    south_failures = [line for line in south_log.splitlines() if "reporting a failure" in line]
    assert len(south_failures) == 3, south_log
    for line, what in zip(south_failures, ("round 1", "round 2", "final evaluation"), strict=True):
        assert f"no {what} partial" in line, south_log
    assert "failure" not in north_log, north_log
    server_failures = [line for line in server_log.splitlines() if "a region failed" in line]
    assert len(server_failures) == 3, server_log
    for line, when in zip(server_failures, ("round 1:", "round 2:", "final"), strict=True):
        assert when in line and "region south" in line and "north" not in line, server_log
    rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
    for round_ in (1, 2):
        row = rows[round_]
        assert (row["regions"], row["failed_regions"], row["clients"]) == ("1", "1", "2"), row

    partials = {
        (int(m["round"]), m["final"]): tensors_of(r)
        for r, m in recorder.messages
        if m.get("kind") == "partial"
    }
    assert {p.region for p in partials.values()} == {"north"}, "south had no fog broker"
    assert sorted(partials) == [(1, "false"), (2, "false"), (2, "true")]
    globals_ = {
        (int(m["round"]), m["final"]): tensors_of(r)
        for r, m in recorder.messages
        if m.get("kind") == "global"
    }
    assert sorted(globals_) == [(1, "false"), (2, "false"), (2, "true")]
    # With one region reporting, the next global model is exactly that region's partial:
    # nothing of the silent region, no stale model, and every round moves the model on.
    before = globals_[(1, "false")]
    for round_, after in ((1, globals_[(2, "false")]), (2, globals_[(2, "true")])):
        partial = partials[(round_, "false")]
        assert sorted(partial.contributors) == ["north-1", "north-2"]
        for name, value in partial.tensors.items():
            np.testing.assert_allclose(after.tensors[name], value, rtol=1e-6, atol=1e-7)
            moved = float(np.abs(after.tensors[name] - before.tensors[name]).max())
            assert moved > 1e-4, f"round {round_}: {name} is the previous global model's"
        before = after


def test_edge_rounds_schedules_and_fedprox_in_a_real_run(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    clients = {
        "north": [("north-01", 200), ("north-02", 200)],
        "south": [("south-03", 200), ("south-04", 200)],
    }
    recorder = Recorder(fresh_broker, [TOPICS.all_partials, TOPICS.all_updates])
    extra: dict[str, dict[str, object]] = {
        "federation": {
            "edge_rounds": 2,
            "clients_per_region": 2,
            "participation": {"schedule": "linear", "start_fraction": 1.0, "end_fraction": 0.5},
        },
        "training": {"proximal_mu": 0.01, "local_epochs": 1},
        "server": {"strategy": "fedprox"},
    }
    with roles(tmp_path / "logs") as started:
        run_dir = start_federation(started, tmp_path, fresh_broker, clients, rounds=3, extra=extra)
        assert started.wait("server", 180) == 0, started.log("server")
        for name in started.children:
            assert started.wait(name, 30) == 0, started.log(name)
    recorder.close()
    rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
    assert [rows[r]["clients"] for r in (1, 2, 3)] == ["4", "3", "2"]  # linear 100% → 50% of 4
    for round_ in (1, 2, 3):
        partials = recorder.where(kind="partial", round=str(round_), final="false")
        assert sorted(m["region"] for _, m in partials) == [
            "north",
            "south",
        ]  # one per region whatever κ
        edges = {m["edge_round"] for _, m in recorder.where(kind="update", round=str(round_))}
        assert edges == {"1", "2"}
        assert int(rows[round_]["bytes_edge"]) > int(rows[round_]["bytes_cloud"]) > 0

    # The values: the in-process simulation of the same configuration and seed (checked
    # against HierFAVG and FedProx by hand in tests/sim) computes the same run.
    config = load_config(
        tmp_path / "common.yaml", {"task.options": {"duration_s": 200}}, environ={}
    )
    with ClientPool(0) as pool:
        simulated = simulate(config, pool)
    final = decode((run_dir / MODEL_FILE).read_bytes(), kinds={"global"}, max_bytes=LIMIT)
    assert_same_model(final.tensors, simulated.final_tensors())
    for record in simulated.records:
        row = rows[record.round]
        assert float(row["eval_loss"]) == pytest.approx(record.eval_loss, rel=1e-5), row
        if record.round:
            assert int(row["clients"]) == record.clients, row
            assert float(row["train_loss"]) == pytest.approx(record.train_loss, rel=1e-5), row


def test_a_client_that_joins_late_starts_from_the_current_round(
    fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    clients = {"north": [("north-01", 200), ("north-02", 200)], "south": [("south-03", 200)]}
    recorder = Recorder(fresh_broker, [TOPICS.all_updates])
    with roles(tmp_path / "logs") as started:
        run_dir = start_federation(
            started,
            tmp_path,
            fresh_broker,
            clients,
            rounds=6,
            fog={"deadline_s": 3},
            late=frozenset({"north-02"}),
        )
        recorder.wait_for(60, kind="update", sender="north-01", round="2")
        started.start(
            "north-02",
            "client",
            "--id",
            "north-02",
            "--region",
            "north",
            "--config",
            str(tmp_path / "north-02.yaml"),
        )
        assert started.wait("server", 180) == 0, started.log("server")
        assert started.wait("north-02", 30) == 0, started.log("north-02")
    recorder.close()
    joined = sorted(int(m["round"]) for _, m in recorder.where(kind="update", sender="north-02"))
    assert joined and joined[0] >= 2, (
        "the late client should start at the current round, not round 1"
    )
    assert joined == list(range(joined[0], 7))
    rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
    assert rows[1]["clients"] == "2" and rows[6]["clients"] == "3"


def test_fedadam_at_the_cloud_runs_every_round(fresh_broker: LocalBroker, tmp_path: Path) -> None:
    """Each round the cloud moves the global model by FedAdam's step towards the regions'
    example-weighted mean, not onto it as FedAvg would. FedAdam computes in float64; the
    global model still goes out in the model's dtypes."""
    clients = {"north": [("north-01", 150)], "south": [("south-02", 250)]}
    # τ well above float32 noise keeps Adam's step a smooth function of the regions' mean,
    # so replaying it in float64 below matches Flower's float32 FedAvg inside FedAdam.
    eta, tau, beta_1, beta_2 = 0.01, 1e-3, 0.9, 0.99
    extra: dict[str, dict[str, object]] = {
        "federation": {"clients_per_region": 1},
        "server": {"strategy": "fedadam", "strategy_options": {"eta": eta, "tau": tau}},
    }
    recorder = Recorder(fresh_broker, [TOPICS.all_partials, TOPICS.global_model])
    with roles(tmp_path / "logs") as started:
        run_dir = start_federation(started, tmp_path, fresh_broker, clients, rounds=3, extra=extra)
        assert started.wait("server", 180) == 0, started.log("server")
        assert "rejected" not in started.log("north-01")
    recorder.close()
    rows = {int(row["round"]): row for row in read_metrics(run_dir / METRICS_FILE)}
    assert [rows[r]["clients"] for r in (1, 2, 3)] == ["2", "2", "2"]

    partials = {
        (int(m["round"]), m["region"]): tensors_of(r)
        for r, m in recorder.messages
        if m.get("kind") == "partial" and m["final"] == "false"
    }
    globals_ = {
        (int(m["round"]), m["final"]): tensors_of(r)
        for r, m in recorder.messages
        if m.get("kind") == "global"
    }
    initial = globals_[(1, "false")].tensors
    model = {name: value.astype(np.float64) for name, value in initial.items()}
    moment = {name: np.zeros_like(value) for name, value in model.items()}
    second_moment = {name: np.zeros_like(value) for name, value in model.items()}
    for round_ in (1, 2, 3):
        regions = [partials[(round_, region)] for region in clients]
        weights = [int(p.stats["weight"]) for p in regions]
        assert len(set(weights)) == 2, "the regions should hold different numbers of examples"
        published = globals_[(round_ + 1, "false")] if round_ < 3 else globals_[(3, "true")]
        # Adam on the pseudo-gradient (mean − model), with Flower's bias-corrected step size.
        step = eta * np.sqrt(1 - beta_2 ** (round_ + 1)) / (1 - beta_1 ** (round_ + 1))
        off_fedavg = 0.0
        for name, value in published.tensors.items():
            mean = np.average(
                np.stack([p.tensors[name] for p in regions]).astype(np.float64),
                axis=0,
                weights=weights,
            )
            delta = mean - model[name]
            moment[name] = beta_1 * moment[name] + (1 - beta_1) * delta
            second_moment[name] = beta_2 * second_moment[name] + (1 - beta_2) * delta**2
            model[name] = model[name] + step * moment[name] / (np.sqrt(second_moment[name]) + tau)
            assert value.dtype == initial[name].dtype
            np.testing.assert_allclose(
                value, model[name], rtol=1e-6, atol=1e-6, err_msg=f"round {round_} {name}"
            )
            off_fedavg = max(off_fedavg, float(np.abs(value - mean).max()))
        # FedAvg would have published the mean itself.
        assert off_fedavg > 1e-3, f"round {round_}: within {off_fedavg:.2g} of FedAvg's model"
