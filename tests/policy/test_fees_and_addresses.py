"""The fee check (max_fee_percent), addresses compared in canonical spelling, and readable reasons.

The PSBTs are real: built and decoded by the BTC chain module, then reduced by ``from_tx_summary``,
exactly the path a withdrawal request takes.
"""

from __future__ import annotations

import copy
import dataclasses

import cbor2
import pytest

from agent.chains import Owned, get_chain
from agent.chains.evm import GWEI, EvmChain
from agent.chains.utxo import AddressKind, UtxoChain
from agent.errors import PolicyFormatError
from agent.policy import (
    AssetLimits,
    AssetUnit,
    Outcome,
    Policy,
    Reason,
    RequestSummary,
    Rule,
    SummaryOutput,
    UnknownDestination,
    canonical_ref,
    evaluate,
    from_tx_summary,
)
from agent.policy.rules import DEFAULT_MAX_FEE_PERCENT
from tests.chains.utxo_helpers import MNEMONIC, make_coins

MONDAY_10 = 1750068000
WALLET = "26d3883e-4e17-48b3-a0ee-09a3e484ac83"
EXTERNAL = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
BTC = 100_000_000
RULE = Rule(
    approvals_required=2,
    assets={"BTC": AssetLimits(per_tx=10 * BTC)},
    allowlist=frozenset({EXTERNAL}),
    unknown_destination=UnknownDestination.DENY,
    escalate_by=1,
)
POLICY = Policy(generation=1, default=RULE)


def btc() -> UtxoChain:
    chain = get_chain("BTC")
    assert isinstance(chain, UtxoChain)
    return chain


def decoded_request(outputs: list[tuple[str, int]], coins: int = 100_000, owned: Owned | None = None) -> RequestSummary:
    chain = btc()
    utxos = [c.utxo for c in make_coins(chain, [(0, AddressKind.P2WPKH, coins)])]
    psbt = chain.build_psbt(utxos, outputs, testnet=False)
    return from_tx_summary(chain.decode(psbt, testnet=False, owned=owned), signature_id=WALLET, native_asset="BTC")


def effects(decision: object) -> dict[str, Outcome | None]:
    return {r.rule: r.effect for r in decision.reasons}  # type: ignore[attr-defined]


def test_default_threshold_is_ten_percent() -> None:
    assert Rule().max_fee_percent == DEFAULT_MAX_FEE_PERCENT == 10


def test_a_99_percent_fee_psbt_escalates() -> None:
    summary = decoded_request([(EXTERNAL, 1_000)])  # 100,000 sat in, 99,000 sat of fee
    assert summary.fee == 99_000 and summary.fee_base() == 1_000
    d = evaluate(summary, POLICY, [], MONDAY_10)
    assert d.outcome is Outcome.ESCALATE and d.approvals_required == 3
    assert effects(d)["fee"] is Outcome.ESCALATE
    reason = next(r for r in d.reasons if r.rule == "fee")
    assert reason.detail == (
        "the fee of 0.00099 BTC (99000 sat) is 9900 % of the 0.00001 BTC (1000 sat) sent: "
        "above the 10 % threshold (max_fee_percent)"
    )


def test_an_ordinary_fee_does_not_escalate() -> None:
    summary = decoded_request([(EXTERNAL, 90_000)])  # 10,000 sat of fee is 11.1 % of 90,000 sent
    assert evaluate(summary, POLICY, [], MONDAY_10).outcome is Outcome.ESCALATE
    summary = decoded_request([(EXTERNAL, 95_000)])  # 5,000 sat = 5.3 %
    d = evaluate(summary, POLICY, [], MONDAY_10)
    assert d.outcome is Outcome.ALLOW and "fee" not in effects(d)


def test_threshold_is_configurable_and_can_be_turned_off() -> None:
    summary = decoded_request([(EXTERNAL, 1_000)])
    generous = Policy(1, dataclasses.replace(RULE, max_fee_percent=10_000))
    assert evaluate(summary, generous, [], MONDAY_10).outcome is Outcome.ALLOW  # 9,900 % <= 10,000 %
    off = Policy(1, dataclasses.replace(RULE, max_fee_percent=None))
    assert evaluate(summary, off, [], MONDAY_10).outcome is Outcome.ALLOW


