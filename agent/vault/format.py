"""wallet.dat v1 framing: parse and serialise only. No crypto, no I/O (docs/wallet-format.md).

::

    MAGIC "KMSVAULT" | u16 version = 1 | u32 header_len | header (canonical CBOR)
    | header_mac [32] | header_sig [64] | body (AES-256-GCM ciphertext with tag)

Parsing is strict so that one file has exactly one meaning: the header must be canonical CBOR
(it is re-encoded and compared), every field must have its exact type and length, unknown header
keys are refused. Structural errors quote what is wrong; cryptographic checks live in
:mod:`agent.vault.sealed` and fail opaquely.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cbor2

from agent.errors import VaultFormatError
from agent.vault.records import VaultHeader

MAGIC = b"KMSVAULT"
VERSION = 1
PREFIX = struct.Struct(">8sHI")
MAC_LEN = 32
SIG_LEN = 64
GCM_TAG_LEN = 16
MAX_HEADER_LEN = 1 << 30


@dataclass(frozen=True)
class VaultFile:
    """The four parts of a wallet.dat, with the header already decoded and checked."""

    header: VaultHeader
    header_bytes: bytes
    header_mac: bytes
    header_sig: bytes
    body: bytes

    @property
    def prefix(self) -> bytes:
        """Bytes covered by the header MAC and bound into the body AEAD."""
        return PREFIX.pack(MAGIC, VERSION, len(self.header_bytes)) + self.header_bytes


def encode_canonical(value: Any) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2.1: shortest forms, sorted map keys)."""
    return bytes(cbor2.dumps(value, canonical=True))


def decode_canonical(data: bytes, what: str) -> Any:
    try:
        value = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several unrelated types for garbage
        raise VaultFormatError(f"{what} is not valid CBOR ({type(exc).__name__})") from None
    if encode_canonical(value) != data:
        raise VaultFormatError(f"{what} is not in canonical CBOR form")
    return value


def serialise(header_bytes: bytes, header_mac: bytes, header_sig: bytes, body: bytes) -> bytes:
    if len(header_mac) != MAC_LEN or len(header_sig) != SIG_LEN:
        raise ValueError("bad MAC or signature length")
    return PREFIX.pack(MAGIC, VERSION, len(header_bytes)) + header_bytes + header_mac + header_sig + body


def split(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Cut a file into (header_bytes, mac, sig, body) without decoding anything."""
    if len(data) < PREFIX.size:
        raise VaultFormatError(f"file is truncated ({len(data)} bytes): not a kms-agent wallet.dat")
    magic, version, header_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise VaultFormatError("not a kms-agent wallet.dat (bad magic bytes)")
    if version != VERSION:
        raise VaultFormatError(f"unsupported wallet.dat version {version} (this agent reads version {VERSION})")
    start = PREFIX.size
    end = start + header_len
    if header_len > MAX_HEADER_LEN or end + MAC_LEN + SIG_LEN + GCM_TAG_LEN > len(data):
        raise VaultFormatError("file is truncated or its header length is corrupt")
    return (
        data[start:end],
        data[end : end + MAC_LEN],
        data[end + MAC_LEN : end + MAC_LEN + SIG_LEN],
        data[end + MAC_LEN + SIG_LEN :],
    )


def parse(data: bytes) -> VaultFile:
    header_bytes, header_mac, header_sig, body = split(data)
    header = VaultHeader.from_cbor_map(decode_canonical(header_bytes, "header"))
    return VaultFile(header, header_bytes, header_mac, header_sig, body)
