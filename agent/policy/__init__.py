"""Custody policy: rules per wallet and chain, and their pure evaluation (docs/policy.md)."""

from __future__ import annotations

from agent.policy.evaluate import (
    NEAR_LIMIT_PERCENT,
    Decision,
    LimitUsage,
    Outcome,
    Reason,
    evaluate,
    near_limit,
)
from agent.policy.payloads import policy_change_payload, policy_change_rule, withdrawal_payload
from agent.policy.rules import (
    POLICY_CHANGE_TTL,
    AssetLimits,
    OverLimit,
    Policy,
    Rule,
    RuleOverride,
    TimeWindow,
    UnknownDestination,
    VelocityScope,
    initial_policy,
    policy_of,
)
from agent.policy.summary import (
    AssetUnit,
    HistoryEntry,
    RequestSummary,
    SummaryOutput,
    canonical_ref,
    from_tx_summary,
)

__all__ = [
    "NEAR_LIMIT_PERCENT",
    "POLICY_CHANGE_TTL",
    "AssetLimits",
    "AssetUnit",
    "Decision",
    "HistoryEntry",
    "LimitUsage",
    "Outcome",
    "OverLimit",
    "Policy",
    "Reason",
    "RequestSummary",
    "Rule",
    "RuleOverride",
    "SummaryOutput",
    "TimeWindow",
    "UnknownDestination",
    "VelocityScope",
    "canonical_ref",
    "evaluate",
    "from_tx_summary",
    "initial_policy",
    "near_limit",
    "policy_change_payload",
    "policy_change_rule",
    "policy_of",
    "withdrawal_payload",
]