def test_high_fee_consolidation_escalates_ordinary_one_does_not() -> None:
    chain = btc()
    change = chain.address_from_xpub(chain.xpub_from_mnemonic(MNEMONIC, testnet=False), 1, testnet=False)
    owned = Owned(addresses=frozenset({change}))
    burning = decoded_request([(change, 2_000)], owned=owned)
    assert burning.destinations == () and burning.fee_base() == 2_000
    d = evaluate(burning, POLICY, [], MONDAY_10)
    assert d.outcome is Outcome.ESCALATE and "moved within the wallet" in next(
        r.detail for r in d.reasons if r.rule == "fee"
    )
    ordinary = decoded_request([(change, 99_000)], owned=owned)
    assert evaluate(ordinary, POLICY, [], MONDAY_10).outcome is Outcome.ALLOW


def test_fee_with_nothing_else_moving_escalates() -> None:
    summary = RequestSummary("BTC", "mainnet", WALLET, (SummaryOutput("script:6a00", 0, "BTC"),), 500, "BTC")
    rule = dataclasses.replace(RULE, unknown_destination=UnknownDestination.ALLOW)
    d = evaluate(summary, Policy(1, rule), [], MONDAY_10)
    assert effects(d)["fee"] is Outcome.ESCALATE and "nothing else moves" in d.explain()


def test_token_transfer_and_opaque_calls_are_not_fee_checked() -> None:
    chain = get_chain("ETH")
    assert isinstance(chain, EvmChain)
    usdt = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
    to = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    tx = chain.build_erc20_transfer(token=usdt, to=to, amount=1, nonce=0, chain_id=1, max_fee_per_gas=30 * GWEI)
    summary = from_tx_summary(chain.decode(tx, testnet=False), signature_id=WALLET, native_asset="ETH")
    assert summary.fee_base() is None
    rule = Rule(assets={usdt: AssetLimits(), "ETH": AssetLimits()}, allowlist=frozenset({to}))
    d = evaluate(summary, Policy(1, rule), [], MONDAY_10)
    assert d.outcome is Outcome.ALLOW and "fee" not in effects(d)
    assert dataclasses.replace(summary, opaque=True).fee_base() is None


def test_reasons_name_units_when_the_summary_knows_them() -> None:
    summary = decoded_request([(EXTERNAL, 20 * BTC)], coins=20 * BTC + 10_000)
    assert summary.units == (AssetUnit("BTC", "BTC", 8, "sat"),)
    tight = Policy(1, dataclasses.replace(RULE, assets={"BTC": AssetLimits(per_tx=BTC)}))
    d = evaluate(summary, tight, [], MONDAY_10)
    reason = next(r for r in d.reasons if r.rule == "per-tx-limit")
    # spent = 20 BTC sent + 10,000 sat of fee
    assert reason.detail == "20.0001 BTC (2000010000 sat) exceeds the per-transaction limit of 1 BTC (100000000 sat)"


def test_known_token_reasons_use_its_decimals() -> None:
    chain = get_chain("ETH")
    assert isinstance(chain, EvmChain)
    usdt = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
    to = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    tx = chain.build_erc20_transfer(token=usdt, to=to, amount=2_500_000, nonce=0, chain_id=1, max_fee_per_gas=GWEI)
    summary = from_tx_summary(chain.decode(tx, testnet=False), signature_id=WALLET, native_asset="ETH")
    rule = Rule(assets={usdt: AssetLimits(per_tx=1_000_000), "ETH": AssetLimits()}, allowlist=frozenset({to}))
    d = evaluate(summary, Policy(1, rule), [], MONDAY_10)
    assert "2.5 USDT (2500000 base units) exceeds the per-transaction limit of 1 USDT" in d.explain()


