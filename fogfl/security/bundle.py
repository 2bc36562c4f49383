"""A federation's credentials on disk: what `fogfl certs DIR` and `fogfl up` write and
what every role reads.

    DIR/ca.crt, ca.key            the federation's CA (ca.key only here: it issues more)
    DIR/trust.json                every signing identity's Ed25519 public key
    DIR/broker/                   passwd, acl, ca.crt, broker.crt, broker.key (Mosquitto)
    DIR/<identity>/               one directory per identity, all a role needs:
        identity.json             name, role, region, client id
        password                  its MQTT password
        ca.crt, tls.crt, tls.key  its client certificate (and the CA to check servers by)
        signing.key               its Ed25519 key (server, fog brokers, bridges)
        flower.crt, flower.key    the Flower server's certificate (server only)
        trust.json                a copy of DIR/trust.json

A role is given either DIR (and finds its own directory by its identity's name) or its own
directory alone (a container that mounts nothing else). Secret files are mode 0600.
Provisioning again adds the identities that are missing and keeps every existing key,
password and certificate; the broker's password and ACL files are rewritten from all.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogfl.errors import ConfigError
from fogfl.mqtt import Topics
from fogfl.security.certs import DEFAULT_HOSTS, CertificateAuthority
from fogfl.security.identities import Identity, acl_rules
from fogfl.security.mosquitto_files import acl_file, password_file
from fogfl.security.signing import Signer, TrustPolicy, public_key_from_text, public_key_text

IDENTITY_FILE = "identity.json"
TRUST_FILE = "trust.json"
BROKER_DIR = "broker"
PASSWORD_BYTES = 24
_ROLES = ("server", "monitor", "fog-broker", "fog-bridge", "client")


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600 if secret else 0o644)


def provision(
    directory: Path, identities: Sequence[Identity], topics: Topics, hosts: Iterable[str] = ()
) -> list[Identity]:
    """Write (or complete) the credentials of `identities` in `directory`; returns the
    identities that were new. `hosts` are the names and addresses the broker and the
    Flower server are reached by, besides localhost. Nothing is left half-written: each
    new directory is built aside and moved into place."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    all_hosts = [*DEFAULT_HOSTS, *hosts]
    if (directory / "ca.crt").exists():
        ca = CertificateAuthority.load(
            (directory / "ca.crt").read_bytes(), (directory / "ca.key").read_bytes()
        )
    else:
        ca = CertificateAuthority.create()
        _write(directory / "ca.key", ca.key_pem, secret=True)
        _write(directory / "ca.crt", ca.cert_pem)
    new = [identity for identity in identities if not (directory / identity.name).is_dir()]
    for identity in new:
        _provision_identity(directory, identity, ca, all_hosts)
    everyone = [read_identity(path) for path in sorted(directory.glob(f"*/{IDENTITY_FILE}"))]
    trust = {
        identity.name: public_key_text(_load_signing_key(directory / identity.name).public_key())
        for identity in everyone
        if identity.signs
    }
    trust_text = json.dumps({"version": 1, "keys": trust}, indent=2).encode()
    _write(directory / TRUST_FILE, trust_text)
    for identity in everyone:
        _write(directory / identity.name / TRUST_FILE, trust_text)
    _write_broker(directory, everyone, topics, ca, all_hosts)
    return new


def _provision_identity(
    directory: Path, identity: Identity, ca: CertificateAuthority, hosts: list[str]
) -> None:
    aside = Path(tempfile.mkdtemp(prefix=f".{identity.name}.", dir=directory))
    try:
        record = {
            "name": identity.name,
            "role": identity.role,
            "region": identity.region,
            "client_id": identity.client_id,
        }
        _write(aside / IDENTITY_FILE, json.dumps(record, indent=2).encode())
        _write(aside / "password", secrets.token_urlsafe(PASSWORD_BYTES).encode(), secret=True)
        _write(aside / "ca.crt", ca.cert_pem)
        client = ca.issue_client(identity.name)
        _write(aside / "tls.crt", client.cert_pem)
        _write(aside / "tls.key", client.key_pem, secret=True)
        if identity.signs:
            key = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write(aside / "signing.key", key, secret=True)
        if identity.role == "server":
            flower = ca.issue_server("fogfl server", [*hosts, "server"])
            _write(aside / "flower.crt", flower.cert_pem)
            _write(aside / "flower.key", flower.key_pem, secret=True)
        os.chmod(aside, 0o700)
        aside.rename(directory / identity.name)
    except BaseException:
        shutil.rmtree(aside, ignore_errors=True)
        raise


