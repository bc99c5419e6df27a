"""Sealing and opening wallet.dat v1: the cryptographic layer over :mod:`agent.vault.format`.

Keys, all HKDF-SHA256 from the data key (DEK) with the vault id as salt (docs/wallet-format.md §4):

* ``header-mac``      HMAC-SHA256 over the prefix (magic..header): the header cannot change without the DEK
* ``header-signing``  Ed25519 seed; the signature covers prefix || MAC || SHA-256(body), so anyone holding
                      only the pinned public key can check every byte of the file with no token
* ``body``            AES-256-GCM over the body map, the prefix as associated data
* ``entry``           AES-256-GCM per wallet secret inside the body, so signing decrypts one entry only
"""

from __future__ import annotations

from typing import Any

from agent.errors import VaultIntegrityError
from agent.vault import format as fmt
from agent.vault import primitives as p
from agent.vault.records import VaultHeader
from agent.vault.schema import check_body


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


def seal_file(header: VaultHeader, body: dict[str, Any], keys: VaultKeys) -> bytes:
    """Serialise a complete file. ``header.body_nonce`` must be fresh for every call."""
    return seal_file_with_mac(header, body, keys)[0]


def seal_file_with_mac(header: VaultHeader, body: dict[str, Any], keys: VaultKeys) -> tuple[bytes, bytes]:
    """As :func:`seal_file`, also returning the header MAC (which the agent pins)."""
    header_bytes = fmt.encode_canonical(header.to_cbor_map())
    prefix = fmt.PREFIX.pack(fmt.MAGIC, fmt.VERSION, len(header_bytes)) + header_bytes
    plaintext = bytearray(fmt.encode_canonical(body))
    try:
        ciphertext = p.seal(keys.body_key, header.body_nonce, plaintext, prefix)
    finally:
        p.wipe(plaintext)
    header_mac = p.mac(keys.mac_key, prefix)
    header_sig = keys.signer.sign(signed_bytes(prefix, header_mac, ciphertext))
    return fmt.serialise(header_bytes, header_mac, header_sig, ciphertext), header_mac


def check_file_signature(vf: fmt.VaultFile) -> None:
    """Token-free check of every byte against the header's own signing key (pin it separately)."""
    p.check_signature(vf.header.signing_key, vf.header_sig, signed_bytes(vf.prefix, vf.header_mac, vf.body))


def open_body(vf: fmt.VaultFile, keys: VaultKeys) -> dict[str, Any]:
    """With the DEK: check the header MAC and signing key, then decrypt the body map."""
    p.check_mac(keys.mac_key, vf.prefix, vf.header_mac)
    if keys.signing_public != vf.header.signing_key:
        raise VaultIntegrityError()
    plaintext = p.open_sealed(keys.body_key, vf.header.body_nonce, vf.body, vf.prefix)
    try:
        body = fmt.decode_canonical(bytes(plaintext), "body")
    finally:
        p.wipe(plaintext)
    check_body(body)
    return dict(body)


def _entry_aad(vault_id: bytes, signature_id: str) -> bytes:
    return p.DOMAIN + b"entry\0" + vault_id + signature_id.encode()


def seal_entry(keys: VaultKeys, signature_id: str, plaintext: bytearray, nonce: bytes | None = None) -> bytes:
    """``nonce`` is injectable only for test vectors; production always draws a fresh one."""
    nonce = nonce or p.random_bytes(p.NONCE_LEN)
    return nonce + p.seal(keys.entry_key, nonce, plaintext, _entry_aad(keys.vault_id, signature_id))


def open_entry(keys: VaultKeys, signature_id: str, blob: bytes) -> bytearray:
    aad = _entry_aad(keys.vault_id, signature_id)
    return p.open_sealed(keys.entry_key, blob[: p.NONCE_LEN], blob[p.NONCE_LEN :], aad)
