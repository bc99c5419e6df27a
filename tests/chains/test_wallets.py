"""Wallet generation helpers: Tatum's shapes, valid keys, nothing shared between wallets."""

from __future__ import annotations

import pytest

from agent.chains import get_chain, supported_chains
from agent.chains.wallets import (
    generate_mnemonic,
    generate_mnemonic_wallet,
    generate_private_key_batch,
    generate_private_key_wallet,
)
from agent.errors import UsageError


def test_mnemonic_is_24_valid_words_by_default() -> None:
    from mnemonic import Mnemonic

    phrase = generate_mnemonic()
    assert len(phrase.split()) == 24 and Mnemonic("english").check(phrase.decode())
    assert len(generate_mnemonic(12).split()) == 12
    with pytest.raises(UsageError):
        generate_mnemonic(13)


@pytest.mark.parametrize("name", supported_chains())
def test_mnemonic_wallet_matches_derivation(name: str) -> None:
    w = generate_mnemonic_wallet(name, testnet=True)
    chain = get_chain(name)
    assert w.xpub == chain.xpub_from_mnemonic(w.mnemonic.decode(), testnet=True)
    w.wipe()
    assert w.mnemonic == bytearray(len(w.mnemonic))


@pytest.mark.parametrize(
    ("name", "prefix"),
    [("BTC", ("K", "L")), ("LTC", ("T",)), ("DOGE", ("Q",)), ("BCH", ("K", "L")), ("ETH", ("0x",)), ("XDC", ("0x",))],
)
def test_private_key_wallet_in_tatum_text_form(name: str, prefix: tuple[str, ...]) -> None:
    w = generate_private_key_wallet(name, testnet=False)
    text = w.private_key.decode()
    assert text.startswith(prefix)
    chain = get_chain(name)
    key = chain.parse_private_key(text, testnet=False)
    assert chain.address_from_private_key(bytes(key), testnet=False) == w.address


def test_batch_gives_distinct_wallets() -> None:
    batch = list(generate_private_key_batch("ETH", 20, testnet=True))
    assert len({w.address for w in batch}) == 20
    with pytest.raises(UsageError):
        list(generate_private_key_batch("ETH", 0, testnet=True))
