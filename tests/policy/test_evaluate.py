"""Policy evaluation: limits, velocity, allowlist, time window, freeze, overrides; every reason explained."""

from __future__ import annotations

import dataclasses

import pytest

from agent.approvals import QuorumRule
from agent.errors import PolicyDenied
from agent.policy import (
    AssetLimits,
    HistoryEntry,
    Outcome,
    OverLimit,
    Policy,
    RequestSummary,
    Rule,
    RuleOverride,
    SummaryOutput,
    TimeWindow,
    UnknownDestination,
    VelocityScope,
    evaluate,
    near_limit,
)

MONDAY_10 = 1750068000  # 2025-06-16 10:00 UTC
COLD = "bc1qcoldwalletxxxxxxxxxxxxxxxxxxxxxxxxxx"
WALLET = "26d3883e-4e17-48b3-a0ee-09a3e484ac83"
OTHER_WALLET = "9b2f3a51-0000-4000-8000-000000000001"
BTC = 100_000_000

RULE = Rule(
    approvals_required=2,
    assets={"BTC": AssetLimits(per_tx=1 * BTC, per_hour=2 * BTC, per_day=5 * BTC)},
    allowlist=frozenset({COLD}),
    unknown_destination=UnknownDestination.ESCALATE,
    escalate_by=1,
)
POLICY = Policy(generation=3, default=RULE)


def tx(
    amount: int, *, to: str = COLD, wallet: str = WALLET, chain: str = "BTC", change: int = 0, fee: int = 0
) -> RequestSummary:
    outs = [SummaryOutput(to, amount, "BTC")]
    if change:
        outs.append(SummaryOutput("bc1qchange", change, "BTC", is_change=True))
    return RequestSummary(chain, "mainnet", wallet, tuple(outs), fee, "BTC")


def rules_of(decision: object, effect: Outcome | None = None) -> list[str]:
    return [r.rule for r in decision.reasons if effect is None or r.effect is effect]  # type: ignore[attr-defined]


