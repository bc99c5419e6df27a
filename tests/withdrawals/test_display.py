"""The approver's summary: decimal amounts with base units beside them, and nothing raw on the terminal.

Every summary here comes from the chain modules decoding real transactions (PSBTs built by the BTC
module, EIP-1559 transactions by the ETH module); the policy reasons come from ``evaluate``.
"""

from __future__ import annotations

import dataclasses
import unicodedata

import pytest

from agent.chains import Owned, TxSummary, get_chain
from agent.chains.evm import GWEI, EvmChain
from agent.chains.utxo import AddressKind, UtxoChain
from agent.policy import (
    AssetLimits,
    Outcome,
    Policy,
    Reason,
    Rule,
    UnknownDestination,
    evaluate,
    from_tx_summary,
)
from agent.text import escape_text, format_units, percent_text
from agent.withdrawals.display import render_request
from tests.chains.utxo_helpers import MNEMONIC, make_coins

TO = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
USDT = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
EXTERNAL = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
NOW = 1750068000


def eth() -> EvmChain:
    chain = get_chain("ETH")
    assert isinstance(chain, EvmChain)
    return chain


def btc() -> UtxoChain:
    chain = get_chain("BTC")
    assert isinstance(chain, UtxoChain)
    return chain


def render(summary: TxSummary, **overrides: object) -> str:
    args: dict[str, object] = {
        "chain": summary.chain,
        "testnet": summary.network != "mainnet",
        "signature_id": "w-1",
        "index": 0,
        "initiator": "app:exchange",
        "status": "pending",
        "reasons": (),
        "approvals": 0,
        "approvals_required": 2,
        "request_id": "0f" * 16,
    }
    args.update(overrides)
    return render_request(summary, **args)  # type: ignore[arg-type]


def test_eth_transfer_in_ether_with_wei_beside() -> None:
    chain = eth()
    tx = chain.build_transfer(to=TO, value=10**17, nonce=7, chain_id=1, max_fee_per_gas=21 * GWEI)
    text = render(chain.decode(tx, testnet=False))
    assert text.splitlines() == [
        f"request {'0f' * 16}  [pending]",
        "  ETH MAINNET  wallet w-1  index 0  initiated by app:exchange",
        f"  pay 0.1 ETH (100000000000000000 wei) to {TO}",
        "  fee up to 0.000441 ETH (441000000000000 wei): 21000 gas x 21 gwei, 0.44 % of the value sent"
        "  nonce 7  type eip1559",
        "  approvals: 0 of 2",
    ]


def test_known_erc20_in_token_units() -> None:
    chain = eth()
    tx = chain.build_erc20_transfer(token=USDT, to=TO, amount=100_500_000, nonce=1, chain_id=1, max_fee_per_gas=GWEI)
    text = render(chain.decode(tx, testnet=False))
    assert f"  call USDT contract {USDT}: transfer" in text
    assert f"  pay 100.5 USDT (100500000 base units, 6 decimals) to {TO}" in text
    assert "  fee up to 0.0001 ETH (100000000000000 wei): 100000 gas x 1 gwei" in text
    assert "UNKNOWN" not in text


def test_unknown_erc20_in_raw_units() -> None:
    chain = eth()
    token = "0x" + "12" * 20
    tx = chain.build_erc20_transfer(token=token, to=TO, amount=100_500_000, nonce=1, chain_id=1, max_fee_per_gas=GWEI)
    text = render(chain.decode(tx, testnet=False))
    assert f"  call an UNKNOWN token contract {token}: transfer" in text
    assert f"  pay 100500000 raw units of an UNKNOWN token {token} (decimals unknown) to {TO}" in text