def _write_broker(
    directory: Path,
    identities: list[Identity],
    topics: Topics,
    ca: CertificateAuthority,
    hosts: list[str],
) -> None:
    broker = directory / BROKER_DIR
    broker.mkdir(exist_ok=True)
    os.chmod(broker, 0o700)
    passwords = {
        identity.name: (directory / identity.name / "password").read_text().strip()
        for identity in identities
    }
    _write(broker / "passwd.new", password_file(passwords).encode(), secret=True)
    os.replace(broker / "passwd.new", broker / "passwd")
    rules = {identity.name: acl_rules(identity, topics) for identity in identities}
    header = (
        "Generated by fogfl certs: each identity may use exactly these topics.\n"
        "Mosquitto denies everything else (under MQTT 5 a refused publish says so)."
    )
    _write(broker / "acl.new", acl_file(rules, header).encode())
    os.replace(broker / "acl.new", broker / "acl")
    _write(broker / "ca.crt", ca.cert_pem)
    if not (broker / "broker.crt").exists():
        issued = ca.issue_server("fogfl broker", [*hosts, "mosquitto"])
        _write(broker / "broker.key", issued.key_pem, secret=True)
        _write(broker / "broker.crt", issued.cert_pem)


def read_identity(path: Path) -> Identity:
    """The identity an identity.json file describes; ConfigError if it is malformed."""
    try:
        record = json.loads(path.read_text())
        identity = Identity(
            str(record["name"]),
            record["role"],
            str(record.get("region", "")),
            str(record.get("client_id", "")),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a fogfl identity file: {exc}") from None
    if identity.role not in _ROLES:
        raise ConfigError(f"{path}: unknown role {identity.role!r}")
    return identity


def _load_signing_key(directory: Path) -> Ed25519PrivateKey:
    path = directory / "signing.key"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class Credentials:
    """One identity's credentials, read from its directory."""

    identity: Identity
    directory: Path

    @property
    def password(self) -> str:
        return self._read("password").strip()

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def cert_file(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.directory / "tls.key"

    def signer(self) -> Signer:
        return Signer(self.identity.name, _load_signing_key(self.directory))

    def trust(self) -> TrustPolicy:
        path = self.directory / TRUST_FILE
        try:
            record = json.loads(path.read_text())
            keys = {str(name): public_key_from_text(text) for name, text in record["keys"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cannot read the trusted keys {path}: {exc}") from None
        return TrustPolicy(keys)

    def flower_certificates(self) -> tuple[bytes, bytes, bytes]:
        """(CA, server certificate, server key) for Flower's TLS server."""
        return (
            self._read_bytes("ca.crt"),
            self._read_bytes("flower.crt"),
            self._read_bytes("flower.key"),
        )

    def ca_bytes(self) -> bytes:
        return self._read_bytes("ca.crt")

    def _read(self, name: str) -> str:
        return self._read_bytes(name).decode()

    def _read_bytes(self, name: str) -> bytes:
        path = self.directory / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{self.identity.name}'s credentials lack {path} ({exc.strerror}); "
                "provision them again with `fogfl certs`"
            ) from None


def own_identity(path: Path | None) -> Identity | None:
    """The identity whose own directory `path` is, or None (a whole bundle, or no path)."""
    if path is None or not (path / IDENTITY_FILE).is_file():
        return None
    return read_identity(path / IDENTITY_FILE)


def load_credentials(path: Path, name: str | None) -> Credentials:
    """The credentials of identity `name` from a credentials directory `path` (from
    `fogfl certs`), or from `path` itself when it is one identity's own directory."""
    if (path / IDENTITY_FILE).is_file():
        identity = read_identity(path / IDENTITY_FILE)
        if name is not None and identity.name != name:
            raise ConfigError(
                f"the credentials in {path} are {identity.name}'s; this role is {name}"
            )
        return Credentials(identity, path)
    if name is None:
        raise ConfigError(f"{path} holds no {IDENTITY_FILE}: say which identity to use")
    own = path / name / IDENTITY_FILE
    if not own.is_file():
        what = "does not exist" if not path.exists() else f"has no credentials for {name}"
        raise ConfigError(
            f"security.credentials {path} {what}; provision them with `fogfl certs {path} "
            "--config FILE` (or run open with --insecure)"
        )
    return Credentials(read_identity(own), path / name)