def test_plain_withdrawal_is_allowed_with_m_approvals() -> None:
    d = evaluate(tx(BTC // 2, change=10 * BTC, fee=500), POLICY, [], MONDAY_10)
    assert d.outcome is Outcome.ALLOW and d.approvals_required == 2
    assert d.quorum_rule() == QuorumRule(2, False, RULE.approval_ttl, 3)
    assert any(r.rule == "rule" and "default" in r.detail for r in d.reasons)
    d.raise_if_denied()


def test_change_is_not_spent_but_the_fee_is() -> None:
    assert evaluate(tx(BTC - 500, change=50 * BTC, fee=500), POLICY, [], MONDAY_10).outcome is Outcome.ALLOW
    d = evaluate(tx(BTC, fee=1), POLICY, [], MONDAY_10)
    assert d.outcome is Outcome.DENY and "per-tx-limit" in rules_of(d, Outcome.DENY)


def test_per_transaction_limit() -> None:
    d = evaluate(tx(BTC + 1), POLICY, [], MONDAY_10)
    assert d.outcome is Outcome.DENY
    reason = next(r for r in d.reasons if r.rule == "per-tx-limit")
    # No units in this hand-built summary: amounts are named as what they are, base units.
    assert "100000001 base units of BTC exceeds the per-transaction limit of 100000000 base units of BTC" in (
        reason.detail
    )
    assert d.approvals_required == 2  # never 0 on deny
    with pytest.raises(PolicyDenied, match="per-tx-limit"):
        d.raise_if_denied()


def test_over_limit_can_escalate_instead() -> None:
    policy = dataclasses.replace(
        POLICY, default=dataclasses.replace(RULE, over_limit=OverLimit.ESCALATE, escalate_by=2)
    )
    d = evaluate(tx(BTC + 1), policy, [], MONDAY_10)
    assert d.outcome is Outcome.ESCALATE and d.approvals_required == 4


def history(*entries: tuple[int, int], wallet: str = WALLET) -> list[HistoryEntry]:
    return [HistoryEntry(MONDAY_10 - ago, tx(amount, wallet=wallet)) for ago, amount in entries]


def test_hourly_velocity_is_rolling() -> None:
    past = history((3599, BTC), (1800, BTC // 2))  # 1.5 BTC within the last hour
    d = evaluate(tx(BTC // 2 + 1), POLICY, past, MONDAY_10)
    assert d.outcome is Outcome.DENY and rules_of(d, Outcome.DENY) == ["velocity-hour"]
    assert "150000000 base units of BTC already signed in the last hour" in d.explain()
    # One second later the oldest entry has left the window.
    assert evaluate(tx(BTC // 2 + 1), POLICY, past, MONDAY_10 + 1).outcome is Outcome.ALLOW
    # Exactly at the limit is allowed (but reported as near it).
    at_limit = evaluate(tx(BTC // 2), POLICY, past, MONDAY_10)
    assert at_limit.outcome is Outcome.ALLOW
    assert [(u.window, u.used, u.limit) for u in at_limit.near_limit] == [("hour", 2 * BTC, 2 * BTC)]


def test_daily_velocity_is_rolling() -> None:
    past = history(*[(3600 * h, BTC) for h in (2, 5, 9, 23)], (86400, BTC))  # the last one is exactly a day old
    d = evaluate(tx(BTC), POLICY, past, MONDAY_10)
    assert d.outcome is Outcome.ALLOW
    d = evaluate(tx(BTC), POLICY, [*past, *history((3 * 3600, 1))], MONDAY_10)
    assert d.outcome is Outcome.DENY and rules_of(d, Outcome.DENY) == ["velocity-day"]


def test_velocity_scope_wallet_vs_chain() -> None:
    other = history((600, int(1.8 * BTC)), wallet=OTHER_WALLET)
    assert evaluate(tx(BTC // 2), POLICY, other, MONDAY_10).outcome is Outcome.ALLOW
    chain_scoped = dataclasses.replace(POLICY, default=dataclasses.replace(RULE, velocity_scope=VelocityScope.CHAIN))
    d = evaluate(tx(BTC // 2), chain_scoped, other, MONDAY_10)
    assert d.outcome is Outcome.DENY and "chain:BTC/mainnet" in d.explain()


def test_unknown_destination_escalates_or_denies() -> None:
    d = evaluate(tx(1000, to="bc1qstranger"), POLICY, [], MONDAY_10)
    assert d.outcome is Outcome.ESCALATE and d.approvals_required == 3
    assert "bc1qstranger is not on the allowlist" in d.explain()
    deny = dataclasses.replace(POLICY, default=dataclasses.replace(RULE, unknown_destination=UnknownDestination.DENY))
    assert evaluate(tx(1000, to="bc1qstranger"), deny, [], MONDAY_10).outcome is Outcome.DENY
    off = dataclasses.replace(POLICY, default=dataclasses.replace(RULE, unknown_destination=UnknownDestination.ALLOW))
    assert evaluate(tx(1000, to="bc1qstranger"), off, [], MONDAY_10).outcome is Outcome.ALLOW


def test_allowlist_compares_evm_addresses_case_insensitively() -> None:
    checksummed = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    rule = Rule(
        assets={"ETH": AssetLimits()},
        allowlist=frozenset({checksummed.lower()}),
        unknown_destination=UnknownDestination.DENY,
    )
    summary = RequestSummary("ETH", "mainnet", WALLET, (SummaryOutput(checksummed, 10, "ETH"),), 0, "ETH")
    assert evaluate(summary, Policy(1, rule), [], MONDAY_10).outcome is Outcome.ALLOW


def test_unlisted_asset_is_denied() -> None:
    summary = RequestSummary(
        "ETH", "mainnet", WALLET, (SummaryOutput(COLD, 5, "0xdAC17F958D2ee523a2206206994597C13D831ec7"),), 21000, "ETH"
    )
    d = evaluate(summary, POLICY, [], MONDAY_10)
    assert d.outcome is Outcome.DENY
    assert sorted(rules_of(d, Outcome.DENY)) == ["asset", "asset"]  # the token and the ETH fee


def test_time_window() -> None:
    office = dataclasses.replace(
        POLICY, default=dataclasses.replace(RULE, time_window=TimeWindow(frozenset(range(5)), 8, 18))
    )
    assert evaluate(tx(1000), office, [], MONDAY_10).outcome is Outcome.ALLOW
    late = evaluate(tx(1000), office, [], MONDAY_10 + 8 * 3600)  # Monday 18:00
    assert late.outcome is Outcome.DENY and "Mon 18:00 UTC is outside" in late.explain()
    sunday = evaluate(tx(1000), office, [], MONDAY_10 - 24 * 3600)
    assert sunday.outcome is Outcome.DENY and "time-window" in rules_of(sunday, Outcome.DENY)
    night = TimeWindow(frozenset(range(7)), 22, 6)
    assert night.allows(0, 23) and night.allows(0, 5) and not night.allows(0, 6) and not night.allows(0, 12)


def test_freeze_switches() -> None:
    assert evaluate(tx(1000), dataclasses.replace(POLICY, frozen=True), [], MONDAY_10).outcome is Outcome.DENY
    wallet_frozen = dataclasses.replace(POLICY, wallets={WALLET: RuleOverride.of(frozen=True)})
    d = evaluate(tx(1000), wallet_frozen, [], MONDAY_10)
    assert d.outcome is Outcome.DENY and "freeze" in rules_of(d, Outcome.DENY)
    assert evaluate(tx(1000, wallet=OTHER_WALLET), wallet_frozen, [], MONDAY_10).outcome is Outcome.ALLOW
    # A wallet override cannot thaw a global freeze.
    thawed = dataclasses.replace(POLICY, frozen=True, wallets={WALLET: RuleOverride.of(frozen=False)})
    assert evaluate(tx(1000), thawed, [], MONDAY_10).outcome is Outcome.DENY


def test_per_wallet_override_beats_chain_beats_default() -> None:
    policy = dataclasses.replace(
        POLICY,
        chains={"BTC": RuleOverride.of(approvals_required=3)},
        wallets={
            WALLET: RuleOverride.of(
                approvals_required=4, assets={"BTC": AssetLimits(per_tx=10 * BTC, per_hour=20 * BTC)}
            )
        },
    )
    d = evaluate(tx(5 * BTC), policy, [], MONDAY_10)
    assert d.outcome is Outcome.ALLOW and d.approvals_required == 4
    assert any(r.rule == "rule" and r.detail == f"rule from default + chain:BTC + wallet:{WALLET}" for r in d.reasons)
    other = evaluate(tx(BTC // 2, wallet=OTHER_WALLET), policy, [], MONDAY_10)
    assert other.approvals_required == 3
    assert evaluate(tx(BTC // 2, chain="LTC", wallet=OTHER_WALLET), policy, [], MONDAY_10).approvals_required == 2
    # The wallet's limits replaced the default's: 5 BTC passes for it, not for another wallet.
    assert evaluate(tx(5 * BTC, wallet=OTHER_WALLET), policy, [], MONDAY_10).outcome is Outcome.DENY


def test_opaque_contract_calls_are_denied_unless_allowed() -> None:
    summary = dataclasses.replace(tx(0), opaque=True)
    assert "contract-call" in rules_of(evaluate(summary, POLICY, [], MONDAY_10), Outcome.DENY)
    allowing = dataclasses.replace(POLICY, default=dataclasses.replace(RULE, allow_contract_calls=True))
    assert evaluate(summary, allowing, [], MONDAY_10).outcome is Outcome.ALLOW


def test_all_reasons_are_reported_together() -> None:
    frozen = dataclasses.replace(POLICY, frozen=True)
    d = evaluate(tx(3 * BTC, to="bc1qstranger"), frozen, history((60, 2 * BTC)), MONDAY_10)
    assert {"freeze", "per-tx-limit", "velocity-hour", "allowlist"} <= set(rules_of(d))
    assert d.outcome is Outcome.DENY


def test_malformed_summary_and_clock_are_denied_not_raised() -> None:
    bad = RequestSummary("BTC", "mainnet", WALLET, (SummaryOutput(COLD, -5, "BTC"),), 0, "BTC")
    assert "summary" in rules_of(evaluate(bad, POLICY, [], MONDAY_10), Outcome.DENY)
    assert "clock" in rules_of(evaluate(tx(1), POLICY, [], -1), Outcome.DENY)
    assert "clock" in rules_of(evaluate(tx(1), POLICY, [], 10**20), Outcome.DENY)


def test_near_limit_report() -> None:
    past = history((60, int(1.7 * BTC)), (7200, int(2.5 * BTC)))
    usage = near_limit(POLICY, past, MONDAY_10)
    assert [(u.scope, u.asset, u.window, u.used, u.percent) for u in usage] == [
        (f"wallet:{WALLET}", "BTC", "day", int(4.2 * BTC), 84),
        (f"wallet:{WALLET}", "BTC", "hour", int(1.7 * BTC), 85),
    ]
    assert near_limit(POLICY, past, MONDAY_10, percent=90) == []


def test_summary_from_a_decoded_erc20_transfer_uses_the_real_recipient() -> None:
    from agent.chains.base import TokenCall, TxKind, TxOutput, TxSummary
    from agent.policy import from_tx_summary

    token = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
    decoded = TxSummary(
        chain="ETH",
        network="mainnet",
        kind=TxKind.TOKEN_TRANSFER,
        inputs=(),
        outputs=(TxOutput(token, 0),),
        fee=21000 * 30 * 10**9,
        asset=token,
        nonce=4,
        chain_id=1,
        token=TokenCall("transfer", token, "0x000000000000000000000000000000000000dEaD", 5 * 10**6),
    )
    summary = from_tx_summary(decoded, signature_id=WALLET, native_asset="ETH")
    assert summary.outputs == (SummaryOutput("0x000000000000000000000000000000000000dEaD", 5 * 10**6, token),)
    assert summary.spent() == {token.lower(): 5 * 10**6, "ETH": 21000 * 30 * 10**9}
    assert not summary.opaque
    rule = Rule(
        assets={token: AssetLimits(per_tx=10**6), "ETH": AssetLimits()}, unknown_destination=UnknownDestination.ALLOW
    )
    d = evaluate(summary, Policy(1, rule), [], MONDAY_10)
    assert d.outcome is Outcome.DENY and rules_of(d, Outcome.DENY) == ["per-tx-limit"]

    call = dataclasses.replace(decoded, kind=TxKind.CONTRACT_CALL, token=None, outputs=(TxOutput(token, 7),))
    opaque = from_tx_summary(call, signature_id=WALLET, native_asset="ETH")
    assert opaque.opaque and opaque.outputs == (SummaryOutput(token, 7, "ETH"),)


def test_summary_from_a_psbt_keeps_change_and_unaddressed_scripts() -> None:
    from agent.chains.base import TxKind, TxOutput, TxSummary
    from agent.policy import from_tx_summary

    decoded = TxSummary(
        chain="BTC",
        network="mainnet",
        kind=TxKind.TRANSFER,
        inputs=(),
        outputs=(
            TxOutput(COLD, 1000),
            TxOutput("bc1qchange", 5000, is_change=True),
            TxOutput(None, 1, script="6a0568656c6c6f"),
        ),
        fee=300,
        asset="BTC",
    )
    summary = from_tx_summary(decoded, signature_id=WALLET, native_asset="BTC")
    assert summary.destinations == (COLD, "script:6a0568656c6c6f")
    assert summary.spent() == {"BTC": 1301}
    assert evaluate(summary, POLICY, [], MONDAY_10).outcome is Outcome.ESCALATE
