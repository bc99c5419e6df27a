"""Wallet generation in Tatum's shapes: mnemonic wallets (mnemonic + xpub) and private-key wallets.

Tatum KMS stores a mnemonic wallet as ``{mnemonic, xpub, chain, testnet}`` (24 words: 256 bits of
entropy, the xpub at Tatum's path for the chain) and a private-key wallet as ``{privateKey, chain,
testnet}`` with the key in the chain's usual text form (WIF for UTXO chains, ``0x`` hex for EVM).
These helpers produce exactly those, with entropy from :mod:`secrets`. Secrets come back in
``bytearray`` objects the caller wipes; the mnemonic text has to exist as ``str`` briefly while the
xpub is derived, which Python cannot avoid.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

from agent.chains import _hd, get_chain
from agent.chains.base import Chain
from agent.errors import UsageError


@dataclass
class MnemonicWallet:
    """A fresh mnemonic wallet. ``mnemonic`` is UTF-8 text in a bytearray: wipe it after storing."""

    chain: str
    testnet: bool
    mnemonic: bytearray
    xpub: str

    def wipe(self) -> None:
        self.mnemonic[:] = bytes(len(self.mnemonic))


@dataclass
class PrivateKeyWallet:
    """A fresh private-key wallet. ``private_key`` is the Tatum text form (WIF / 0x hex) in a bytearray."""

    chain: str
    testnet: bool
    private_key: bytearray
    address: str

    def wipe(self) -> None:
        self.private_key[:] = bytes(len(self.private_key))


def generate_mnemonic(words: int = 24) -> bytearray:
    """A new English BIP-39 mnemonic (24 words = 256 bits, as Tatum generates), as UTF-8 bytes."""
    sizes = {12: 16, 15: 20, 18: 24, 21: 28, 24: 32}
    if words not in sizes:
        raise UsageError(f"a BIP-39 mnemonic has 12, 15, 18, 21 or 24 words, not {words}")
    entropy = bytearray(secrets.token_bytes(sizes[words]))
    try:
        return bytearray(_hd.mnemonic_from_entropy(entropy).encode())
    finally:
        entropy[:] = bytes(len(entropy))


def generate_mnemonic_wallet(chain: str | Chain, *, testnet: bool, words: int = 24) -> MnemonicWallet:
    """A new mnemonic and the xpub Tatum would store for it on ``chain``."""
    impl = get_chain(chain) if isinstance(chain, str) else chain
    phrase = generate_mnemonic(words)
    return MnemonicWallet(impl.name, testnet, phrase, impl.xpub_from_mnemonic(phrase.decode(), testnet=testnet))


def private_key_text(chain: str | Chain, key: bytes | bytearray, *, testnet: bool) -> bytearray:
    """The text form Tatum stores for a private key on ``chain`` (WIF or ``0x`` hex), as UTF-8 bytes."""
    from agent.chains.evm import EvmChain
    from agent.chains.utxo import UtxoChain

    impl = get_chain(chain) if isinstance(chain, str) else chain
    if isinstance(impl, UtxoChain):
        return bytearray(impl.wif_from_private_key(bytes(key), testnet=testnet).encode())
    if isinstance(impl, EvmChain):
        return bytearray(impl.private_key_hex(bytes(key)).encode())
    raise UsageError(f"no private-key text form for {impl.name}")


def generate_private_key_wallet(chain: str | Chain, *, testnet: bool) -> PrivateKeyWallet:
    """A new random private key (checked to be a valid secp256k1 scalar) and its address."""
    impl = get_chain(chain) if isinstance(chain, str) else chain
    while True:
        key = bytearray(secrets.token_bytes(32))
        try:
            _hd.pubkey_from_private(key)
            break
        except UsageError:  # 0 or >= n: probability ~2^-128
            key[:] = bytes(32)
    try:
        return PrivateKeyWallet(
            impl.name,
            testnet,
            private_key_text(impl, key, testnet=testnet),
            impl.address_from_private_key(bytes(key), testnet=testnet),
        )
    finally:
        key[:] = bytes(32)


def generate_private_key_batch(chain: str | Chain, count: int, *, testnet: bool) -> Iterator[PrivateKeyWallet]:
    """``count`` independent private-key wallets (Tatum's ``generatemanagedprivatekeybatch``), lazily."""
    if count < 1:
        raise UsageError("count must be at least 1")
    impl = get_chain(chain) if isinstance(chain, str) else chain
    for _ in range(count):
        yield generate_private_key_wallet(impl, testnet=testnet)
