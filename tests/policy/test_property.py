"""Property: evaluate never raises, whatever the summary, amounts, history and clock."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    evaluate,
)

ASSETS = st.sampled_from(["BTC", "ETH", "0xdAC17F958D2ee523a2206206994597C13D831ec7", "", "LTC"])
ADDRESSES = st.one_of(st.sampled_from(["bc1qcold", "0xABC", "", "script:"]), st.text(max_size=12))
AMOUNTS = st.one_of(st.integers(min_value=-(2**70), max_value=2**300), st.sampled_from([0, 1, 10**8, 2**256]))
OUTPUTS = st.builds(SummaryOutput, ADDRESSES, AMOUNTS, ASSETS, st.booleans())
SUMMARIES = st.builds(
    RequestSummary,
    chain=st.sampled_from(["BTC", "ETH", "", "LTC"]),
    network=st.sampled_from(["mainnet", "testnet", ""]),
    signature_id=st.sampled_from(["w-1", "w-2", ""]),
    outputs=st.lists(OUTPUTS, max_size=5).map(tuple),
    fee=AMOUNTS,
    fee_asset=ASSETS,
    opaque=st.booleans(),
)
POLICY = Policy(
    generation=1,
    default=Rule(
        assets={"BTC": AssetLimits(10**8, 2 * 10**8, 5 * 10**8), "ETH": AssetLimits(per_day=10**18)},
        allowlist=frozenset({"bc1qcold"}),
        unknown_destination=UnknownDestination.ESCALATE,
        time_window=TimeWindow(frozenset(range(5)), 8, 18),
    ),
    chains={"ETH": RuleOverride.of(over_limit=OverLimit.ESCALATE)},
    wallets={"w-2": RuleOverride.of(frozen=True)},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    summary=SUMMARIES,
    history=st.lists(st.builds(HistoryEntry, st.integers(-(2**40), 2**40), SUMMARIES), max_size=6),
    now=st.integers(min_value=-(2**63), max_value=2**63),
)
def test_evaluate_never_raises(summary: RequestSummary, history: list[HistoryEntry], now: int) -> None:
    decision = evaluate(summary, POLICY, history, now)
    assert decision.outcome in set(Outcome)
    assert decision.approvals_required >= 1
    assert decision.reasons
    if decision.outcome is Outcome.DENY:
        assert any(r.effect is Outcome.DENY for r in decision.reasons)
    if any(o.amount < 0 for o in summary.outputs) or summary.fee < 0:
        assert decision.outcome is Outcome.DENY
    decision.to_json()
