"""What summaries tell people: amounts in coin units beside base units, known tokens, fee warnings,
duplicate outpoints, and addresses compared whatever their case."""

from __future__ import annotations

import json

import pytest

from agent.chains import Owned, TxKind, get_chain
from agent.chains.base import HIGH_FEE_PERCENT, HIGH_FEE_WARNING
from agent.chains.evm import GWEI, EvmChain, checksum, erc20_approve_data
from agent.chains.tokens import known_token, known_tokens
from agent.chains.utxo import AddressKind, UtxoChain
from agent.errors import ChainError
from agent.policy.rules import DEFAULT_MAX_FEE_PERCENT
from tests.chains.utxo_helpers import MNEMONIC, make_coins, redeem_map

EXTERNAL = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
TO = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
USDT = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
K = AddressKind


def btc() -> UtxoChain:
    chain = get_chain("BTC")
    assert isinstance(chain, UtxoChain)
    return chain


def evm(name: str = "ETH") -> EvmChain:
    chain = get_chain(name)
    assert isinstance(chain, EvmChain)
    return chain


def change_address(chain: UtxoChain, index: int = 1) -> str:
    return chain.address_from_xpub(chain.xpub_from_mnemonic(MNEMONIC, testnet=False), index, testnet=False)


def test_the_chain_default_matches_the_policy_default() -> None:
    assert HIGH_FEE_PERCENT == DEFAULT_MAX_FEE_PERCENT == 10


def test_eth_transfer_json_has_coin_units_beside_base_units() -> None:
    chain = evm()
    tx = chain.build_transfer(to=TO, value=10**17, nonce=0, chain_id=1, max_fee_per_gas=21 * GWEI)
    j = chain.decode(tx, testnet=False).to_json()
    assert j["outputs"] == [{"address": TO, "amount": "100000000000000000", "isChange": False, "amountHuman": "0.1"}]
    assert j["fee"] == "441000000000000" and j["feeHuman"] == "0.000441"
    assert j["coin"] == {"symbol": "ETH", "decimals": 18, "baseUnit": "wei"}
    assert j["feeBase"] == str(10**17) and j["highFee"] is False and j["warnings"] == []
    assert json.loads(json.dumps(j)) == j


@pytest.mark.parametrize(("name", "symbol"), [("BSC", "BNB"), ("MATIC", "MATIC"), ("XDC", "XDC")])
def test_every_evm_coin_has_18_decimals(name: str, symbol: str) -> None:
    chain = evm(name)
    tx = chain.build_transfer(to=TO, value=25 * 10**17, nonce=0, chain_id=chain.mainnet_ids[0], gas_price=GWEI)
    j = chain.decode(tx, testnet=False).to_json()
    assert j["coin"] == {"symbol": symbol, "decimals": 18, "baseUnit": "wei"}
    assert j["outputs"][0]["amountHuman"] == "2.5"


def test_btc_json_has_coin_units_for_inputs_outputs_and_fee() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 150_000_000)])
    change = change_address(chain)
    psbt = chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 100_000_000), (change, 49_990_000)], testnet=False)
    s = chain.decode(psbt, testnet=False, owned=Owned(addresses=frozenset({change})))
    j = s.to_json()
    assert j["coin"] == {"symbol": "BTC", "decimals": 8, "baseUnit": "sat"}
    assert j["inputs"][0]["amount"] == "150000000" and j["inputs"][0]["amountHuman"] == "1.5"
    assert [(o["amount"], o["amountHuman"], o["isChange"]) for o in j["outputs"]] == [
        ("100000000", "1", False),
        ("49990000", "0.4999", True),
    ]
    assert j["fee"] == "10000" and j["feeHuman"] == "0.0001"
    assert j["feeBase"] == "100000000" and j["highFee"] is False
    assert not any(w.startswith(HIGH_FEE_WARNING) for w in s.warnings)


def test_bundled_tokens_carry_valid_checksums_and_sane_decimals() -> None:
    tokens = known_tokens()
    assert {(t.chain_id, t.symbol) for t in tokens.values()} >= {
        (1, "USDT"),
        (1, "USDC"),
        (1, "DAI"),
        (1, "WETH"),
        (56, "USDT"),
        (137, "USDC"),
        (11155111, "USDC"),
    }
    for (chain_id, low), t in tokens.items():
        # A mistyped hex digit would break the EIP-55 checksum of the address as written.
        assert t.address == "0x" + checksum(bytes.fromhex(t.address[2:])), t
        assert low == t.address.lower() and chain_id == t.chain_id
        assert 0 <= t.decimals <= 18 and t.symbol.isprintable()
    assert known_token(1, USDT.upper().replace("0X", "0x")) == known_token(1, USDT)
    assert known_token(56, USDT) is None  # the same address on another network is not that token
    assert known_token(None, USDT) is None


