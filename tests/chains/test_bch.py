"""BCH: FORKID signatures agree byte for byte with bitcash (a second, independent implementation).

No BCH node can be installed here, so the check is two implementations agreeing: bitcash builds
and signs the transaction (coincurve, RFC 6979); we take its unsigned form, wrap it in a PSBT and
sign it with our chain module. Identical bytes mean identical FORKID digests and signatures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.chains import get_chain
from agent.chains.bch import BchChain, cashaddr_decode
from agent.errors import ChainError, UsageError
from tests.chains.utxo_helpers import MNEMONIC

CASHADDR = json.loads((Path(__file__).parent / "vectors" / "cashaddr.json").read_text())


def bch() -> BchChain:
    chain = get_chain("BCH")
    assert isinstance(chain, BchChain)
    return chain


def _bitcash_tx(
    testnet: bool, indices: list[int], amounts: list[int], send: int
) -> tuple[str, list[bytes], list[tuple[bytes, int]]]:
    """A bitcash-signed transaction spending our wallet's coins; returns (raw hex, keys, spent outputs)."""
    import hashlib

    import bitcash
    from bitcash.network.meta import Unspent

    chain = bch()
    keys, unspents, spent = [], [], []
    for n, (i, amount) in enumerate(zip(indices, amounts, strict=True)):
        key = chain.private_key_from_mnemonic(MNEMONIC, i, testnet=testnet)
        keys.append(bytes(key))
        spk = chain.script_from_address(chain.address_from_private_key(bytes(key), testnet=testnet), chain.net(testnet))
        txid = hashlib.sha256(b"bch%d" % n).hexdigest()
        unspents.append(Unspent(amount, 6, spk.hex(), txid, n % 3))
        spent.append((spk, amount))
    assert len(set(indices)) == 1, "bitcash signs with one key per transaction"
    cls = bitcash.PrivateKeyTestnet if testnet else bitcash.PrivateKey
    pk = cls(chain.wif_from_private_key(keys[0], testnet=testnet))
    dest = chain.address_from_xpub(chain.xpub_from_mnemonic(MNEMONIC, testnet=testnet), 3, testnet=testnet)
    raw = pk.create_transaction([(dest, send, "satoshi")], fee=2, unspents=unspents, leftover=pk.address)
    return raw, keys[:1], spent


def _psbt_from_signed(raw_hex: str, spent: list[tuple[bytes, int]]) -> str:
    from embit.psbt import PSBT
    from embit.script import Script
    from embit.transaction import Transaction, TransactionOutput

    tx = Transaction.parse(bytes.fromhex(raw_hex))
    for inp in tx.vin:
        inp.script_sig = Script(b"")
    psbt = PSBT(tx)
    for inp, (spk, amount) in zip(psbt.inputs, spent, strict=True):
        inp.witness_utxo = TransactionOutput(amount, Script(spk))
    return str(psbt.to_base64())


@pytest.mark.parametrize(
    ("testnet", "index", "amounts"),
    [
        (False, 0, [100_000]),
        (False, 4, [100_000, 50_000]),
        (False, 9, [30_000, 40_000, 50_000]),
        (True, 2, [70_000, 80_000]),
    ],
)
def test_signed_bytes_equal_bitcash(testnet: bool, index: int, amounts: list[int]) -> None:
    raw, keys, spent = _bitcash_tx(testnet, [index] * len(amounts), amounts, send=sum(amounts) // 2)
    psbt = _psbt_from_signed(raw, spent)
    summary = bch().decode(psbt, testnet=testnet)
    assert summary.inputs[0].address is not None
    assert summary.inputs[0].address.startswith("bchtest:" if testnet else "bitcoincash:")
    assert summary.total_in == sum(amounts) and summary.fee > 0
    signed = bch().sign(psbt, keys, testnet=testnet)
    assert signed.raw.hex() == raw
    assert signed.raw[-4:] == bytes(4) and b"\x41\x21" in signed.raw  # SIGHASH_ALL|FORKID before the pubkey push


def test_a_wrong_amount_changes_the_forkid_signature() -> None:
    raw, keys, spent = _bitcash_tx(False, [1], [100_000], send=50_000)
    lie = [(spent[0][0], spent[0][1] + 1)]
    assert bch().sign(_psbt_from_signed(raw, lie), keys, testnet=False).raw.hex() != raw


def test_build_and_sweep_round_trip_matches_bitcash_addresses() -> None:
    import bitcash

    chain = bch()
    key = chain.private_key_from_mnemonic(MNEMONIC, 0, testnet=False)
    pk = bitcash.PrivateKey(chain.wif_from_private_key(key, testnet=False))
    assert chain.address_from_private_key(bytes(key), testnet=False) == pk.address
    assert chain.legacy_address(pk.address, testnet=False)[0] == "1"


@pytest.mark.parametrize("v", CASHADDR["translations"], ids=lambda v: v["legacy"])
def test_cashaddr_spec_translations(v: dict[str, str]) -> None:
    chain = bch()
    assert chain.normalize_address(v["legacy"], testnet=False) == v["cashaddr"]
    assert chain.legacy_address(v["cashaddr"], testnet=False) == v["legacy"]
    assert chain.normalize_address(v["cashaddr"].split(":")[1].upper(), testnet=False) == v["cashaddr"]


def test_cashaddr_rejects_bad_checksum_mixed_case_and_wrong_prefix() -> None:
    good = CASHADDR["translations"][0]["cashaddr"]
    assert cashaddr_decode(good, "bitcoincash") is not None
    assert cashaddr_decode(good[:-1] + ("q" if good[-1] != "q" else "p"), "bitcoincash") is None
    assert cashaddr_decode(good[:14] + good[14:].upper(), "bitcoincash") is None
    assert cashaddr_decode(good, "bchtest") is None
    with pytest.raises(UsageError):
        bch().normalize_address(good, testnet=True)


def test_bch_refuses_segwit_inputs() -> None:
    from agent.chains.utxo import AddressKind
    from tests.chains.utxo_helpers import make_coins

    btc = get_chain("BTC")
    coins = make_coins(btc, [(0, AddressKind.P2WPKH, 50_000)])  # type: ignore[arg-type]
    from embit.psbt import PSBT
    from embit.script import Script
    from embit.transaction import Transaction, TransactionInput, TransactionOutput

    tx = Transaction(
        vin=[TransactionInput(bytes.fromhex(coins[0].utxo.txid), 0)],
        vout=[TransactionOutput(40_000, Script(coins[0].spk))],
    )
    psbt = PSBT(tx)
    psbt.inputs[0].witness_utxo = TransactionOutput(50_000, Script(coins[0].spk))
    with pytest.raises(ChainError, match="cannot sign"):
        bch().sign(psbt.to_base64(), [bytes(coins[0].key)], testnet=False)
