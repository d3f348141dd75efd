"""The Ed25519 keys that sign the trust history. They live in files beside the web and the
workers, never in the database: whoever can write the database can rewrite every hash, but cannot
sign without the private key.

- ``HITL_TRUST_KEY_FILE``: the current private key (PEM, made once, readable by its owner only).
- ``HITL_TRUST_PUBLIC_KEYS``: every public key that has signed events (PEM blocks, one per key),
  so events signed before a rotation still verify. Give it to auditors with an export.

Rotation (``manage.py hitl rotate-trust-key``): a new private key replaces the old one, and its
public key is appended to the keyring; the old private key is deleted. Copy both files to every
host that runs the web or a worker.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

PEM_PUBLIC_BEGIN = b"-----BEGIN PUBLIC KEY-----"


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private_key: Ed25519PrivateKey

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private_key.sign(message)).decode()


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_public_keys(pem_text: bytes) -> dict[str, Ed25519PublicKey]:
    """Every Ed25519 public key in a file of concatenated PEM blocks, by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for block in pem_text.split(PEM_PUBLIC_BEGIN)[1:]:
        key = serialization.load_pem_public_key(PEM_PUBLIC_BEGIN + block)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the keyring holds a key that is not Ed25519")
        keys[key_id_of(key)] = key
    return keys


def verify_signature(keys: dict[str, Ed25519PublicKey], key_id: str, signature: str, message: bytes) -> bool:
    key = keys.get(key_id)
    if key is None:
        return False
    try:
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    """Write the key whole with mode 0600, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _append_public(key: Ed25519PublicKey) -> None:
    path = Path(settings.HITL_TRUST_PUBLIC_KEYS)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_bytes() if path.exists() else b""
    if key_id_of(key) in parse_public_keys(existing):
        return
    with open(path, "ab") as handle:
        handle.write(public_pem(key))
        handle.flush()
        os.fsync(handle.fileno())


def signing_key() -> SigningKey:
    """The current private key; made on first use (and its public key put in the keyring)."""
    path = Path(settings.HITL_TRUST_KEY_FILE)
    if not path.exists():
        _write_private(path, Ed25519PrivateKey.generate())
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    _append_public(key.public_key())
    return SigningKey(key_id_of(key.public_key()), key)


def public_keys() -> dict[str, Ed25519PublicKey]:
    path = Path(settings.HITL_TRUST_PUBLIC_KEYS)
    return parse_public_keys(path.read_bytes()) if path.exists() else {}


def rotate_signing_key() -> tuple[str, str]:
    """Replace the private key with a new one; returns (old key id, new key id)."""
    old = signing_key()
    new = Ed25519PrivateKey.generate()
    _append_public(new.public_key())  # the keyring knows it before anything is signed with it
    _write_private(Path(settings.HITL_TRUST_KEY_FILE), new)
    return old.key_id, key_id_of(new.public_key())
