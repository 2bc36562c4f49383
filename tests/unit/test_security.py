"""Signatures, credentials and access rules (fogfl/security), without a broker."""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from safetensors.numpy import save as safetensors_save

from fogfl.config import load_config
from fogfl.errors import ConfigError, WireError
from fogfl.flower import RegionResult
from fogfl.logs import role_logger
from fogfl.mqtt import Received, Topics
from fogfl.roles.fog_bridge import FogBridge
from fogfl.security.bundle import load_credentials, provision
from fogfl.security.identities import client_identity, federation_identities, fog_identity
from fogfl.security.mosquitto_files import read_acl_file, read_password_file, verify_password
from fogfl.security.role import role_security
from fogfl.security.signing import Signer, TrustPolicy
from fogfl.wire import Envelope, ModelSchema, decode, encode, read_metadata

TOPICS = Topics("fl")
SERVER_KEY = Ed25519PrivateKey.generate()
FOG_KEY = Ed25519PrivateKey.generate()
TRUST = TrustPolicy({"server": SERVER_KEY.public_key(), "fog-north": FOG_KEY.public_key()})


def global_model(**overrides: object) -> Envelope:
    fields: dict[str, object] = {
        "kind": "global",
        "run_id": "r1",
        "round": 3,
        "sender": "server",
        "tensors": {"w": np.arange(64, dtype=np.float32)},
        "config": {"local_epochs": 1},
    }
    fields.update(overrides)
    return Envelope(**fields)  # type: ignore[arg-type]


def accepted(payload: bytes, kind: str = "global") -> Envelope:
    return decode(payload, kinds={kind}, max_bytes=10**6, verify=TRUST)


def test_a_signed_model_verifies_and_reads_as_before() -> None:
    payload = encode(global_model(), signer=Signer("server", SERVER_KEY))
    model = accepted(payload)
    np.testing.assert_array_equal(model.tensors["w"], np.arange(64, dtype=np.float32))
    assert model.config == {"local_epochs": 1}


def test_any_changed_byte_breaks_the_signature() -> None:
    payload = encode(global_model(), signer=Signer("server", SERVER_KEY))
    header_end = 8 + int.from_bytes(payload[:8], "little")
    for at in [*range(8, header_end, 3), *range(header_end, len(payload))]:
        changed = bytearray(payload)
        changed[at] ^= 0x01
        with pytest.raises(WireError) as caught:
            accepted(bytes(changed))
        if at >= header_end:  # the tensors: only the signature can notice
            assert caught.value.reason == "bad-signature", at


@pytest.mark.parametrize(
    ("signer", "kind", "region", "why"),
    [
        (None, "global", "", "unsigned"),
        (Signer("server", Ed25519PrivateKey.generate()), "global", "", "does not verify"),
        (Signer("fog-north", FOG_KEY), "global", "", "only server may sign"),
        (Signer("server", SERVER_KEY), "partial", "north", "only fog-north may sign"),
        (Signer("fog-south", FOG_KEY), "partial", "south", "no public key for fog-south"),
    ],
)
def test_forgeries_are_bad_signatures(
    signer: Signer | None, kind: str, region: str, why: str
) -> None:
    message = global_model(kind=kind, region=region, sender="x")
    with pytest.raises(WireError, match=why) as caught:
        accepted(encode(message, signer=signer), kind)
    assert caught.value.reason == "bad-signature"


def test_a_signature_repeated_in_the_header_is_refused() -> None:
    """A valid signature copied into another field of the header makes the check ambiguous:
    refused, whichever copy a verifier would have taken."""
    payload = encode(global_model(), signer=Signer("server", SERVER_KEY))
    meta = read_metadata(payload)
    meta["echo"] = meta["signature"]
    copied = safetensors_save({"w": np.arange(64, dtype=np.float32)}, metadata=meta)
    with pytest.raises(WireError, match="exactly once"):
        accepted(copied)


def test_the_documented_check_verifies_without_fogfl() -> None:
    """docs/protocol.md "Signatures", followed step by step with hashlib and cryptography
    alone, as a client in another language would."""
    payload = encode(global_model(), signer=Signer("server", SERVER_KEY))
    header_length = int.from_bytes(payload[:8], "little")
    metadata = json.loads(payload[8 : 8 + header_length])["__metadata__"]
    signature = metadata["signature"].encode()
    assert metadata["signer"] == "server"
    at = payload.index(signature, 8, 8 + header_length)
    digest = hashlib.sha256(payload[:at] + b"0" * 128 + payload[at + 128 :]).digest()
    raw = SERVER_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    Ed25519PublicKey.from_public_bytes(raw).verify(
        bytes.fromhex(signature.decode()), b"fogfl-signature-v1\n" + digest
    )


def test_updates_travel_unsigned() -> None:
    update = global_model(kind="update", sender="north-01", region="north", num_examples=5)
    assert accepted(encode(update), "update").sender == "north-01"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    config = load_config(
        None,
        {"federation.regions": ["north"], "federation.clients": {"north": ["a", "b"]}},
        environ={},
    )
    provision(tmp_path / "creds", federation_identities(config), TOPICS, ["broker.example"])
    return tmp_path / "creds"


def test_provisioning_writes_every_identity_with_private_files(bundle: Path) -> None:
    names = sorted(p.name for p in bundle.iterdir() if (p / "identity.json").exists())
    assert names == ["bridge-north", "client-a", "client-b", "fog-north", "monitor", "server"]
    for secret in ("ca.key", "client-a/password", "client-a/tls.key", "server/signing.key"):
        assert stat.S_IMODE((bundle / secret).stat().st_mode) == 0o600, secret
    assert not (bundle / "client-a" / "signing.key").exists()  # clients sign nothing
    passwords = read_password_file((bundle / "broker" / "passwd").read_text())
    assert verify_password((bundle / "client-a" / "password").read_text(), passwords["client-a"])
    assert "password" not in (bundle / "broker" / "passwd").read_text()


