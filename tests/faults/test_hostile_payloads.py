"""Hostile payloads never kill a role.

Every class of message that once killed or stalled a role is rejected with its reason, and
12,000 structure-aware mutations of valid envelopes (tests/faults/hostile.py) each either
decode to something that fits the schema or are rejected with a WireError — by `decode`
and by every role's per-message handler, run without a broker: the fog broker's `handle`,
the client's `_newest`, the bridge's `_file` and `region_result`, and the monitor's
`observe` with `MonitorState.add`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from fogfl.aggregation import MetricsMean, RegionRound, WeightedModelMean
from fogfl.config import FogflConfig
from fogfl.errors import WireError
from fogfl.flower import RegionResult
from fogfl.mqtt import MqttSession, Received
from fogfl.roles.client import FederatedClient
from fogfl.roles.fog_bridge import FogBridge
from fogfl.roles.fog_broker import FogBroker
from fogfl.roles.monitor import MonitorState, observe
from fogfl.wire import (
    MAX_CLIENT_EXAMPLES,
    MAX_COUNT,
    MAX_METRIC,
    MAX_METRICS,
    Envelope,
    decode,
    encode,
    read_metadata,
)
from tests.faults.hostile import (
    CLIENT_ID,
    REFERENCE,
    REGION,
    ROUND,
    RUN_ID,
    SCHEMA,
    SEED,
    TASK_OPTIONS,
    TOPICS,
    Case,
    announcement,
    hostile_classes,
    mutations,
    valid_envelopes,
    valid_payloads,
)

CASES = 12_000
MAX_BYTES = FogflConfig().wire.max_payload_bytes
# Every check of the decoder, reached by some mutation.
EVERY_REASON = {
    "malformed",
    "bad-version",
    "wrong-kind",
    "other-run",
    "bad-field",
    "bad-codec",
    "bad-schema",
    "wrong-tensors",
    "wrong-shape",
    "wrong-dtype",
    "not-finite",
    # The codecs' own (fogfl/codecs), on coded payloads.
    "wrong-reference",
    "bad-scale",
    "bad-index",
    "bad-compression",
}


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    return list(mutations(SEED, CASES))


def decoded(case: Case) -> Envelope:
    receiver = case.receiver
    return decode(
        case.payload,
        kinds=receiver.kinds,
        max_bytes=MAX_BYTES,
        schema=receiver.schema,
        run_id=receiver.run_id,
        reference=REFERENCE,  # a fog broker holds the round's global model
    )


def assert_fits_its_receiver(message: Envelope, case: Case) -> None:
    """What every role may rely on in a message `decode` returned."""
    receiver = case.receiver
    assert message.kind in receiver.kinds
    assert receiver.run_id is None or message.run_id == receiver.run_id
    for count in (message.round, message.edge_round, message.num_examples):
        assert type(count) is int and 0 <= count <= MAX_COUNT
    assert len(message.metrics) <= MAX_METRICS
    assert all(math.isfinite(v) and abs(v) <= MAX_METRIC for v in message.metrics.values())
    if receiver.schema is not None:
        receiver.schema.check(message.tensors, case.name)
        for spec in receiver.schema.tensors:
            assert str(message.tensors[spec.name].dtype) == spec.dtype
    for array in message.tensors.values():
        assert array.dtype.kind != "f" or np.isfinite(array).all()
    if message.kind in ("round", "evaluation"):
        assert message.tensors == {}
    if message.schema is not None:
        assert 0 < message.schema.min_payload_bytes <= MAX_BYTES
    for key in ("weight", "updates_bytes", "region_bytes"):
        assert type(message.stats.get(key, 0)) is int


def test_each_hostile_class_is_rejected_with_its_reason() -> None:
    outcomes = {}
    for case in hostile_classes():
        try:
            decoded(case)
        except WireError as error:
            outcomes[case.name] = error.reason
        else:
            outcomes[case.name] = "accepted"
    assert outcomes == {case.name: case.reason for case in hostile_classes()}


def test_mutated_envelopes_decode_to_their_schema_or_raise_wire_errors(
    corpus: list[Case],
) -> None:
    outcomes: Counter[str] = Counter()
    past_header = 0
    unexpected = []
    for case in corpus:
        try:
            read_metadata(case.payload)
            past_header += 1
        except WireError:
            pass
        try:
            message = decoded(case)
        except WireError as error:
            outcomes[error.reason] += 1
            continue
        except Exception as exc:
            unexpected.append(f"{case.name}: {exc!r}")
            continue
        assert_fits_its_receiver(message, case)
        outcomes["accepted"] += 1
    assert unexpected == []
    # The mutations must stay deep: most get past the header, many all the way through,
    # and every check rejects some.
    assert past_header >= 0.85 * len(corpus), outcomes
    assert outcomes["accepted"] >= 0.15 * len(corpus), outcomes
    assert set(outcomes) >= EVERY_REASON | {"accepted"}, outcomes


class Roles:
    """Every role's per-message handler, without a broker: constructing a role does not
    connect (only `run()` does), and publishing is recorded instead of sent."""

    def __init__(self, state_dir: Path, published: list[str]) -> None:
        self.config = FogflConfig.model_validate(
            {
                "task": {"name": "synthetic", "options": TASK_OPTIONS},
                "fog": {"state_dir": str(state_dir / "fit")},
                "bridge": {"partial_timeout_s": 0.001},
                # Open roles: the mutations must reach every check past the signature's.
                "security": {"insecure": True},
            }
        )
        self.published = published
        self.state_dir = state_dir
        self.fit_broker = self.fog_broker("fit")
        # Coded updates: the broker decodes their deltas against the round's global model.
        self.fit_broker.handle(
            self.received(TOPICS.round_announcement, announcement(update_codec="int8"))
        )
        self.fit_broker.handle(self.received(TOPICS.global_model, valid_payloads()["global"][1]))
        self.final_broker = self.fog_broker("final")
        self.final_broker.handle(self.received(TOPICS.round_announcement, announcement(final=True)))
        self.announcement_brokers: list[FogBroker] = []
        self.client = FederatedClient(self.config, CLIENT_ID, REGION)
        self.bridge = FogBridge(self.config, REGION)
        self.monitor = MonitorState()

    def fog_broker(self, name: str) -> FogBroker:
        config = self.config.model_copy(deep=True)
        config.fog.state_dir = self.state_dir / name
        # Expecting more updates than there are cases: no round ever closes.
        return FogBroker(config, REGION, expected_updates=10 * CASES)

    @staticmethod
    def received(topic: str, payload: bytes) -> Received:
        return Received(topic, payload, False)

    def handlers(self, case: Case) -> Iterator[tuple[str, Callable[[], object]]]:
        """The handlers of the roles that read the case's topic, and the monitor's."""
        message = self.received(case.topic, case.payload)
        if case.topic == TOPICS.round_announcement:
            # A fresh broker for each: an announcement moves a broker on for good.
            broker = self.fog_broker("announcements")
            self.announcement_brokers.append(broker)
            yield "FogBroker.handle (announcement)", lambda: broker.handle(message)
        if case.topic == TOPICS.updates(REGION, CLIENT_ID):
            yield "FogBroker.handle (update)", lambda: self.fit_broker.handle(message)
            yield "FogBroker.handle (evaluation)", lambda: self.final_broker.handle(message)
        if case.topic in (TOPICS.global_model, TOPICS.region_model(REGION)):
            yield "FederatedClient._newest", lambda: self.client._newest(message)
        if case.topic == TOPICS.partial(REGION):
            yield "FogBridge._file", lambda: self.bridge._file(message)
            round_config = {"run_id": RUN_ID, "round": ROUND, "schema": SCHEMA.to_json()}
            yield "FogBridge.region_result", lambda: self.bridge.region_result(round_config, False)
        yield "monitor", lambda: self.monitor.add(observe(message), TOPICS)

    def internal_errors(self) -> dict[str, int]:
        """Exceptions the roles' last-resort guards caught: each one is a finding."""
        roles = {
            "fit broker": self.fit_broker,
            "final broker": self.final_broker,
            "client": self.client,
            "bridge": self.bridge,
        }
        counts = {name: role.rejections.counts["internal"] for name, role in roles.items()}
        counts["announcement brokers"] = sum(
            b.rejections.counts["internal"] for b in self.announcement_brokers
        )
        return {name: count for name, count in counts.items() if count}


