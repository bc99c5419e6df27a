"""What a secret handed to `wallet store` is: a BIP-39 mnemonic or a chain's private key, and its public part.

Errors never quote the secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.errors import UsageError


@dataclass(frozen=True)
class ClassifiedSecret:
    #: ``MNEMONIC`` or ``PRIVATE_KEY`` (the vault's wallet types, Tatum's names).
    wallet_type: str
    #: The account xpub at the chain's Tatum path (mnemonics).
    xpub: str | None = None
    #: The one address (private keys).
    address: str | None = None


def classify_secret(chain: Any, secret: bytearray, *, testnet: bool) -> ClassifiedSecret:
    """:raises UsageError: neither a valid English mnemonic nor a private key this chain parses."""
    from mnemonic import Mnemonic

    text = secret.decode(errors="replace")
    if len(text.split()) >= 12:
        if not Mnemonic("english").check(text):
            raise UsageError("that is not a valid BIP-39 English mnemonic (bad word or checksum)")
        return ClassifiedSecret("MNEMONIC", xpub=chain.xpub_from_mnemonic(text, testnet=testnet))
    key = chain.parse_private_key(text, testnet=testnet)
    try:
        return ClassifiedSecret("PRIVATE_KEY", address=chain.address_from_private_key(bytes(key), testnet=testnet))
    finally:
        key[:] = bytes(len(key))