def test_the_acl_gives_each_identity_its_own_topics_only(bundle: Path) -> None:
    rules = read_acl_file((bundle / "broker" / "acl").read_text())
    writes = {
        user: sorted(r.topic for r in rs if r.allows("write") and not r.topic.endswith("/chunk/+"))
        for user, rs in rules.items()
    }
    chunked = {
        user: sorted(r.topic for r in rs if r.topic.endswith("/chunk/+"))
        for user, rs in rules.items()
    }
    assert writes["client-a"] == ["fl/updates/north/a"]
    assert "fl/updates/north/a/chunk/+" in chunked["client-a"]  # its large updates' chunks
    assert writes["fog-north"] == ["fl/partial/north", "fl/region_model/north"]
    assert writes["bridge-north"] == writes["monitor"] == []
    assert "fl/global_model" in writes["server"]
    assert [user for user, topics in writes.items() if "fl/global_model" in topics] == ["server"]
    # A new run's server reads the chunks it clears (MqttSession.clear_retained), no message.
    reads = {user: sorted(r.topic for r in rs if r.allows("read")) for user, rs in rules.items()}
    assert reads["server"] == chunked["server"]
    assert "fl/partial/+/chunk/+" in reads["server"]


def test_provisioning_again_keeps_keys_and_adds_the_missing(bundle: Path) -> None:
    kept = (bundle / "server" / "signing.key").read_bytes()
    config = load_config(
        None,
        {"federation.regions": ["north"], "federation.clients": {"north": ["a", "b", "c"]}},
        environ={},
    )
    new = provision(bundle, federation_identities(config), TOPICS)
    assert [identity.name for identity in new] == ["client-c"]
    assert (bundle / "server" / "signing.key").read_bytes() == kept
    assert "client-c" in read_acl_file((bundle / "broker" / "acl").read_text())


def test_certificates_chain_to_the_ca_and_name_their_identity(bundle: Path) -> None:
    ca = x509.load_pem_x509_certificate((bundle / "ca.crt").read_bytes())
    client = x509.load_pem_x509_certificate((bundle / "client-a" / "tls.crt").read_bytes())
    client.verify_directly_issued_by(ca)
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "client-a"
    broker = x509.load_pem_x509_certificate((bundle / "broker" / "broker.crt").read_bytes())
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "broker.example" in names.get_values_for_type(x509.DNSName)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)


def test_a_role_finds_its_credentials_in_the_bundle_or_its_own_directory(bundle: Path) -> None:
    assert load_credentials(bundle, "client-a").identity == client_identity("a", "north")
    assert load_credentials(bundle / "client-a", "client-a").directory == bundle / "client-a"
    with pytest.raises(ConfigError, match="are client-a's; this role is fog-north"):
        load_credentials(bundle / "client-a", "fog-north")
    with pytest.raises(ConfigError, match="has no credentials for client-z"):
        load_credentials(bundle, "client-z")


def test_a_role_without_credentials_refuses_to_start(
    bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = role_logger("fog-broker", "north")
    with pytest.raises(ConfigError, match="--insecure"):
        role_security(load_config(None, environ={}), fog_identity("north"), log)
    secured = role_security(
        load_config(None, {"security.credentials": str(bundle)}, environ={}),
        fog_identity("north"),
        log,
    )
    assert secured.mqtt.username == "fog-north" and secured.mqtt.password
    assert secured.signer is not None and secured.signer.name == "fog-north"
    with caplog.at_level(logging.WARNING, logger="fogfl"):
        open_role = role_security(
            load_config(None, {"security.insecure": True}, environ={}), fog_identity("north"), log
        )
    assert open_role.open and open_role.signer is None and open_role.verify is None
    assert "running open" in caplog.text


def test_a_bridge_files_only_its_own_regions_partials(tmp_path: Path) -> None:
    """Genuine messages copied onto fl/partial/north by anyone who may write it (the
    server's login may, to clear it): south's partial, signed by fog-south, and north's
    region model, signed by fog-north. The bridge keeps north's partial only."""
    regions = {"north": ["a"], "south": ["b"]}
    config = load_config(
        None,
        {
            "federation.regions": list(regions),
            "federation.clients": regions,
            "security.credentials": str(tmp_path / "creds"),
        },
        environ={},
    )
    provision(tmp_path / "creds", federation_identities(config), TOPICS)
    bridge = FogBridge(config, "north")

    def signed(kind: str, region: str, num_examples: int) -> bytes:
        sender = f"fog-{region}"
        message = global_model(
            kind=kind, region=region, sender=sender, num_examples=num_examples, config={}
        )
        return encode(message, signer=load_credentials(tmp_path / "creds", sender).signer())

    for payload in (signed("partial", "south", 7), signed("region", "north", 8)):
        bridge._file(Received(TOPICS.partial("north"), payload, False))
    assert bridge.waiting == {}
    assert bridge.rejections.counts == {"wrong-region": 1, "wrong-kind": 1}
    bridge._file(Received(TOPICS.partial("north"), signed("partial", "north", 9), False))
    schema = ModelSchema.of(global_model().tensors).to_json()
    result = bridge.region_result({"run_id": "r1", "round": 3, "schema": schema}, False)
    assert isinstance(result, RegionResult) and result.num_examples == 9
