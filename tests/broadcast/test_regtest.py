"""The regtest harness itself: Bitcoin Core's consensus code accepts a good spend and rejects bad ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.broadcast.regtest import MATURITY, Regtest

KEY = bytes.fromhex("11" * 32)


def p2wpkh(key: bytes) -> bytes:
    from embit import script
    from embit.ec import PrivateKey

    return bytes(script.p2wpkh(PrivateKey(key).get_public_key()).data)


def spend(key: bytes, txid: str, vout: int, amount: int, outputs: list[tuple[bytes, int]]) -> bytes:
    """A P2WPKH spend signed with embit (BIP143), as our chain layer signs."""
    from embit import script
    from embit.ec import PrivateKey
    from embit.script import Script, Witness
    from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

    pk = PrivateKey(key)
    tx = Transaction(
        version=2,
        vin=[TransactionInput(bytes.fromhex(txid), vout, sequence=0xFFFFFFFD)],
        vout=[TransactionOutput(a, Script(s)) for s, a in outputs],
        locktime=0,
    )
    code = script.p2pkh(pk.get_public_key())
    digest = tx.sighash_segwit(0, code, amount, SIGHASH.ALL)
    sig = pk.sign(digest).serialize() + bytes([SIGHASH.ALL])
    tx.vin[0].witness = Witness([sig, pk.get_public_key().sec()])
    return bytes(tx.serialize())


@pytest.fixture
def chain() -> Iterator[Regtest]:
    with Regtest() as rt:
        yield rt


def test_a_good_spend_is_mined_and_a_double_spend_refused(chain: Regtest) -> None:
    [coin] = chain.mine(1, p2wpkh(KEY))
    chain.mine(MATURITY)
    assert chain.tip_height() == 1 + MATURITY
    raw = spend(KEY, coin.coinbase_txid, 0, coin.amount, [(p2wpkh(b"\x22" * 32), coin.amount - 1000)])
    accepted, txid = chain.submit(raw)
    assert accepted, txid
    loc = chain.tx_status(txid)
    assert loc is not None and loc.height == MATURITY + 2 and loc.block_hash == chain.tip_hash()
    assert chain.depth(txid) == 1
    chain.mine(2)
    assert chain.depth(txid) == 3
    again = spend(KEY, coin.coinbase_txid, 0, coin.amount, [(p2wpkh(b"\x33" * 32), coin.amount - 2000)])
    accepted, reason = chain.submit(again)
    assert not accepted and reason.startswith("bad-txns-inputs-missingorspent"), reason
    assert chain.tip_height() == MATURITY + 4  # the invalid block did not extend the chain


def test_a_tampered_signature_an_overspend_and_an_immature_coinbase_are_refused(chain: Regtest) -> None:
    from tests.chains.utxo_helpers import tamper_first_signature

    [coin] = chain.mine(1, p2wpkh(KEY))
    [young] = chain.mine(1, p2wpkh(KEY))
    chain.mine(MATURITY - 2)  # the next block may spend the first coin, not the second (one block short)
    to = p2wpkh(b"\x22" * 32)
    tampered = tamper_first_signature(spend(KEY, coin.coinbase_txid, 0, coin.amount, [(to, coin.amount - 1000)]), 0)
    accepted, reason = chain.submit(tampered)
    assert not accepted and reason.startswith("block-script-verify-flag-failed"), reason
    over = spend(KEY, coin.coinbase_txid, 0, coin.amount, [(to, coin.amount + 1)])
    accepted, reason = chain.submit(over)
    assert not accepted and reason.startswith("bad-txns-in-belowout"), reason
    immature = spend(KEY, young.coinbase_txid, 0, young.amount, [(to, young.amount - 1000)])
    accepted, reason = chain.submit(immature)
    assert not accepted and reason.startswith("bad-txns-premature-spend-of-coinbase"), reason
    wrong_key = spend(b"\x44" * 32, coin.coinbase_txid, 0, coin.amount, [(to, coin.amount - 1000)])
    assert chain.submit(wrong_key)[0] is False
    assert chain.submit(b"\x00\x01garbage")[1].startswith("TX decode failed")
    height = chain.tip_height()
    accepted, txid = chain.submit(spend(KEY, coin.coinbase_txid, 0, coin.amount, [(to, coin.amount - 1000)]))
    assert accepted and chain.tip_height() == height + 1 and chain.depth(txid) == 1
