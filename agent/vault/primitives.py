"""The few cryptographic operations the vault uses, all from ``cryptography``.

.. warning:: hazmat-style helpers. Every failure of an integrity check raises the one opaque
   :class:`~agent.errors.VaultIntegrityError`: callers must not learn *which* check failed.

Why these choices: HKDF-SHA256 because every key-material input (token hmac-secret output, PIV ECDH
secret, the data key, the recovery secret) is already high-entropy, so a password KDF would add
nothing (systemd drops its PBKDF to the minimum for FIDO2 slots for the same reason). AES-256-GCM
with a fresh random 96-bit nonce per encryption: each key here encrypts only a handful of messages
in its lifetime, far below GCM's random-nonce bound. Ed25519 for the header signature because the
public key is small enough to print and pin.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import VaultIntegrityError

NONCE_LEN = 12
KEY_LEN = 32
DOMAIN = b"kms-agent/v1/"


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def hkdf(ikm: bytes | bytearray, *, salt: bytes, info: bytes, length: int = KEY_LEN) -> bytearray:
    """Derive a sub-key; returned as a bytearray so the caller can wipe it."""
    return bytearray(HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=DOMAIN + info).derive(ikm))


def seal(key: bytes | bytearray, nonce: bytes, plaintext: bytes | bytearray, aad: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes | bytearray, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytearray:
    """Decrypt straight into a bytearray, so the plaintext never exists as an unwipeable bytes."""
    if len(ciphertext) < 16:
        raise VaultIntegrityError()
    out = bytearray(len(ciphertext) - 16)
    try:
        AESGCM(key).decrypt_into(nonce, ciphertext, aad, out)
    except (InvalidTag, ValueError):
        wipe(out)
        raise VaultIntegrityError() from None
    return out


def mac(key: bytes | bytearray, data: bytes) -> bytes:
    return hmac.new(bytes(key), data, hashlib.sha256).digest()


def check_mac(key: bytes | bytearray, data: bytes, tag: bytes) -> None:
    if not hmac.compare_digest(mac(key, data), tag):
        raise VaultIntegrityError()


def signing_key(seed: bytes | bytearray) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(seed))


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def check_signature(public_key: bytes, signature: bytes, data: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        raise VaultIntegrityError() from None


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def fingerprint(public_key: bytes) -> str:
    """The short form operators compare and pin: 20 bytes of SHA-256, hex in groups of four."""
    digest = hashlib.sha256(DOMAIN + b"vault-signing-key\0" + public_key).hexdigest()[:40]
    return ":".join(digest[i : i + 4] for i in range(0, 40, 4))


def wipe(*buffers: bytearray | None) -> None:
    """Best-effort erase: Python may hold other copies, but ours at least do not linger."""
    for buf in buffers:
        if buf is not None:
            buf[:] = bytes(len(buf))