def test_unlimited_approve_is_spelled_out() -> None:
    from agent.chains.evm import erc20_approve_data

    chain = eth()
    spender = "0x" + "ab" * 20
    tx = chain.build_transfer(
        to=USDT,
        value=0,
        nonce=0,
        chain_id=1,
        gas=60_000,
        max_fee_per_gas=GWEI,
        data=erc20_approve_data(bytes.fromhex("ab" * 20), 2**256 - 1),
    )
    text = render(chain.decode(tx, testnet=False))
    assert "to spend an UNLIMITED amount of USDT" in text and spender in text.lower()


def test_btc_payment_with_change_in_bitcoin_with_sat_beside() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, AddressKind.P2WPKH, 150_000_000)])
    change = chain.address_from_xpub(chain.xpub_from_mnemonic(MNEMONIC, testnet=False), 1, testnet=False)
    psbt = chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 50_000_000), (change, 99_990_000)], testnet=False)
    s = chain.decode(psbt, testnet=False, owned=Owned(addresses=frozenset({change})))
    lines = render(s, testnet=False).splitlines()
    assert lines[2] == "  spend 1 coin worth 1.5 BTC (150000000 sat)"
    assert lines[3] == f"  pay 0.5 BTC (50000000 sat) to {EXTERNAL}"
    assert lines[4] == f"  pay 0.9999 BTC (99990000 sat) to {change} (change: back to this wallet)"
    assert lines[5].startswith("  fee 0.0001 BTC (10000 sat): 70.9 sat/vB, 141 vB, 0.02 % of the value sent  txid ")
    assert not any("WARNING" in line for line in lines)


def test_testnet_is_said_and_mainnet_shouted() -> None:
    chain = eth()
    tx = chain.build_transfer(to=TO, value=1, nonce=0, chain_id=11155111, max_fee_per_gas=GWEI)
    assert "  ETH testnet  wallet" in render(chain.decode(tx, testnet=True))


def test_ansi_escape_in_initiator_arrives_escaped() -> None:
    chain = eth()
    tx = chain.build_transfer(to=TO, value=9 * 10**17, nonce=0, chain_id=1, max_fee_per_gas=GWEI)
    # The attack from the issue: erase the real line, move up, draw a fake one.
    evil = "app:x\x1b[2K\x1b[1A\r  pay 0.001 ETH to 0xfake\n\u202eevil\x9b31m"
    text = render(chain.decode(tx, testnet=False), initiator=evil)
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text and "\x9b" not in text
    assert "initiated by app:x\\x1b[2K\\x1b[1A\\x0d  pay 0.001 ETH to 0xfake\\x0a\\u202eevil\\x9b31m" in text
    assert len(text.splitlines()) == 5  # the newline in the initiator made no line of its own
    assert f"  pay 0.9 ETH (900000000000000000 wei) to {TO}" in text
    assert all(not unicodedata.category(c).startswith("C") for c in text.replace("\n", ""))


def test_every_free_text_field_is_escaped() -> None:
    chain = eth()
    s = chain.decode(
        chain.build_transfer(to=TO, value=10**18, nonce=0, chain_id=1, max_fee_per_gas=GWEI), testnet=False
    )
    s = dataclasses.replace(s, warnings=("note\x1b]0;title\x07",))
    text = render(
        s,
        status="pending\x1b[8m",
        signature_id="w\u2066-1",
        request_id="id\x00",
        reasons=(Reason("allow\x1blist", "0xabc\x1b[1A is not on the allowlist", Outcome.ESCALATE),),
    )
    assert "\x1b" not in text and "\x00" not in text and "\x07" not in text and "\u2066" not in text
    assert "  WARNING: note\\x1b]0;title\\x07" in text
    assert "  policy [allow\\x1blist] 0xabc\\x1b[1A is not on the allowlist -> escalate" in text
    assert "[pending\\x1b[8m]" in text and "wallet w\\u2066-1" in text and "request id\\x00" in text