@pytest.fixture
def roles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Roles:
    published: list[str] = []
    monkeypatch.setattr(
        MqttSession, "publish", lambda session, topic, payload, **_: published.append(topic)
    )
    caplog.set_level(logging.ERROR, logger="fogfl")  # rejections are warnings; keep errors
    return Roles(tmp_path, published)


def test_valid_envelopes_pass_every_handler(roles: Roles) -> None:
    """The harness reaches each handler's deep end: a valid message is accepted."""
    valid = {kind: encode(message) for kind, message in valid_envelopes().items()}
    topic = TOPICS.updates(REGION, CLIENT_ID)
    roles.fit_broker.handle(roles.received(topic, valid["update"]))
    coded = [payload for name, (kind, payload) in valid_payloads().items() if " " in name]
    for payload in coded:
        case = Case("coded", read_metadata(payload)["kind"], payload)
        assert_fits_its_receiver(decoded(case), case)
    roles.final_broker.handle(roles.received(topic, valid["evaluation"]))
    model = roles.client._newest(roles.received(TOPICS.global_model, valid["global"]))
    roles.bridge._file(roles.received(TOPICS.partial(REGION), valid["partial"]))
    config = {"run_id": RUN_ID, "round": ROUND, "schema": SCHEMA.to_json()}
    result = roles.bridge.region_result(config, False)
    for role in (roles.fit_broker, roles.final_broker, roles.client, roles.bridge):
        assert role.rejections.total == 0, dict(role.rejections.counts)
    assert model is not None and model.kind == "global"
    assert isinstance(result, RegionResult) and result.num_examples == 2880, result
    assert roles.published == []


