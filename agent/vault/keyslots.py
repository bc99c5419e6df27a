"""Keyslots: one operator's share of the data key, wrapped under one token's key material.

KEK = HKDF(ikm from the token, salt = the slot's kdf_salt, info = kind || vault id || slot id), and
the share is sealed with AES-256-GCM whose associated data names the vault, slot, operator and kind.
A slot copied into another vault, moved to another operator or relabelled as another kind no longer
opens (docs/wallet-format.md §5).
"""

from __future__ import annotations

from agent.vault import primitives as p
from agent.vault.records import RecoveryEntry, SlotEntry

RECOVERY_KIND = "slip39-recovery"
#: The key of KEK_R in the body's ``shares`` map (operator shares are keyed by hex operator id).
RECOVERY_KEK = "recovery"


def _kek(ikm: bytearray, kind: str, kdf_salt: bytes, vault_id: bytes, slot_id: bytes) -> bytearray:
    return p.hkdf(ikm, salt=kdf_salt, info=b"slot/" + kind.encode() + b"\0" + vault_id + slot_id)


def _aad(kind: str, vault_id: bytes, slot_id: bytes, operator_id: bytes) -> bytes:
    return p.DOMAIN + b"slot\0" + kind.encode() + b"\0" + vault_id + slot_id + operator_id


def wrap_share(
    share: bytes | bytearray,
    ikm: bytearray,
    *,
    kind: str,
    kdf_salt: bytes,
    vault_id: bytes,
    slot_id: bytes,
    operator_id: bytes,
    nonce: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Return (nonce, wrapped) for a new slot. ``nonce`` is injectable only for test vectors."""
    kek = _kek(ikm, kind, kdf_salt, vault_id, slot_id)
    try:
        nonce = nonce or p.random_bytes(p.NONCE_LEN)
        return nonce, p.seal(kek, nonce, share, _aad(kind, vault_id, slot_id, operator_id))
    finally:
        p.wipe(kek)


def unwrap_share(slot: SlotEntry, ikm: bytearray, vault_id: bytes) -> bytearray:
    kek = slot_kek(slot, ikm, vault_id)
    try:
        return unwrap_share_with_kek(slot, kek, vault_id)
    finally:
        p.wipe(kek)


def slot_kek(slot: SlotEntry, ikm: bytearray, vault_id: bytes) -> bytearray:
    """The slot's KEK. A data-key rotation keeps it (same slot id, salt, token), so it also opens the
    share wrapped for the slot by a later rotation; it is wiped with the opened vault."""
    return _kek(ikm, slot.kind, slot.kdf_salt, vault_id, slot.slot_id)


def unwrap_share_with_kek(slot: SlotEntry, kek: bytearray, vault_id: bytes) -> bytearray:
    return p.open_sealed(kek, slot.nonce, slot.wrapped, _aad(slot.kind, vault_id, slot.slot_id, slot.operator_id))


def recovery_kek(recovery_secret: bytearray, vault_id: bytes) -> bytearray:
    """KEK_R (§6): kept in the body so that a data-key rotation can re-wrap the new key for recovery."""
    return p.hkdf(recovery_secret, salt=vault_id, info=b"recovery")


def wrap_recovery_kek(dek: bytearray, kek: bytes | bytearray, vault_id: bytes) -> tuple[bytes, bytes]:
    """Return (nonce, wrapped) of ``dek`` under an already derived KEK_R."""
    nonce = p.random_bytes(p.NONCE_LEN)
    return nonce, p.seal(kek, nonce, dek, p.DOMAIN + b"recovery\0" + vault_id)


def wrap_recovery(
    dek: bytearray, recovery_secret: bytearray, vault_id: bytes, nonce: bytes | None = None
) -> tuple[bytes, bytes]:
    kek = recovery_kek(recovery_secret, vault_id)
    try:
        nonce = nonce or p.random_bytes(p.NONCE_LEN)
        return nonce, p.seal(kek, nonce, dek, p.DOMAIN + b"recovery\0" + vault_id)
    finally:
        p.wipe(kek)


def unwrap_recovery(recovery: RecoveryEntry, recovery_secret: bytearray, vault_id: bytes) -> bytearray:
    kek = p.hkdf(recovery_secret, salt=vault_id, info=b"recovery")
    try:
        return p.open_sealed(kek, recovery.nonce, recovery.wrapped, p.DOMAIN + b"recovery\0" + vault_id)
    finally:
        p.wipe(kek)
