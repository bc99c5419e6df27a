"""Tatum KMS's wallet.dat: CryptoJS passphrase mode, which is exactly ``openssl enc -aes-256-cbc -md md5 -a -A``.

The file is one line of base64 of ``"Salted__" || salt[8] || AES-256-CBC(PKCS#7(json))``, key and IV
from OpenSSL's ``EVP_BytesToKey`` with MD5 and one iteration (crypto-js ``kdf.OpenSSL``). There is
no MAC: a wrong password shows only as bad padding, or as bytes that are not UTF-8 JSON, which is
why Tatum users saw "Malformed UTF-8 data". Every such failure here is one :class:`WrongPassword`.

This format is read once, to leave it, and written only for a rollback (``export tatum``). Its KDF
costs three MD5 calls per guess: whoever holds an old file can brute-force a weak password offline.

AES and MD5 come from ``cryptography``; only the 20-line key derivation is ours, because it is a
format (OpenSSL's), not a primitive.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from agent.errors import UsageError

__all__ = ["MAGIC", "TatumFileError", "WrongPassword", "decrypt", "encrypt", "evp_bytes_to_key"]

MAGIC = b"Salted__"
SALT_LEN = 8
BLOCK = 16


class TatumFileError(UsageError):
    """The file is not a Tatum wallet.dat (empty, truncated, not base64): exit 2, nothing changed."""


class WrongPassword(TatumFileError):
    """The password does not open the file (or the file was altered: without a MAC, the same thing)."""


def evp_bytes_to_key(password: bytes, salt: bytes, key_len: int = 32, iv_len: int = 16) -> tuple[bytes, bytes]:
    """OpenSSL's ``EVP_BytesToKey(MD5, salt, password, count=1)``: D_i = MD5(D_{i-1} || password || salt)."""
    from cryptography.hazmat.primitives import hashes

    out = b""
    block = b""
    while len(out) < key_len + iv_len:
        h = hashes.Hash(hashes.MD5())
        h.update(block + password + salt)
        block = h.finalize()
        out += block
    return out[:key_len], out[key_len : key_len + iv_len]


def _raw(data: bytes, name: str) -> bytes:
    """The binary ``Salted__ || salt || ciphertext`` behind the file's base64 text."""
    if not data:
        raise TatumFileError(
            f"{name} is empty (0 bytes): Tatum KMS reads that as no wallets, so there is nothing to import"
        )
    text = b"".join(data.split())
    if not text:
        raise TatumFileError(f"{name} holds only white space: there is nothing to import")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TatumFileError(
            f"{name} is not base64 text, so it is not a Tatum KMS wallet.dat",
            hint='Tatum\'s file is one line of base64 that starts with U2FsdGVkX1 ("Salted__")',
        ) from None
    if raw[: len(MAGIC)] != MAGIC:
        raise TatumFileError(f'{name} does not start with OpenSSL\'s "Salted__" header: not a Tatum KMS wallet.dat')
    body = raw[len(MAGIC) + SALT_LEN :]
    if not body or len(body) % BLOCK:
        raise TatumFileError(
            f"{name} is truncated: its ciphertext is {len(body)} bytes, not a whole number of 16-byte blocks",
            hint="copy the file again from the Tatum KMS host (a partial copy cannot be decrypted)",
        )
    return raw


def decrypt(data: bytes, password: bytes, *, name: str = "the file") -> dict[str, Any]:
    """The ``{signatureId: entry}`` object inside a Tatum wallet.dat, in the file's order.

    :param data: the file's bytes (base64 text; line breaks and spaces are ignored, as openssl does).
    :raises TatumFileError: empty, not base64, no ``Salted__`` header, truncated, or no wallets in it.
    :raises WrongPassword: the padding, the UTF-8 or the JSON is wrong: the password, almost surely.
    """
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    raw = _raw(data, name)
    key, iv = evp_bytes_to_key(password, raw[len(MAGIC) : len(MAGIC) + SALT_LEN])
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(raw[len(MAGIC) + SALT_LEN :]) + decryptor.finalize()
    wrong = WrongPassword(
        f"wrong password for {name} (or the file was altered: Tatum's format cannot tell the two apart)",
        hint="the password is TATUM_KMS_PASSWORD of the Tatum KMS that wrote the file",
    )
    try:
        unpadder = padding.PKCS7(BLOCK * 8).unpadder()
        plaintext = unpadder.update(padded) + unpadder.finalize()
        doc = json.loads(plaintext.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise wrong from None
    finally:
        padded = b""
    if not isinstance(doc, dict):
        raise wrong
    if not doc:
        raise TatumFileError(f"{name} opens, but holds no wallets ({{}}): there is nothing to import")
    return doc


def encrypt(doc: dict[str, Any], password: bytes, *, salt: bytes | None = None) -> bytes:
    """A wallet.dat that Tatum KMS (crypto-js ``AES.decrypt``) and ``openssl enc -d`` open.

    The JSON is written as ``JSON.stringify`` writes it (no spaces, non-ASCII as UTF-8), on one
    base64 line with no trailing newline, as Tatum writes its own file.

    :param salt: 8 bytes for test vectors; a fresh random salt otherwise.
    """
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    salt = os.urandom(SALT_LEN) if salt is None else salt
    if len(salt) != SALT_LEN:
        raise ValueError("the salt is 8 bytes")
    plaintext = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    key, iv = evp_bytes_to_key(password, salt)
    padder = padding.PKCS7(BLOCK * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(MAGIC + salt + ciphertext)
