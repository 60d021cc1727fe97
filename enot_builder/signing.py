"""The server's signing key, and DSSE envelopes signed with it (issue 12).

One Ed25519 key signs every provenance statement. It is made on first start under the
data directory (signing/ed25519.pem, mode 0600), or read from a configured file. A
key rotation: configure the new key file and list the old public keys as previous
ones; GET /keys serves them all, each marked with its key id, so statements signed
before the rotation still verify.

The envelope is DSSE (github.com/secure-systems-lab/dsse, envelope.md): the signature
covers PAE(payloadType, payload), never the JSON around it, so re-encoding the envelope
cannot change what was signed. The crypto is the `cryptography` library's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

KEY_FILE = Path("signing") / "ed25519.pem"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----\r?\n.*?-----END PUBLIC KEY-----",
                       re.DOTALL)


class SigningError(Exception):
    """The key cannot be read or made; the message names the file."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's Pre-Authentication Encoding:
    "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, LEN in ASCII decimal bytes."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(public: Ed25519PublicKey) -> str:
    """A key's name in envelopes and in GET /keys: the SHA-256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    # Public keys of earlier signing keys (rotation): served, never used to sign.
    previous: tuple[Ed25519PublicKey, ...] = ()

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    def sign(self, payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> dict[str, Any]:
        """A DSSE envelope of `payload`, signed with this key."""
        signature = self.private.sign(pae(payload_type, payload))
        return {"payloadType": payload_type,
                "payload": base64.b64encode(payload).decode(),
                "signatures": [{"keyid": self.key_id,
                                "sig": base64.b64encode(signature).decode()}]}

    def public_keys_pem(self) -> str:
        """GET /keys: every public key, the current first, each under a line naming its
        key id (text outside the PEM markers, which PEM readers skip)."""
        parts = [f"# key id {self.key_id} (current)\n"
                 + public_pem(self.private.public_key()).decode()]
        for old in self.previous:
            parts.append(f"# key id {key_id(old)} (previous)\n" + public_pem(old).decode())
        return "".join(parts)


def load(data_dir: Path, key_file: str = "", previous_files: list[str] | None = None) -> SigningKey:
    """The server's key: `key_file` when configured (it must exist), else the one under
    `data_dir`, made on the first start."""
    if key_file:
        private = _read_private(Path(key_file))
    else:
        path = data_dir / KEY_FILE
        if not path.exists():
            _create(path)
        private = _read_private(path)
    previous: list[Ed25519PublicKey] = []
    for name in previous_files or []:
        try:
            previous.extend(read_public_keys(Path(name).read_bytes()))
        except (OSError, ValueError) as e:
            raise SigningError(f"previous signing key {name}: {e}") from None
    return SigningKey(private, tuple(previous))


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    # O_EXCL: two servers starting on one data directory keep whichever key came first.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())


def _read_private(path: Path) -> Ed25519PrivateKey:
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode & 0o777
    except OSError as e:
        raise SigningError(f"signing key {path}: {e.strerror}") from None
    if mode & 0o077:
        # Like ssh: a key others can read is not this server's secret any more.
        raise SigningError(f"signing key {path} is readable by others (mode {mode:04o}); "
                           "chmod 600 it")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as e:
        raise SigningError(f"signing key {path} is not a PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"signing key {path} is not an Ed25519 key")
    return key


def read_public_keys(pem_text: bytes) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key of a PEM text such as GET /keys serves."""
    keys = []
    for block in PEM_BLOCK.findall(pem_text):
        key = serialization.load_pem_public_key(block)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("a key is not an Ed25519 public key")
        keys.append(key)
    if not keys:
        raise ValueError("no PEM public key in it")
    return keys


def open_envelope(envelope: dict[str, Any], keys: list[Ed25519PublicKey]) -> tuple[bytes, str]:
    """The payload of a DSSE envelope and the id of the key whose signature holds;
    ValueError when none does or the envelope is malformed."""
    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = envelope["signatures"]
        if not isinstance(payload_type, str) or not isinstance(signatures, list):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise ValueError("not a DSSE envelope (payloadType, payload, signatures)") from None
    message = pae(payload_type, payload)
    for signature in signatures:
        try:
            sig = base64.b64decode(signature["sig"], validate=True)
        except (KeyError, TypeError, ValueError):
            continue
        for key in keys:
            try:
                key.verify(sig, message)
            except InvalidSignature:
                continue
            return payload, key_id(key)
    raise ValueError("no signature of the envelope verifies with the given keys")


def canonical_json(value: Any) -> bytes:
    """The bytes a statement is signed as: stable keys order, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
