"""An independent implementation of docs/wallet-format.md, written from the spec text with raw
``cryptography`` and ``cbor2`` calls and no import from ``agent``. The test vectors must agree with
both this and the product code, so a change to either that drifts from the spec is caught.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DOMAIN = b"kms-agent/v1/"


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=DOMAIN + info).derive(ikm)


def cbor(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def signing_key(dek: bytes, vault_id: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hkdf(dek, vault_id, b"header-signing"))


def signing_public(dek: bytes, vault_id: bytes) -> bytes:
    return (
        signing_key(dek, vault_id).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def wrap_slot(
    share: bytes,
    ikm: bytes,
    kind: str,
    kdf_salt: bytes,
    vault_id: bytes,
    slot_id: bytes,
    operator_id: bytes,
    nonce: bytes,
) -> bytes:
    kek = hkdf(ikm, kdf_salt, b"slot/" + kind.encode() + b"\0" + vault_id + slot_id)
    aad = DOMAIN + b"slot\0" + kind.encode() + b"\0" + vault_id + slot_id + operator_id
    return AESGCM(kek).encrypt(nonce, share, aad)


def wrap_recovery(dek: bytes, secret: bytes, vault_id: bytes, nonce: bytes) -> bytes:
    kek = hkdf(secret, vault_id, b"recovery")
    return AESGCM(kek).encrypt(nonce, dek, DOMAIN + b"recovery\0" + vault_id)


def seal_entry(dek: bytes, vault_id: bytes, signature_id: str, wallet_type: str, secret: bytes, nonce: bytes) -> bytes:
    key = hkdf(dek, vault_id, b"entry")
    aad = DOMAIN + b"entry\0" + vault_id + signature_id.encode()
    return nonce + AESGCM(key).encrypt(nonce, wallet_type.encode() + b"\0" + secret, aad)


def build_file(dek: bytes, header: dict[str, Any], body: dict[str, Any]) -> bytes:
    vault_id = header["vault_id"]
    header_bytes = cbor(header)
    prefix = b"KMSVAULT" + struct.pack(">HI", 1, len(header_bytes)) + header_bytes
    ciphertext = AESGCM(hkdf(dek, vault_id, b"body")).encrypt(header["body_nonce"], cbor(body), prefix)
    mac = hmac.new(hkdf(dek, vault_id, b"header-mac"), prefix, hashlib.sha256).digest()
    sig = signing_key(dek, vault_id).sign(prefix + mac + hashlib.sha256(ciphertext).digest())
    return prefix + mac + sig + ciphertext


def fingerprint(public: bytes) -> str:
    digest = hashlib.sha256(DOMAIN + b"vault-signing-key\0" + public).hexdigest()[:40]
    return ":".join(digest[i : i + 4] for i in range(0, 40, 4))
