"""Policy evaluation: a pure function from (summary, policy, history, now) to an explained decision.

No I/O and no clock: the caller passes ``now`` and the history of signed withdrawals (from the
audit log), so every rule is a unit test and the decision can be recomputed later. It never
raises: anything it cannot judge (a malformed summary, a clock outside the calendar) is a deny
with a reason. Every check runs and reports, so an operator sees *all* the reasons at once;
the outcome is ``deny`` if any check denies, else ``escalate`` if any escalates, else ``allow``
(docs/policy.md §3 lists the order).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from agent.approvals.quorum import QuorumRule
from agent.policy.rules import OverLimit, Policy, Rule, UnknownDestination, VelocityScope
from agent.policy.summary import AssetUnit, HistoryEntry, RequestSummary, SummaryOutput, canonical_ref
from agent.text import format_units, percent_text

HOUR = 3600
DAY = 24 * HOUR
WINDOWS = (("hour", HOUR), ("day", DAY))
#: ``near_limit`` threshold: usage at or above this share of a limit is reported.
NEAR_LIMIT_PERCENT = 80
#: The longest rolling window: a withdrawal signed longer ago than this never counts again.
VELOCITY_HORIZON = DAY
_MAX_TS = 253402300799  # 9999-12-31T23:59:59Z: beyond it datetime cannot say which weekday it is


class Outcome(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    #: Allowed, but with ``escalate_by`` more approvals.
    ESCALATE = "escalate"


_Add = Callable[[str, str, "Outcome | None"], None]


@dataclass(frozen=True)
class Reason:
    """Why: the check (``rule``), what it found (``detail``), and its effect on the outcome."""

    rule: str
    detail: str
    effect: Outcome | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "detail": self.detail, "effect": self.effect.value if self.effect else None}

    @classmethod
    def from_json(cls, raw: Any) -> Reason:
        """Inverse of :meth:`to_json`, for reasons stored with a request (anything unknown is kept as text).

        An effect that is not an :class:`Outcome` value becomes None; ``rule`` and ``detail`` are taken
        as text. Nothing here is trusted for a decision: it is what a renderer shows.
        """
        if not isinstance(raw, dict):
            return cls("reason", str(raw))
        effect = raw.get("effect")
        return cls(
            str(raw.get("rule", "")),
            str(raw.get("detail", "")),
            Outcome(effect) if isinstance(effect, str) and effect in {o.value for o in Outcome} else None,
        )


@dataclass(frozen=True)
class LimitUsage:
    """How much of a rolling limit is used: for reports and near-limit alerts."""

    #: ``wallet:<signatureId>`` or ``chain:<chain>/<network>`` (see :class:`VelocityScope`).
    scope: str
    asset: str
    window: str
    used: int
    limit: int

    @property
    def percent(self) -> int:
        return 100 if self.limit == 0 else (self.used * 100) // self.limit

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "asset": self.asset,
            "window": self.window,
            "used": str(self.used),
            "limit": str(self.limit),
            "percent": self.percent,
        }


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    #: Distinct operators who must approve: m, or m + k when escalated. On ``deny`` it is still the
    #: rule's m (never 0), so a caller that forgets to check ``outcome`` cannot sign with no approval.
    approvals_required: int
    reasons: tuple[Reason, ...]
    rule: Rule
    policy_generation: int
    #: Rolling limits at or above :data:`NEAR_LIMIT_PERCENT` once this transaction is counted.
    near_limit: tuple[LimitUsage, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.outcome is not Outcome.DENY

    def quorum_rule(self) -> QuorumRule:
        """The quorum this decision asks for (feed it to :func:`agent.approvals.evaluate_quorum`)."""
        return QuorumRule(
            self.approvals_required, self.rule.initiator_may_approve, self.rule.approval_ttl, self.policy_generation
        )

    def explain(self) -> str:
        return "; ".join(f"[{r.rule}] {r.detail}" for r in self.reasons if r.effect is not None) or "allowed"

    def raise_if_denied(self) -> None:
        """:raises PolicyDenied: with every denying reason in the message."""
        from agent.errors import PolicyDenied

        if self.outcome is Outcome.DENY:
            raise PolicyDenied(
                "policy denies this withdrawal: "
                + "; ".join(f"[{r.rule}] {r.detail}" for r in self.reasons if r.effect is Outcome.DENY)
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "approvals_required": self.approvals_required,
            "policy_generation": self.policy_generation,
            "reasons": [r.to_json() for r in self.reasons],
            "near_limit": [u.to_json() for u in self.near_limit],
        }


class Velocity(Protocol):
    """What was already signed within a rolling window: the one thing evaluation reads besides its inputs.

    The agent answers from authenticated running totals in the audit log (O(log n) per question,
    agent.withdrawals.velocity); :class:`HistoryVelocity` answers from a list, for tests and reports.
    """

    def used(self, summary: RequestSummary, scope: VelocityScope, since: int) -> dict[str, int]:
        """Base units per asset signed in ``scope`` of ``summary`` after Unix second ``since``."""
        ...


@dataclass(frozen=True)
class HistoryVelocity:
    """:class:`Velocity` over an explicit list of signed withdrawals (linear in it)."""

    history: Sequence[HistoryEntry]

    def used(self, summary: RequestSummary, scope: VelocityScope, since: int) -> dict[str, int]:
        totals: dict[str, int] = {}
        for entry in self.history:
            if not isinstance(entry, HistoryEntry) or not isinstance(entry.signed_at, int) or _malformed(entry.summary):
                continue  # our own signed records; a malformed one cannot be counted, and is reported by audit verify
            if entry.signed_at <= since or not _in_scope(entry, summary, scope):
                continue
            for asset, amount in entry.summary.spent().items():
                totals[asset] = totals.get(asset, 0) + amount
        return totals


def scope_key(summary: RequestSummary, scope: VelocityScope) -> str:
    """The running-total key a withdrawal counts under for ``scope`` (docs/policy.md §4)."""
    if scope is VelocityScope.CHAIN:
        return f"chain:{summary.chain}/{summary.network}"
    return f"wallet:{summary.chain}:{summary.signature_id}"


def evaluate(
    request_summary: RequestSummary, rules: Policy, history: Sequence[HistoryEntry] | Velocity, now: int
) -> Decision:
    """Judge one decoded withdrawal against the policy. Pure, and never raises.

    :param history: withdrawals already signed (any wallet; the rule's velocity scope picks), or a
        :class:`Velocity` that answers for them.
    :param now: Unix seconds.
    """
    velocity = HistoryVelocity(history) if isinstance(history, Sequence) else history
    summary = request_summary
    rule = rules.default
    reasons: list[Reason] = []
    near: list[LimitUsage] = []

    def add(check: str, detail: str, effect: Outcome | None) -> None:
        reasons.append(Reason(check, detail, effect))

    problem = _malformed(summary)
    if problem is not None:
        add("summary", f"the decoded transaction is malformed: {problem}", Outcome.DENY)
    else:
        rule = rules.rule_for(summary.chain, summary.signature_id)
        add("rule", "rule from " + " + ".join(rules.rule_sources(summary.chain, summary.signature_id)), None)
        _freeze(rules, rule, add)
        if summary.opaque and not rule.allow_contract_calls:
            add(
                "contract-call",
                "the transaction calls a contract in a way the decoder cannot read; "
                "this rule does not allow opaque calls",
                Outcome.DENY,
            )
        _time_window(rule, now, add)
        spent = summary.spent()
        _limits(summary, spent, rule, velocity, now, add, near)
        _fee(summary, rule, add)
        _destinations(summary, rule, add)

    effects = {r.effect for r in reasons}
    m = rule.approvals_required
    if Outcome.DENY in effects:
        outcome, required = Outcome.DENY, m
    elif Outcome.ESCALATE in effects:
        outcome, required = Outcome.ESCALATE, m + rule.escalate_by
        add("quorum", f"escalated: {m} + {rule.escalate_by} = {required} distinct operators must approve", None)
    else:
        outcome, required = Outcome.ALLOW, m
        add("quorum", f"{m} distinct operators must approve", None)
    return Decision(outcome, required, tuple(reasons), rule, rules.generation, tuple(near))


def _malformed(summary: Any) -> str | None:
    """Type and range problems that make a summary unjudgeable (hypothesis feeds it anything)."""
    if not isinstance(summary, RequestSummary):
        return "not a RequestSummary"
    for name in ("chain", "network", "signature_id", "fee_asset"):
        if not isinstance(getattr(summary, name), str) or not getattr(summary, name):
            return f"{name} must be non-empty text"
    if not isinstance(summary.fee, int) or isinstance(summary.fee, bool) or summary.fee < 0:
        return "fee must be a non-negative integer"
    if not isinstance(summary.opaque, bool):
        return "opaque must be a boolean"
    if not isinstance(summary.outputs, tuple):
        return "outputs must be a tuple"
    if not isinstance(summary.units, tuple) or not all(isinstance(u, AssetUnit) for u in summary.units):
        return "units must be a tuple of AssetUnit"
    for i, out in enumerate(summary.outputs):
        if not isinstance(out, SummaryOutput):
            return f"output {i} is not a SummaryOutput"
        if not isinstance(out.address, str) or not out.address or not isinstance(out.asset, str) or not out.asset:
            return f"output {i} needs a non-empty address and asset"
        if not isinstance(out.amount, int) or isinstance(out.amount, bool) or out.amount < 0:
            return f"output {i} amount must be a non-negative integer"
        if not isinstance(out.is_change, bool):
            return f"output {i} is_change must be a boolean"
    return None


def _freeze(policy: Policy, rule: Rule, add: _Add) -> None:
    if policy.frozen:
        add("freeze", "all withdrawals are frozen (policy-wide emergency lock)", Outcome.DENY)
    if rule.frozen:
        add("freeze", "withdrawals from this wallet/chain are frozen", Outcome.DENY)


def _time_window(rule: Rule, now: int, add: _Add) -> None:
    if not isinstance(now, int) or isinstance(now, bool) or not 0 <= now <= _MAX_TS:
        add("clock", f"the clock reads {now!r}, which is not a usable Unix time", Outcome.DENY)
        return
    window = rule.time_window
    if window is None:
        return
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    if not window.allows(moment.weekday(), moment.hour):
        days = ",".join(str(d) for d in sorted(window.weekdays))
        add(
            "time-window",
            f"{moment:%a %H:%M} UTC is outside the allowed window (weekdays {days}, "
            f"hours {window.start_hour:02d}-{window.end_hour:02d} UTC)",
            Outcome.DENY,
        )


def _in_scope(entry: HistoryEntry, summary: RequestSummary, scope: VelocityScope) -> bool:
    prior = entry.summary
    if scope is VelocityScope.CHAIN:
        return (prior.chain, prior.network) == (summary.chain, summary.network)
    return (prior.signature_id, prior.chain) == (summary.signature_id, summary.chain)


def _scope_name(summary: RequestSummary, scope: VelocityScope) -> str:
    if scope is VelocityScope.CHAIN:
        return f"chain:{summary.chain}/{summary.network}"
    return f"wallet:{summary.signature_id}"


def _limits(
    summary: RequestSummary,
    spent: dict[str, int],
    rule: Rule,
    velocity: Velocity,
    now: int,
    add: _Add,
    near: list[LimitUsage],
) -> None:
    effect = Outcome.DENY if rule.over_limit is OverLimit.DENY else Outcome.ESCALATE
    used_by_window = {
        name: velocity.used(summary, rule.velocity_scope, now - seconds)
        for name, seconds in WINDOWS
        if any((limits.per_hour if name == "hour" else limits.per_day) is not None for limits in rule.assets.values())
    }
    scope = _scope_name(summary, rule.velocity_scope)
    for asset, amount in sorted(spent.items()):
        limits = rule.assets.get(asset)
        if limits is None:
            add("asset", f"{asset} is not an asset this rule lets leave", Outcome.DENY)
            continue
        if limits.per_tx is not None and amount > limits.per_tx:
            add(
                "per-tx-limit",
                f"{_amount(summary, amount, asset)} exceeds the per-transaction limit of "
                f"{_amount(summary, limits.per_tx, asset)}",
                effect,
            )
        for name, limit in (("hour", limits.per_hour), ("day", limits.per_day)):
            if limit is None:
                continue
            used = used_by_window.get(name, {}).get(asset, 0)
            total = used + amount
            if total > limit:
                add(
                    f"velocity-{name}",
                    f"{_amount(summary, used, asset)} already signed in the last {name} ({scope}) + "
                    f"{_amount(summary, amount, asset)} exceeds the rolling limit of {_amount(summary, limit, asset)}",
                    effect,
                )
            elif total * 100 >= limit * NEAR_LIMIT_PERCENT:
                add(
                    f"velocity-{name}",
                    f"{_amount(summary, total, asset)} of {_amount(summary, limit, asset)} per {name} used "
                    f"({scope}): near the limit",
                    None,
                )
            if total * 100 >= limit * NEAR_LIMIT_PERCENT:
                near.append(LimitUsage(scope, asset, name, total, limit))


def _amount(summary: RequestSummary, amount: int, asset: str) -> str:
    """``1.5 BTC (150000000 sat)`` when the summary knows the asset's decimals, else ``150000000 base units of X``."""
    unit = summary.unit_of(asset)
    if unit is None or not isinstance(unit.decimals, int) or not 0 <= unit.decimals <= 80:
        return f"{amount} base units of {asset}"
    return f"{format_units(amount, unit.decimals)} {unit.symbol} ({amount} {unit.base_unit})"


def _fee(summary: RequestSummary, rule: Rule, add: _Add) -> None:
    """Escalate a fee above ``max_fee_percent`` of the value sent (or moved, when all of it is change)."""
    percent = rule.max_fee_percent
    base = summary.fee_base()
    if percent is None or base is None or summary.fee == 0 or summary.fee * 100 <= percent * base:
        return
    moved = "sent" if any(not o.is_change for o in summary.outputs) else "moved within the wallet"
    what = (
        "nothing else moves"
        if base == 0
        else f"{percent_text(summary.fee, base)} of the " + _amount(summary, base, summary.fee_asset) + f" {moved}"
    )
    add(
        "fee",
        f"the fee of {_amount(summary, summary.fee, summary.fee_asset)} is {what}: "
        f"above the {percent} % threshold (max_fee_percent)",
        Outcome.ESCALATE,
    )


def _destinations(summary: RequestSummary, rule: Rule, add: _Add) -> None:
    if rule.unknown_destination is UnknownDestination.ALLOW:
        return
    effect = Outcome.DENY if rule.unknown_destination is UnknownDestination.DENY else Outcome.ESCALATE
    for address in dict.fromkeys(summary.destinations):
        if canonical_ref(address) not in rule.allowlist:
            add("allowlist", f"{address} is not on the allowlist", effect)


def near_limit(
    policy: Policy, history: Sequence[HistoryEntry], now: int, percent: int = NEAR_LIMIT_PERCENT
) -> list[LimitUsage]:
    """Rolling limits used at ``percent`` or more right now, for reports (no new transaction counted)."""
    found: dict[tuple[str, str, str], LimitUsage] = {}
    done: set[tuple[str, str, str]] = set()
    velocity = HistoryVelocity(history)
    for entry in history:
        summary = entry.summary
        if _malformed(summary):
            continue
        rule = policy.rule_for(summary.chain, summary.signature_id)
        scope = _scope_name(summary, rule.velocity_scope)
        if (scope, summary.chain, summary.signature_id) in done:
            continue
        done.add((scope, summary.chain, summary.signature_id))
        for name, seconds in WINDOWS:
            used = velocity.used(summary, rule.velocity_scope, now - seconds)
            for asset, amount in used.items():
                limits = rule.assets.get(asset)
                limit = None if limits is None else (limits.per_hour if name == "hour" else limits.per_day)
                if limit is not None and amount * 100 >= limit * percent:
                    found[(scope, asset, name)] = LimitUsage(scope, asset, name, amount, limit)
    return [found[k] for k in sorted(found)]
