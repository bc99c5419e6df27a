"""Sealing and opening wallet.dat: the cryptographic layer over :mod:`agent.vault.format`.

Keys, all HKDF-SHA256 from the data key (DEK) with the vault id as salt (docs/wallet-format.md §4):

* ``header-mac``      HMAC-SHA256 over the prefix (magic..header): the header cannot change without the DEK
* ``header-signing``  Ed25519 seed; the signature covers prefix || MAC || SHA-256(body). The header holds
                      the root hash of the wallet index (§10), so anyone holding only the pinned public key
                      can check every byte of the file with no token
* ``body``            AES-256-GCM over the body map (the operators' shares), the prefix as associated data
* ``entry``           AES-256-GCM per wallet secret, so signing decrypts one entry only. In v2 the
                      associated data is the vault id and the wallet's whole public row (§10.2); legacy v1
                      bound the vault id and signatureId only.
"""

from __future__ import annotations

from typing import Any

from agent.errors import VaultIntegrityError
from agent.vault import format as fmt
from agent.vault import primitives as p
from agent.vault.records import VaultHeader, WalletRow
from agent.vault.schema import BODY_V2, check_body


class VaultKeys:
    """The sub-keys of one DEK for one vault id. Holds secrets: call :meth:`wipe` when done."""

    def __init__(self, dek: bytearray, vault_id: bytes) -> None:
        self.vault_id = vault_id
        self.dek = dek
        self.mac_key = p.hkdf(dek, salt=vault_id, info=b"header-mac")
        self.body_key = p.hkdf(dek, salt=vault_id, info=b"body")
        self.entry_key = p.hkdf(dek, salt=vault_id, info=b"entry")
        seed = p.hkdf(dek, salt=vault_id, info=b"header-signing")
        self.signer = p.signing_key(seed)
        p.wipe(seed)
        self.signing_public = p.public_key_bytes(self.signer)

    def wipe(self) -> None:
        p.wipe(self.dek, self.mac_key, self.body_key, self.entry_key)


def signed_bytes(prefix: bytes, header_mac: bytes, body: bytes) -> bytes:
    return prefix + header_mac + p.sha256(body)


# --- version 2 ------------------------------------------------------------------------------------
def seal_head(header: VaultHeader, body: dict[str, Any], keys: VaultKeys) -> tuple[VaultHeader, bytes, bytes]:
    """Everything before the index: (the header as written, prefix..body bytes, header MAC).

    ``header.index`` must already name the index that follows; ``body_len`` is filled in here.
    ``header.body_nonce`` must be fresh for every call.
    """
    plaintext = bytearray(fmt.encode_canonical(body))
    try:
        header = header.with_index(header.index, body_len=len(plaintext) + fmt.GCM_TAG_LEN)
        prefix = fmt.prefix_v2(fmt.encode_canonical(header.to_cbor_map()))
        ciphertext = p.seal(keys.body_key, header.body_nonce, plaintext, prefix)
    finally:
        p.wipe(plaintext)
    header_mac = p.mac(keys.mac_key, prefix)
    header_sig = keys.signer.sign(signed_bytes(prefix, header_mac, ciphertext))
    return header, prefix + header_mac + header_sig + ciphertext, header_mac


def check_file_signature(vf: fmt.VaultFile | fmt.V1File) -> None:
    """Token-free check of the header and body against the header's own signing key (pin it separately).

    For v1 this covers every byte; for v2 the index is covered through its root hash, checked node by
    node as it is read (:mod:`agent.vault.index`).
    """
    p.check_signature(vf.header.signing_key, vf.header_sig, signed_bytes(vf.prefix, vf.header_mac, vf.body))


def open_body(vf: fmt.VaultFile | fmt.V1File, keys: VaultKeys) -> dict[str, Any]:
    """With the DEK: check the header MAC and signing key, then decrypt the body map."""
    p.check_mac(keys.mac_key, vf.prefix, vf.header_mac)
    if keys.signing_public != vf.header.signing_key:
        raise VaultIntegrityError()
    plaintext = p.open_sealed(keys.body_key, vf.header.body_nonce, vf.body, vf.prefix)
    try:
        body = fmt.decode_canonical(bytes(plaintext), "body")
    finally:
        p.wipe(plaintext)
    if isinstance(vf, fmt.V1File):
        check_body(body)
    else:
        check_body(body, BODY_V2)
    return dict(body)


def _wallet_entry_aad(vault_id: bytes, row: WalletRow) -> bytes:
    return p.DOMAIN + b"wallet-entry\0" + vault_id + fmt.encode_canonical(row.to_cbor_row())


def seal_wallet_entry(keys: VaultKeys, row: WalletRow, plaintext: bytearray, nonce: bytes | None = None) -> bytes:
    """``nonce || AES-256-GCM(K_entry, nonce, plaintext, aad = vault id || public row)`` (§10.2).

    ``nonce`` is injectable only for test vectors; production always draws a fresh one.
    """
    nonce = nonce or p.random_bytes(p.NONCE_LEN)
    return nonce + p.seal(keys.entry_key, nonce, plaintext, _wallet_entry_aad(keys.vault_id, row))


def open_wallet_entry(keys: VaultKeys, row: WalletRow, blob: bytes) -> bytearray:
    aad = _wallet_entry_aad(keys.vault_id, row)
    return p.open_sealed(keys.entry_key, blob[: p.NONCE_LEN], blob[p.NONCE_LEN :], aad)


# --- legacy version 1 (read only) -----------------------------------------------------------------
def _entry_aad(vault_id: bytes, signature_id: str) -> bytes:
    return p.DOMAIN + b"entry\0" + vault_id + signature_id.encode()


def seal_entry(keys: VaultKeys, signature_id: str, plaintext: bytearray, nonce: bytes | None = None) -> bytes:
    """A v1 entry (tests build legacy vaults with it; the agent writes only v2 entries)."""
    nonce = nonce or p.random_bytes(p.NONCE_LEN)
    return nonce + p.seal(keys.entry_key, nonce, plaintext, _entry_aad(keys.vault_id, signature_id))


def open_entry(keys: VaultKeys, signature_id: str, blob: bytes) -> bytearray:
    aad = _entry_aad(keys.vault_id, signature_id)
    return p.open_sealed(keys.entry_key, blob[: p.NONCE_LEN], blob[p.NONCE_LEN :], aad)