def test_99_percent_fee_psbt_is_flagged_and_escalated() -> None:
    chain = btc()
    coins = make_coins(chain, [(0, AddressKind.P2WPKH, 100_000)])
    psbt = chain.build_psbt([c.utxo for c in coins], [(EXTERNAL, 1_000)], testnet=False)
    s = chain.decode(psbt, testnet=False)
    rule = Rule(
        assets={"BTC": AssetLimits(per_tx=10**8)},
        allowlist=frozenset({EXTERNAL}),
        unknown_destination=UnknownDestination.DENY,
    )
    decision = evaluate(from_tx_summary(s, signature_id="w-1", native_asset="BTC"), Policy(1, rule), [], NOW)
    assert decision.outcome is Outcome.ESCALATE and decision.approvals_required == 3
    text = render(
        s,
        reasons=decision.reasons,
        approvals_required=decision.approvals_required,
        max_fee_percent=decision.rule.max_fee_percent,
    )
    assert "  fee 0.00099 BTC (99000 sat): 900.0 sat/vB, 110 vB, 9900 % of the value sent" in text
    assert "  WARNING: HIGH FEE: the fee is 9900 % of the value sent, 99 % of the coins spent (threshold 10 %)" in text
    assert "high fee:" not in text  # the chain's own warning is replaced by the policy-threshold line
    assert "  policy [fee] the fee of 0.00099 BTC (99000 sat) is 9900 % of the 0.00001 BTC (1000 sat) sent" in text
    assert text.endswith("  approvals: 0 of 3")
    # Without a threshold of our own the chain module's warning still shows.
    assert "  WARNING: high fee: 0.00099 BTC" in render(s, max_fee_percent=None)


def test_stored_reasons_render_like_fresh_ones() -> None:
    chain = eth()
    s = chain.decode(chain.build_transfer(to=TO, value=1, nonce=0, chain_id=1, max_fee_per_gas=GWEI), testnet=False)
    decision = evaluate(from_tx_summary(s, signature_id="w-1", native_asset="ETH"), Policy(1, Rule()), [], NOW)
    stored = [Reason.from_json(r) for r in decision.to_json()["reasons"]]
    assert render(s, reasons=stored) == render(s, reasons=decision.reasons)


# --- the helpers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("app:exchange", "app:exchange"),
        ("Jürgen 日本 ✓", "Jürgen 日本 ✓"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("tab\there", "tab\\x09here"),
        ("cr\rlf\n", "cr\\x0dlf\\x0a"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85\x9b", "c1\\x85\\x9b"),
        ("\u202aa\u202bb\u202cc\u202dd\u202ee", "\\u202aa\\u202bb\\u202cc\\u202dd\\u202ee"),
        ("\u2066a\u2067b\u2068c\u2069", "\\u2066a\\u2067b\\u2068c\\u2069"),
        ("zero\u200bwidth\u2028line", "zero\\u200bwidth\\u2028line"),
        ("typed \\x1b", "typed \\\\x1b"),
        ("\udcff", "\\udcff"),
    ],
)
def test_escape_text(raw: str, shown: str) -> None:
    assert escape_text(raw) == shown
    assert "\n" not in shown and all(c.isprintable() for c in shown)


def test_format_units_and_percent() -> None:
    assert format_units(100000000000000000, 18) == "0.1"
    assert format_units(1, 18) == "0.000000000000000001"
    assert format_units(150_000_000, 8) == "1.5"
    assert format_units(0, 8) == "0" and format_units(7, 0) == "7" and format_units(-5, 1) == "-0.5"
    assert format_units(2**256 - 1, 18).startswith("115792089237316195423570985008687907853269984665640564039457.")
    with pytest.raises(ValueError):
        format_units(1, -1)
    assert percent_text(99_000, 100_000) == "99 %"
    assert percent_text(1, 3) == "33.33 %" and percent_text(1, 20) == "5 %" and percent_text(11, 100) == "11 %"
    assert percent_text(5, 0) == "all" and percent_text(0, 0) == "0 %"