def test_no_handler_raises_on_any_hostile_or_mutated_payload(
    roles: Roles, corpus: list[Case], caplog: pytest.LogCaptureFixture
) -> None:
    raised = []
    cases = [*hostile_classes(), *corpus]
    for case in cases:
        for handler, handle in roles.handlers(case):
            try:
                handle()
            except Exception as exc:
                raised.append(f"{handler} on {case.name!r}: {exc!r}")
    assert raised == []
    guarded = [
        f"{record.getMessage()}: {record.exc_info[1]!r}"
        for record in caplog.records
        if record.exc_info and record.exc_info[1] is not None
    ]
    assert roles.internal_errors() == {}, guarded[:10]
    assert roles.published == []  # no round closed: every case met the same open round
    assert roles.monitor.messages == len(cases)


def test_a_region_of_the_largest_metrics_still_publishes_a_partial_its_bridge_reads() -> None:
    region_round = RegionRound(
        run_id=RUN_ID,
        round=ROUND,
        phase="fit",
        schema=SCHEMA,
        deadline=math.inf,
        expected=3,
        participants=None,
        uniform=False,
        edge_rounds=1,
        config={},
        model=WeightedModelMean(SCHEMA),
    )
    largest = {"train_loss": MAX_METRIC, "eval_loss": -MAX_METRIC, "eval_examples": MAX_METRIC}
    for client in range(3):
        region_round.add(
            Envelope(
                kind="update",
                run_id=RUN_ID,
                round=ROUND,
                sender=f"north-0{client}",
                region=REGION,
                num_examples=MAX_CLIENT_EXAMPLES,
                tensors=valid_envelopes()["update"].tensors,
                metrics=largest,
            )
        )
    payload = encode(region_round.partial(REGION, {}))
    partial = decode(payload, kinds={"partial"}, max_bytes=MAX_BYTES, schema=SCHEMA)
    # The mean is exact; the summed count saturates at the largest value the wire carries.
    assert partial.metrics == largest


def test_metric_sums_never_overflow() -> None:
    mean = MetricsMean()
    for _ in range(3):
        mean.add({"train_loss": 1e306, "eval_loss": -1e306, "eval_examples": 1e306}, 1440)
    result = mean.result()
    assert all(math.isfinite(value) for value in result.values()), result
    assert result["train_loss"] == MAX_METRIC and result["eval_loss"] == -MAX_METRIC
