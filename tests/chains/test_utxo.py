"""BTC / LTC / DOGE: PSBT decode and signing, every signature checked by Bitcoin Core's consensus code.

The independent verifier is libbitcoinkernel (py-bitcoinkernel): Bitcoin Core's own script
interpreter, which shares no code with embit. LTC and DOGE use Bitcoin's script and sighash rules
(BIP-143 for segwit, the legacy digest for P2PKH), so the same verifier covers them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from agent.chains import Owned, get_chain
from agent.chains.utxo import AddressKind, UtxoChain
from agent.errors import ChainError, UsageError
from tests.chains.utxo_helpers import (
    MNEMONIC,
    Coin,
    kernel_verify,
    make_coins,
    redeem_map,
    tamper_first_signature,
)

VECTORS = Path(__file__).parent / "vectors"
K = AddressKind
EXTERNAL = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"  # BIP-84 vector address, not this wallet's


def btc() -> UtxoChain:
    chain = get_chain("BTC")
    assert isinstance(chain, UtxoChain)
    return chain


def spent(coins: list[Coin], delta: int = 0) -> list[tuple[bytes, int]]:
    return [(c.spk, c.utxo.amount + delta) for c in coins]


def sign_and_verify(
    chain: UtxoChain,
    coins: list[Coin],
    outputs: list[tuple[str, int]],
    *,
    testnet: bool = False,
    regtest: bool = False,
    version: int = 0,
    owned: Owned | None = None,
) -> Any:
    psbt = chain.build_psbt(
        [c.utxo for c in coins],
        outputs,
        testnet=testnet,
        regtest=regtest,
        version=version,
        redeem_scripts=redeem_map(coins),
    )
    signed = chain.sign(psbt, [bytes(c.key) for c in coins], testnet=testnet, regtest=regtest, owned=owned)
    assert kernel_verify(signed.raw, spent(coins)) == [True] * len(coins)
    return signed


def test_btc_three_script_types_in_one_transaction_verified_by_bitcoin_core() -> None:
    chain = btc()
    coins = make_coins(
        chain, [(0, K.P2WPKH, 50_000), (1, K.P2SH_P2WPKH, 60_000), (2, K.P2PKH, 70_000), (3, K.P2WPKH, 80_000)]
    )
    xpub = chain.xpub_from_mnemonic(MNEMONIC, testnet=False)
    change = chain.address_from_xpub(xpub, 5, testnet=False)
    signed = sign_and_verify(
        chain, coins, [(EXTERNAL, 200_000), (change, 55_000)], owned=Owned(addresses=frozenset({change}))
    )
    s = signed.summary
    assert [i.script_type for i in s.inputs] == ["p2wpkh", "p2sh-p2wpkh", "p2pkh", "p2wpkh"]
    assert [i.amount for i in s.inputs] == [50_000, 60_000, 70_000, 80_000]
    assert [(o.address, o.amount, o.is_change) for o in s.outputs] == [
        (EXTERNAL, 200_000, False),
        (change, 55_000, True),
    ]
    assert s.fee == 5_000 and s.asset == "BTC" and s.network == "mainnet"
    assert s.spent == (s.outputs[0],)
    # Bitcoin Core rejects a tampered signature on every input ...
    for i in range(len(coins)):
        assert kernel_verify(tamper_first_signature(signed.raw, i), spent(coins))[i] is False
    # ... and a wrong amount on every segwit input (BIP-143 commits to it; legacy P2PKH does not).
    assert kernel_verify(signed.raw, spent(coins, delta=1)) == [False, False, True, False]


def test_actual_vsize_is_within_the_estimate() -> None:
    from embit.transaction import Transaction

    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 50_000), (1, K.P2SH_P2WPKH, 60_000), (2, K.P2PKH, 70_000)])
    signed = sign_and_verify(chain, coins, [(EXTERNAL, 170_000)])
    tx = Transaction.parse(signed.raw)
    base = len(tx.serialize()) - sum(len(inp.witness.serialize()) for inp in tx.vin) - 2
    weight = base * 4 + (len(signed.raw) - base)
    vsize = -(-weight // 4)
    assert vsize <= signed.summary.size <= vsize + 3


@pytest.mark.parametrize("network", ["testnet", "regtest"])
def test_btc_test_networks(network: str) -> None:
    chain = btc()
    regtest = network == "regtest"
    coins = make_coins(chain, [(7, K.P2WPKH, 100_000), (8, K.P2PKH, 20_000)], testnet=True, regtest=regtest)
    dest = chain.address_from_private_key(bytes(coins[0].key), testnet=True, regtest=regtest)
    assert dest.startswith("bcrt1q" if regtest else "tb1q")
    signed = sign_and_verify(chain, coins, [(dest, 119_000)], testnet=True, regtest=regtest)
    assert signed.summary.network == network


def test_psbt_v2_input() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 40_000), (1, K.P2PKH, 40_000)])
    psbt = chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 79_000)], testnet=False, version=2)
    assert base64.b64decode(psbt)[5:8] != b"\x01\x00"  # no global unsigned tx: a real v2 PSBT
    summary = chain.decode(psbt, testnet=False)
    assert summary.tx_type == "psbt-v2" and summary.fee == 1_000
    signed = chain.sign(psbt, [bytes(c.key) for c in coins], testnet=False)
    assert kernel_verify(signed.raw, spent(coins)) == [True, True]


def test_ltc_tatum_p2pkh_and_segwit_inputs() -> None:
    ltc = get_chain("LTC")
    assert isinstance(ltc, UtxoChain)
    coins = make_coins(ltc, [(0, K.P2PKH, 1_000_000), (1, K.P2WPKH, 2_000_000), (2, K.P2SH_P2WPKH, 500_000)])
    assert coins[0].utxo.address.startswith("L") and coins[1].utxo.address.startswith("ltc1q")
    assert coins[2].utxo.address.startswith("M")
    dest = ltc.address_from_xpub(ltc.xpub_from_mnemonic(MNEMONIC, testnet=False), 9, testnet=False)
    signed = sign_and_verify(ltc, coins, [(dest, 3_490_000)])
    assert signed.summary.fee == 10_000 and signed.summary.asset == "LTC"
    assert kernel_verify(tamper_first_signature(signed.raw, 0), spent(coins))[0] is False
    tcoins = make_coins(ltc, [(0, K.P2PKH, 1_000_000)], testnet=True)
    sign_and_verify(ltc, tcoins, [(tcoins[0].utxo.address, 990_000)], testnet=True)


def test_doge_p2pkh_several_inputs() -> None:
    doge = get_chain("DOGE")
    assert isinstance(doge, UtxoChain)
    coins = make_coins(doge, [(0, K.P2PKH, 5 * 10**8), (1, K.P2PKH, 7 * 10**8), (2, K.P2PKH, 10**8)])
    assert all(c.utxo.address.startswith("D") for c in coins)
    dest = doge.address_from_private_key(bytes(coins[0].key), testnet=False)
    signed = sign_and_verify(doge, coins, [(dest, 12 * 10**8), (coins[1].utxo.address, 99 * 10**6)])
    assert signed.summary.fee == 10**6
    assert kernel_verify(tamper_first_signature(signed.raw, 2), spent(coins))[2] is False
    with pytest.raises(UsageError, match="no p2wpkh"):
        doge.address_from_private_key(bytes(coins[0].key), testnet=False, kind="p2wpkh")


def test_change_detected_by_bip32_derivation_from_our_xpub() -> None:
    from embit.psbt import PSBT, DerivationPath

    chain = btc()
    xpub = chain.xpub_from_mnemonic(MNEMONIC, testnet=False)
    coins = make_coins(chain, [(0, K.P2WPKH, 100_000)])
    change_key = chain.private_key_from_mnemonic(MNEMONIC, 11, testnet=False)
    from agent.chains import _hd

    change_pub = _hd.pubkey_from_private(change_key)
    change = chain.address_from_pubkey(change_pub, chain.net(False), K.P2WPKH)
    lookalike = chain.address_from_xpub(
        chain.xpub_from_mnemonic("zoo " * 11 + "wrong", testnet=False), 11, testnet=False
    )
    psbt = PSBT.from_base64(
        chain.build_psbt([c.utxo for c in coins], [(change, 50_000), (lookalike, 49_000)], testnet=False)
    )
    from embit.ec import PublicKey

    path = [44 + 2**31, 2**31, 2**31, 0, 11]
    psbt.outputs[0].bip32_derivations[PublicKey.parse(change_pub)] = DerivationPath(b"\0\0\0\0", path)
    # The lookalike claims the same path with our pubkey, but its script pays someone else.
    psbt.outputs[1].bip32_derivations[PublicKey.parse(change_pub)] = DerivationPath(b"\0\0\0\0", path)
    s = chain.decode(psbt.to_base64(), testnet=False, owned=Owned(xpub=xpub))
    assert [o.is_change for o in s.outputs] == [True, False]
    assert chain.decode(psbt.to_base64(), testnet=False).outputs[0].is_change is False


def test_sweep_to_cold_address() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 30_000), (1, K.P2SH_P2WPKH, 30_000), (2, K.P2PKH, 30_000)])
    cold = "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"
    psbt = chain.build_sweep(
        [c.utxo for c in coins], cold, sat_per_vbyte=10, testnet=False, redeem_scripts=redeem_map(coins)
    )
    summary = chain.decode(psbt, testnet=False)
    assert len(summary.outputs) == 1 and summary.outputs[0].address == cold
    assert summary.fee == summary.size * 10 and summary.total_out == 90_000 - summary.fee
    signed = chain.sign(psbt, [bytes(c.key) for c in coins], testnet=False)
    assert kernel_verify(signed.raw, spent(coins)) == [True, True, True]
    with pytest.raises(UsageError, match="do not cover"):
        chain.build_sweep([coins[0].utxo], cold, sat_per_vbyte=1000, testnet=False)


def test_fee_estimate_from_caller_parameters() -> None:
    chain = btc()
    est = chain.estimate_fee(inputs=2, outputs=2, sat_per_vbyte=5)
    # 2 P2WPKH in, 2 P2WPKH out: 10.5 + 2*68 + 2*31 = 208.5 -> 209 vB
    assert est.size == 209 and est.fee == 1045
    legacy = get_chain("DOGE").estimate_fee(inputs=1, outputs=1, sat_per_vbyte=1000)  # type: ignore[attr-defined]
    assert legacy.size == 10 + 148 + 34


# --- published vectors ----------------------------------------------------------------------------

BIP143 = json.loads((VECTORS / "bip143.json").read_text())
BIP174 = json.loads((VECTORS / "bip174.json").read_text())


def _psbt_from_unsigned(unsigned_hex: str, utxos: list[tuple[bytes, int]], redeem: bytes | None = None) -> str:
    from embit.psbt import PSBT
    from embit.script import Script
    from embit.transaction import Transaction, TransactionOutput

    psbt = PSBT(Transaction.parse(bytes.fromhex(unsigned_hex)))
    for inp, (spk, amount) in zip(psbt.inputs, utxos, strict=True):
        inp.witness_utxo = TransactionOutput(amount, Script(spk))
        if redeem is not None:
            inp.redeem_script = Script(redeem)
    return str(psbt.to_base64())


def test_bip143_p2sh_p2wpkh_signed_transaction_is_byte_identical() -> None:
    v = BIP143["p2sh_p2wpkh"]
    chain = btc()
    psbt = _psbt_from_unsigned(
        v["unsigned_tx"], [(bytes.fromhex(v["script_pubkey"]), v["amount"])], bytes.fromhex(v["redeem_script"])
    )
    signed = chain.sign(psbt, [bytes.fromhex(v["private_key"])], testnet=False)
    assert signed.raw.hex() == v["signed_tx"]
    assert signed.summary.txid == signed.txid  # P2SH-P2WPKH: txid known before signing
    assert kernel_verify(signed.raw, [(bytes.fromhex(v["script_pubkey"]), v["amount"])]) == [True]


def test_bip143_native_p2wpkh_sighash_and_refusals() -> None:
    from embit.psbt import PSBT

    v = BIP143["native_p2wpkh"]
    chain = btc()
    utxos = [(bytes.fromhex(i["script_pubkey"]), i["amount"]) for i in v["inputs"]]
    psbt_b64 = _psbt_from_unsigned(v["unsigned_tx"], utxos)
    pub = bytes.fromhex(v["inputs"][1]["public_key"])
    digest = chain._sighash(PSBT.from_base64(psbt_b64), 1, K.P2WPKH, pub, utxos[1][1], utxos[1][0])
    assert digest.hex() == v["sighash_input_1"]
    # The published signed transaction passes Bitcoin Core's check with our inputs (sanity of the helper).
    assert kernel_verify(bytes.fromhex(v["signed_tx"]), utxos) == [True, True]
    # Input 0 is bare P2PK, which we do not sign; and the example's fee (8.9 BTC) is absurd.
    with pytest.raises(ChainError, match="cannot sign"):
        chain.decode(psbt_b64, testnet=False)


@pytest.mark.parametrize("index", range(len(BIP174["invalid"])))
def test_bip174_invalid_psbts_are_refused(index: int) -> None:
    with pytest.raises(ChainError):
        btc().sign(BIP174["invalid"][index], [bytes(31) + b"\x01"], testnet=False)


def test_bip174_valid_psbt_decodes_with_amounts() -> None:
    v = BIP174["valid"][0]
    assert len(base64.b64decode(v["psbt"])) == v["len"]
    s = btc().decode(v["psbt"], testnet=False)
    assert [(i.script_type, i.amount) for i in s.inputs] == [("p2pkh", 200_000_000)]
    assert [o.amount for o in s.outputs] == [99_999_699, 100_000_000] and s.fee == 301


# --- refusals -------------------------------------------------------------------------------------


def _one_coin_psbt(**kw: Any) -> tuple[UtxoChain, list[Coin], str]:
    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 100_000)], **kw)
    return chain, coins, chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 99_000)], testnet=False)


def test_truncated_psbt() -> None:
    chain, coins, psbt = _one_coin_psbt()
    raw = base64.b64decode(psbt)
    for cut in (1, 6, len(raw) // 2, len(raw) - 1):
        with pytest.raises(ChainError):
            chain.sign(raw[:cut], [bytes(coins[0].key)], testnet=False)


def test_missing_utxo_is_refused() -> None:
    from embit.psbt import PSBT

    chain, coins, psbt = _one_coin_psbt(full_prev=False)
    p = PSBT.from_base64(psbt)
    p.inputs[0].witness_utxo = None
    with pytest.raises(ChainError, match="no UTXO data"):
        chain.sign(p.to_base64(), [bytes(coins[0].key)], testnet=False)


def test_p2pkh_without_previous_transaction_is_refused() -> None:
    from embit.psbt import PSBT
    from embit.script import Script
    from embit.transaction import TransactionOutput

    chain = btc()
    coins = make_coins(chain, [(0, K.P2PKH, 100_000)])
    p = PSBT.from_base64(chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 99_000)], testnet=False))
    p.inputs[0].non_witness_utxo = None
    p.inputs[0].witness_utxo = TransactionOutput(100_000, Script(coins[0].spk))
    with pytest.raises(ChainError, match="legacy signatures do not commit"):
        chain.sign(p.to_base64(), [bytes(coins[0].key)], testnet=False)


def test_lying_previous_transaction_is_refused() -> None:
    from embit.psbt import PSBT
    from embit.script import Script
    from embit.transaction import TransactionOutput

    chain, coins, psbt = _one_coin_psbt()
    p = PSBT.from_base64(psbt)
    p.inputs[0].witness_utxo = TransactionOutput(1_000_000, Script(coins[0].spk))  # contradicts non_witness_utxo
    with pytest.raises(ChainError, match="contradicts"):
        chain.decode(p.to_base64(), testnet=False)
    p = PSBT.from_base64(psbt)
    p.inputs[0].txid = bytes(32)  # prevout no longer matches the full previous transaction
    with pytest.raises(ChainError, match="txid mismatch"):
        chain.decode(p.to_base64(), testnet=False)


def test_absurd_fee_is_refused() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 10**8)])
    psbt = chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 10_000)], testnet=False)
    with pytest.raises(ChainError, match="absurd fee"):
        chain.sign(psbt, [bytes(coins[0].key)], testnet=False)


def test_outputs_exceeding_inputs_are_refused() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 10_000)])
    psbt = chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 10_001)], testnet=False)
    with pytest.raises(ChainError, match="exceed"):
        chain.decode(psbt, testnet=False)


def test_wrong_network() -> None:
    from embit.bip32 import HDKey
    from embit.psbt import PSBT, DerivationPath

    chain, coins, psbt = _one_coin_psbt()
    with pytest.raises(ChainError, match="wrong network"):
        chain.decode(
            psbt, testnet=False, owned=Owned(addresses=frozenset({"tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"}))
        )
    p = PSBT.from_base64(psbt)
    tpub = HDKey.from_string(chain.xpub_from_mnemonic(MNEMONIC, testnet=True))
    p.xpubs[tpub] = DerivationPath(b"\0\0\0\0", [44 + 2**31, 1 + 2**31, 2**31, 0])
    with pytest.raises(ChainError, match="another network"):
        chain.sign(p.to_base64(), [bytes(coins[0].key)], testnet=False)
    with pytest.raises(UsageError, match="not a valid BTC mainnet address"):
        chain.build_psbt([coins[0].utxo], [("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", 1000)], testnet=False)


def test_key_that_matches_no_input_signs_nothing() -> None:
    chain, _coins, psbt = _one_coin_psbt()
    other = chain.private_key_from_mnemonic(MNEMONIC, 1, testnet=False)
    with pytest.raises(ChainError, match="not spendable by any of the given keys"):
        chain.sign(psbt, [bytes(other)], testnet=False)


def test_non_all_sighash_is_refused() -> None:
    from embit.psbt import PSBT

    chain, coins, psbt = _one_coin_psbt()
    p = PSBT.from_base64(psbt)
    p.inputs[0].sighash_type = 0x83  # SINGLE|ANYONECANPAY would let others change the outputs
    with pytest.raises(ChainError, match="sighash"):
        chain.sign(p.to_base64(), [bytes(coins[0].key)], testnet=False)


def test_pure_python_fallback_refuses_to_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    from embit.util import py_secp256k1, secp256k1

    chain, coins, psbt = _one_coin_psbt()
    monkeypatch.setattr(secp256k1, "ecdsa_sign", py_secp256k1.ecdsa_sign)
    with pytest.raises(ChainError, match="pure-Python"):
        chain.sign(psbt, [bytes(coins[0].key)], testnet=False)


def test_input_formats_hex_base64_raw() -> None:
    chain, _coins, psbt = _one_coin_psbt()
    raw = base64.b64decode(psbt)
    want = chain.decode(psbt, testnet=False)
    assert chain.decode(raw, testnet=False) == want
    assert chain.decode(raw.hex(), testnet=False) == want
    assert chain.decode(psbt.encode(), testnet=False) == want
    with pytest.raises(ChainError, match="not a PSBT"):
        chain.decode("hello", testnet=False)