# --- canonical spelling ---------------------------------------------------------------------------
def test_upper_case_bech32_allowlist_entry_matches() -> None:
    summary = decoded_request([(EXTERNAL, 95_000)])
    upper = Policy(1, dataclasses.replace(RULE, allowlist=frozenset({EXTERNAL.upper()})))
    d = evaluate(summary, upper, [], MONDAY_10)
    assert d.outcome is Outcome.ALLOW and "allowlist" not in effects(d)
    # The same through the policy document, as `kms-agent policy set` reads it (a QR code's spelling).
    raw = upper.to_dict()
    assert raw["default"]["allowlist"] == [EXTERNAL]
    raw["default"]["allowlist"] = [EXTERNAL.upper()]
    parsed = Policy.from_dict(raw)
    assert parsed.default.allowlist == frozenset({EXTERNAL})
    assert evaluate(summary, parsed, [], MONDAY_10).outcome is Outcome.ALLOW


def test_other_case_insensitive_formats_fold_and_case_sensitive_ones_do_not() -> None:
    assert canonical_ref("TB1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KXPJZSX") == "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"
    assert canonical_ref("LTC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KGMN4N9") == "ltc1qw508d6qejxtdg4y5r3zarvary0c5xw7kgmn4n9"
    cash = "bitcoincash:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a"
    assert canonical_ref(cash.upper()) == cash
    xdc = "xdc5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    assert canonical_ref(xdc) == canonical_ref(xdc.lower()) == xdc.lower()
    assert canonical_ref("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed") == "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
    # base58 is case-sensitive; tickers and script references are not addresses to fold
    for kept in ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "BTC", "script:6a00", "bc1qcold"):
        assert canonical_ref(kept) == kept
    # mixed-case bech32 is invalid (BIP-173): kept, so it can never match a decoded address
    assert canonical_ref("bc1QW508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4") == "bc1QW508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"


def test_entries_that_fold_to_the_same_address_are_duplicates() -> None:
    raw = POLICY.to_dict()
    raw["default"]["allowlist"] = sorted([EXTERNAL.upper(), EXTERNAL])
    with pytest.raises(PolicyFormatError, match="twice"):
        Policy.from_dict(raw)
    raw = POLICY.to_dict()
    raw["default"]["allowlist"] = ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"]
    with pytest.raises(PolicyFormatError, match="lower case"):
        Policy.from_dict(raw)


# --- the policy document ---------------------------------------------------------------------------
def test_max_fee_percent_round_trips_and_is_strict() -> None:
    policy = Policy(2, dataclasses.replace(RULE, max_fee_percent=25))
    raw = policy.to_dict()
    assert raw["default"]["max_fee_percent"] == 25
    assert Policy.from_dict(raw) == policy
    assert Policy.from_canonical_bytes(policy.canonical_bytes()) == policy
    off = Policy(2, dataclasses.replace(RULE, max_fee_percent=None))
    assert Policy.from_dict(off.to_dict()) == off
    for bad in (-1, True, "10", 1.5):
        broken = copy.deepcopy(raw)
        broken["default"]["max_fee_percent"] = bad
        with pytest.raises(PolicyFormatError, match="max_fee_percent"):
            Policy.from_dict(broken)
    with pytest.raises(PolicyFormatError):
        Rule(max_fee_percent=-5)


def test_a_document_written_before_max_fee_percent_still_reads() -> None:
    raw = POLICY.to_dict()
    del raw["default"]["max_fee_percent"]
    old = Policy.from_dict(raw)
    assert old == POLICY and old.default.max_fee_percent == 10
    legacy_cbor = cbor2.dumps(raw, canonical=True)
    assert Policy.from_canonical_bytes(legacy_cbor) == POLICY
    # ... but only the default's own absence is legacy: other keys are still required.
    del raw["default"]["escalate_by"]
    with pytest.raises(PolicyFormatError, match="missing"):
        Policy.from_dict(raw)


def test_stored_reasons_read_back() -> None:
    d = evaluate(decoded_request([(EXTERNAL, 1_000)]), POLICY, [], MONDAY_10)
    assert tuple(Reason.from_json(r) for r in d.to_json()["reasons"]) == d.reasons
    assert Reason.from_json({"rule": "x", "detail": "y", "effect": "bogus"}) == Reason("x", "y", None)
    assert Reason.from_json("junk") == Reason("reason", "junk", None)
    assert Reason.from_json({"rule": "x", "detail": "y", "effect": ["deny"]}) == Reason("x", "y", None)