def test_known_token_gets_symbol_and_decimals_unknown_one_stays_raw() -> None:
    chain = evm()
    known = chain.decode(
        chain.build_erc20_transfer(
            token=USDT, to=TO, amount=100_500_000, nonce=1, chain_id=1, max_fee_per_gas=30 * GWEI
        ),
        testnet=False,
    )
    assert known.token is not None and known.token.known
    assert (known.token.symbol, known.token.decimals) == ("USDT", 6)
    assert known.to_json()["token"]["amountHuman"] == "100.5"
    unknown = chain.decode(
        chain.build_erc20_transfer(
            token="0x" + "12" * 20, to=TO, amount=100_500_000, nonce=1, chain_id=1, max_fee_per_gas=30 * GWEI
        ),
        testnet=False,
    )
    assert unknown.token is not None and not unknown.token.known
    tj = unknown.to_json()["token"]
    assert (tj["known"], tj["symbol"], tj["decimals"], tj["amountHuman"], tj["amount"]) == (
        False,
        None,
        None,
        None,
        "100500000",
    )
    # Sepolia USDC is known on the ETH testnet, with the testnet chain id.
    sepolia = chain.decode(
        chain.build_erc20_transfer(
            token="0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238",
            to=TO,
            amount=2_000_000,
            nonce=0,
            chain_id=11155111,
            max_fee_per_gas=GWEI,
        ),
        testnet=True,
    )
    assert sepolia.token is not None and (sepolia.token.symbol, sepolia.token.decimals) == ("USDC", 6)


def test_known_token_approve_keeps_the_label() -> None:
    chain = evm()
    tx = chain.build_transfer(
        to=USDT,
        value=0,
        nonce=0,
        chain_id=1,
        gas=60_000,
        max_fee_per_gas=GWEI,
        data=erc20_approve_data(bytes.fromhex("ab" * 20), 2**256 - 1),
    )
    s = chain.decode(tx, testnet=False)
    assert s.kind is TxKind.TOKEN_APPROVE and s.token is not None and s.token.symbol == "USDT"


def test_duplicate_outpoint_psbt_is_refused() -> None:
    chain = btc()
    coin = make_coins(chain, [(0, K.P2WPKH, 100_000)])[0]
    for version in (0, 2):
        psbt = chain.build_psbt([coin.utxo, coin.utxo], [(EXTERNAL, 150_000)], testnet=False, version=version)
        with pytest.raises(ChainError, match="spend the same coin") as info:
            chain.decode(psbt, testnet=False)
        assert f"{coin.utxo.txid}:{coin.utxo.vout}" in str(info.value)
        with pytest.raises(ChainError, match="spend the same coin"):
            chain.sign(psbt, [bytes(coin.key)], testnet=False)


def test_same_txid_other_vout_is_not_a_duplicate() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 100_000), (0, K.P2WPKH, 100_000)])
    assert coins[0].utxo.txid == coins[1].utxo.txid and coins[0].utxo.vout != coins[1].utxo.vout
    psbt = chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 190_000)], testnet=False)
    assert chain.decode(psbt, testnet=False).total_in == 200_000


def test_a_99_percent_fee_psbt_is_flagged() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 100_000)])
    psbt = chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 1_000)], testnet=False)
    s = chain.decode(psbt, testnet=False)
    assert s.fee == 99_000 and s.fee_base == 1_000 and s.high_fee
    flagged = [w for w in s.warnings if w.startswith(HIGH_FEE_WARNING)]
    assert flagged == ["high fee: 0.00099 BTC (99000 sat) is 9900 % of the 0.00001 BTC (1000 sat) sent (over 10 %)"]
    assert s.to_json()["highFee"] is True


def test_consolidation_is_called_internal_only_with_an_ordinary_fee() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 100_000), (2, K.P2SH_P2WPKH, 50_000)])
    change = change_address(chain)
    owned = Owned(addresses=frozenset({change}))
    internal = "every output is change: this only moves coins within the wallet"

    ordinary = chain.build_psbt(
        [c.utxo for c in coins], [(change, 149_000)], testnet=False, redeem_scripts=redeem_map(coins)
    )
    s = chain.decode(ordinary, testnet=False, owned=owned)
    assert internal in s.warnings and not s.high_fee

    # 98 % of the coins go to the fee although "only change" comes out: that is no internal move.
    burning = chain.build_psbt(
        [c.utxo for c in coins], [(change, 3_000)], testnet=False, redeem_scripts=redeem_map(coins)
    )
    s = chain.decode(burning, testnet=False, owned=owned)
    assert s.fee == 147_000 and s.high_fee and internal not in s.warnings
    assert any(w.startswith(HIGH_FEE_WARNING) and "moved within the wallet" in w for w in s.warnings)


def test_evm_dust_value_with_a_large_fee_is_flagged() -> None:
    chain = evm()
    s = chain.decode(chain.build_transfer(to=TO, value=1000, nonce=0, chain_id=1, max_fee_per_gas=GWEI), testnet=False)
    assert s.high_fee and any(w.startswith(HIGH_FEE_WARNING) for w in s.warnings)


def test_upper_case_bech32_owned_address_is_still_change() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, K.P2WPKH, 100_000)])
    change = change_address(chain)
    psbt = chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 50_000), (change, 49_000)], testnet=False)
    s = chain.decode(psbt, testnet=False, owned=Owned(addresses=frozenset({change.upper()})))
    assert [o.is_change for o in s.outputs] == [False, True]
    assert s.outputs[1].address == change  # summaries always spell bech32 in lower case
    assert chain.normalize_address(change.upper(), testnet=False) == change


def test_evm_owned_address_in_any_case_is_change_and_summaries_use_eip55() -> None:
    chain = evm()
    s = chain.decode(
        chain.build_transfer(to=TO.lower(), value=10**18, nonce=0, chain_id=1, max_fee_per_gas=GWEI),
        testnet=False,
        owned=Owned(addresses=frozenset({TO.lower()})),
    )
    assert s.outputs[0].address == TO and s.outputs[0].is_change
