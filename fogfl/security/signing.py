"""Ed25519 signatures on fogfl payloads, checkable in any language.

A signed payload is an ordinary fogfl safetensors message whose metadata holds two more
strings: ``signer`` (the identity whose key signed it, e.g. ``server``) and ``signature``
(128 lowercase hex digits, 64 bytes). The signature covers the whole payload as it was
before the signature went in: take the payload, replace the one occurrence of the
signature's 128 hex digits in its header by 128 ASCII ``0``, and hash the result with
SHA-256; the signature is Ed25519 over ``b"fogfl-signature-v1\\n" + digest``. Hashing
first keeps a verifier's memory flat (the payload is hashed where it lies).

Who may sign what is the trust policy's business (`TrustPolicy`): global models and round
announcements only the server, a region's partial and region model only its fog broker.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fogfl.errors import WireError

DOMAIN = b"fogfl-signature-v1\n"
SIGNATURE_HEX = 128
PLACEHOLDER = "0" * SIGNATURE_HEX
_HEX = re.compile(r"[0-9a-f]{128}")
_HEADER_LENGTH_BYTES = 8


def _digest(payload: bytes | bytearray | memoryview, start: int, end: int) -> bytes:
    """SHA-256 of `payload` with bytes [start, end) read as the placeholder."""
    view = memoryview(payload)
    hasher = hashlib.sha256()
    hasher.update(view[:start])
    hasher.update(PLACEHOLDER.encode())
    hasher.update(view[end:])
    return hasher.digest()


def _header(payload: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Where the safetensors JSON header lies in `payload`: (start, end)."""
    if len(payload) < _HEADER_LENGTH_BYTES:
        raise WireError("bad-signature", "payload too short to hold a signed header")
    length = int.from_bytes(bytes(payload[:_HEADER_LENGTH_BYTES]), "little")
    end = _HEADER_LENGTH_BYTES + length
    if end > len(payload):
        raise WireError("bad-signature", "header runs past the payload")
    return _HEADER_LENGTH_BYTES, end


@dataclass(frozen=True)
class Signer:
    """An identity's signing key; `seal` signs a payload encoded with `PLACEHOLDER` as
    its signature."""

    name: str
    key: Ed25519PrivateKey
    placeholder: str = PLACEHOLDER

    def seal(self, payload: bytes) -> bytes:
        start, end = _header(payload)
        marker = f'"signature":"{PLACEHOLDER}"'.encode()
        at = payload.find(marker, start, end)
        if at < 0 or payload.find(marker, at + 1, end) >= 0:
            raise ValueError("the payload must carry exactly one signature placeholder")
        value_start = at + len(b'"signature":"')
        value_end = value_start + SIGNATURE_HEX
        signature = self.key.sign(DOMAIN + _digest(payload, value_start, value_end))
        return b"".join((payload[:value_start], signature.hex().encode(), payload[value_end:]))

    def sign_text(self, text: str) -> str:
        """A signature (base64) over a short statement, e.g. a bridge's region claim."""
        return base64.b64encode(self.key.sign(text.encode())).decode()


class TrustPolicy:
    """The public keys of a federation and who may sign which kind of message.
    Called by `fogfl.wire.decode` for every message of a signed kind."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.keys = dict(keys)

    @staticmethod
    def signer_for(kind: str, region: str) -> str | None:
        """The only identity whose signature a message of `kind` may carry, or None for
        kinds that travel unsigned (client updates: the broker's ACL authenticates them)."""
        if kind in ("global", "round"):
            return "server"
        if kind in ("partial", "region"):
            return f"fog-{region}"
        return None

    def __call__(self, payload: bytes | bytearray | memoryview, meta: Mapping[str, str]) -> None:
        """Raise WireError ``bad-signature`` unless `payload` carries a valid signature by
        the identity allowed to sign its kind."""
        kind, region = meta.get("kind", ""), meta.get("region", "")
        wanted = self.signer_for(kind, region)
        if wanted is None:
            return
        signer, signature = meta.get("signer"), meta.get("signature")
        if signer is None or signature is None:
            raise WireError("bad-signature", f"{kind} message is unsigned; {wanted} must sign it")
        if signer != wanted:
            raise WireError(
                "bad-signature", f"{kind} message signed by {signer!r}; only {wanted} may sign it"
            )
        key = self.keys.get(wanted)
        if key is None:
            raise WireError("bad-signature", f"no public key for {wanted} in this role's trust")
        if not _HEX.fullmatch(signature):
            raise WireError("bad-signature", "signature is not 128 lowercase hex digits")
        start, end = _header(payload)
        header = bytes(payload[start:end])
        at = header.find(signature.encode())
        if at < 0 or header.find(signature.encode(), at + 1) >= 0:
            raise WireError("bad-signature", "the signature must appear exactly once in the header")
        digest = _digest(payload, start + at, start + at + SIGNATURE_HEX)
        try:
            key.verify(bytes.fromhex(signature), DOMAIN + digest)
        except InvalidSignature:
            raise WireError(
                "bad-signature", f"{kind} message does not verify against {wanted}'s key"
            ) from None

    def verify_text(self, name: str, text: str, signature: str) -> bool:
        """Whether `signature` (base64) is `name`'s over `text`."""
        key = self.keys.get(name)
        if key is None:
            return False
        try:
            key.verify(base64.b64decode(signature, validate=True), text.encode())
        except (InvalidSignature, ValueError):
            return False
        return True


def public_key_text(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"not a base64 Ed25519 public key: {exc}") from None
