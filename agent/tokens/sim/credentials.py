"""Non-resident credentials of the simulated token, sealed into their own credential ids.

Like most hardware authenticators, the simulator stores nothing per credential: the credential id
*is* the credential, AES-256-GCM-sealed under the device master key with the RP ID hash as
associated data. A credential id from another token, another RP or a reset token fails to open,
which is exactly "not mine" (``NO_CREDENTIALS``). A reset draws a new master key, so every old
credential dies with it.

Layout: ``0x01 | nonce (12) | AESGCM(d (32) | CredRandomWithUV (32) | CredRandomWithoutUV (32) |
credProtect (1) | hmac-secret (1))`` = 127 bytes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
CRED_ID_LENGTH = 1 + 12 + 98 + 16
_AAD = b"kms-agent/sim/fido2-credential/v1\0"


@dataclass(frozen=True)
class SimCredential:
    """One ES256 credential with its hmac-secret CredRandoms and credProtect level."""

    private_key: ec.EllipticCurvePrivateKey
    cred_random_with_uv: bytes
    cred_random_without_uv: bytes
    cred_protect: int
    hmac_secret: bool

    @classmethod
    def generate(cls, *, cred_protect: int, hmac_secret: bool) -> SimCredential:
        return cls(
            ec.generate_private_key(ec.SECP256R1()),
            secrets.token_bytes(32),
            secrets.token_bytes(32),
            cred_protect,
            hmac_secret,
        )


def seal(master_key: bytes, rp_id_hash: bytes, cred: SimCredential) -> bytes:
    """The credential id carrying ``cred`` for the RP whose SHA-256 is ``rp_id_hash``."""
    scalar = cred.private_key.private_numbers().private_value.to_bytes(32, "big")
    payload = (
        scalar
        + cred.cred_random_with_uv
        + cred.cred_random_without_uv
        + bytes([cred.cred_protect, int(cred.hmac_secret)])
    )
    nonce = secrets.token_bytes(12)
    header = bytes([VERSION])
    return header + nonce + AESGCM(master_key).encrypt(nonce, payload, _AAD + header + rp_id_hash)


def open_credential(master_key: bytes, rp_id_hash: bytes, cred_id: bytes) -> SimCredential | None:
    """The credential in ``cred_id`` if this token made it for this RP, else None."""
    if len(cred_id) != CRED_ID_LENGTH or cred_id[0] != VERSION:
        return None
    header, nonce, sealed = cred_id[:1], cred_id[1:13], cred_id[13:]
    try:
        payload = AESGCM(master_key).decrypt(nonce, sealed, _AAD + header + rp_id_hash)
    except InvalidTag:
        return None
    key = ec.derive_private_key(int.from_bytes(payload[:32], "big"), ec.SECP256R1())
    return SimCredential(key, payload[32:64], payload[64:96], payload[96], bool(payload[97]))
