"""Has a request been approved? A pure function of the evidence, the roster, the rule and the clock.

:func:`evaluate_quorum` touches no disk and no token, so every case is a unit test (STYLE §2.11),
and the agent, a co-signer and an auditor reach the same answer from the same records. It checks,
in this order (docs/approvals.md §4):

1. the request is not consumed (already signed) and its policy generation is current;
2. the payload has not expired, and no rostered operator has vetoed it;
3. each approval: a known slot of the operator it names, operator not suspended, made before the
   payload expired and within the rule's approval TTL, signature valid over *this* request's
   digest (:func:`agent.approvals.verify.verify_approval`);
4. the signCount rule per credential (research §5.7): ``new > stored``, except ``new == stored == 0``
   (a token without a counter). A regression means a cloned token: the approval is refused, the
   operator is suspended and the decision carries an alert;
5. distinct operators (two tokens of one person count once), the initiator excluded unless the rule
   allows self-approval; ``approvals_required`` of them → approved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from agent.approvals.evidence import Operator, RecordedApproval, Rejection, Roster, Slot
from agent.approvals.payload import ApprovalPayload, approval_digest
from agent.approvals.statements import rejection_digest
from agent.approvals.verify import verify_approval
from agent.errors import (
    ApprovalError,
    ApprovalExpired,
    ApprovalInvalid,
    ApprovalRejected,
    QuorumNotMet,
)

#: Fireblocks' default approval lifetime; the policy rule overrides it.
DEFAULT_APPROVAL_TTL = 2 * 3600


@dataclass(frozen=True)
class QuorumRule:
    """The part of the policy decision the quorum needs (``agent.policy.Decision.quorum_rule()``)."""

    approvals_required: int
    initiator_may_approve: bool = False
    #: Seconds an individual approval stays valid after the agent received it.
    approval_ttl: int = DEFAULT_APPROVAL_TTL
    #: The policy generation now in force; approvals made under another generation do not count.
    policy_generation: int | None = None


@dataclass(frozen=True)
class ApprovalRequest:
    """A request waiting for approvals."""

    payload: ApprovalPayload
    #: Operator id of the person who asked for it, or None for an application (API client).
    initiator: bytes | None = None
    #: True once a signature was produced for this ``request_id`` (from the audit log): never twice.
    consumed: bool = False


class QuorumOutcome(StrEnum):
    APPROVED = "approved"
    PENDING = "pending"
    #: An operator vetoed it.
    REJECTED = "rejected"
    EXPIRED = "expired"
    #: Already signed once.
    CONSUMED = "consumed"
    #: Judged under another policy generation than the one in force.
    STALE = "stale"


@dataclass(frozen=True)
class QuorumReason:
    """One explained finding: which check (``rule``), about whom, and whether it must raise an alert."""

    rule: str
    detail: str
    operator_id: bytes | None = None
    slot_id: bytes | None = None
    alert: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "detail": self.detail,
            "operator_id": self.operator_id.hex() if self.operator_id else None,
            "slot_id": self.slot_id.hex() if self.slot_id else None,
            "alert": self.alert,
        }


@dataclass(frozen=True)
class QuorumDecision:
    outcome: QuorumOutcome
    approvals_required: int
    #: Distinct operators whose approvals count, in the order they approved.
    approved_by: tuple[bytes, ...]
    #: Approvals whose evidence passed every check (signature, timing, signCount), with
    #: ``counter_baseline`` filled in: record these. An initiator's or a just-suspended operator's
    #: valid approval is recorded too, but is not in ``approved_by``.
    accepted: tuple[RecordedApproval, ...]
    #: New last-seen signCount per slot id; the caller stores them (they never go down).
    counter_updates: Mapping[bytes, int]
    #: Operators to suspend now (cloned-token evidence).
    suspended: tuple[bytes, ...]
    reasons: tuple[QuorumReason, ...]

    @property
    def approved(self) -> bool:
        return self.outcome is QuorumOutcome.APPROVED

    @property
    def alerts(self) -> tuple[QuorumReason, ...]:
        return tuple(r for r in self.reasons if r.alert)

    def explain(self) -> str:
        return "; ".join(f"[{r.rule}] {r.detail}" for r in self.reasons)

    def raise_unless_approved(self) -> None:
        """:raises ApprovalError: the subclass matching the outcome, with every reason in the message."""
        if self.approved:
            return
        cls: type[ApprovalError] = {
            QuorumOutcome.PENDING: QuorumNotMet,
            QuorumOutcome.REJECTED: ApprovalRejected,
            QuorumOutcome.EXPIRED: ApprovalExpired,
        }.get(self.outcome, ApprovalInvalid)
        raise cls(f"request {self.outcome.value}: {self.explain()}")

    def to_json(self) -> dict[str, object]:
        return {
            "outcome": self.outcome.value,
            "approvals_required": self.approvals_required,
            "approved_by": [o.hex() for o in self.approved_by],
            "accepted": [a.to_json() for a in self.accepted],
            "counter_updates": {k.hex(): v for k, v in sorted(self.counter_updates.items())},
            "suspended": [o.hex() for o in self.suspended],
            "reasons": [r.to_json() for r in self.reasons],
        }


@dataclass
class _Scan:
    """Mutable scratch state of one evaluation (never escapes :func:`evaluate_quorum`)."""

    reasons: list[QuorumReason] = field(default_factory=list)
    counters: dict[bytes, int] = field(default_factory=dict)
    updates: dict[bytes, int] = field(default_factory=dict)
    suspended: list[bytes] = field(default_factory=list)

    def note(
        self,
        rule: str,
        detail: str,
        op: Operator | None = None,
        slot: Slot | None = None,
        *,
        operator_id: bytes | None = None,
        alert: bool = False,
    ) -> None:
        self.reasons.append(
            QuorumReason(rule, detail, op.operator_id if op else operator_id, slot.slot_id if slot else None, alert)
        )


def evaluate_quorum(
    request: ApprovalRequest,
    approvals: Sequence[RecordedApproval],
    rejections: Sequence[Rejection],
    policy_rule: QuorumRule,
    operators: Roster,
    now: int,
    counters: Mapping[bytes, int],
) -> QuorumDecision:
    """Decide whether ``approvals`` meet ``policy_rule`` for ``request``; every finding is explained.

    :param approvals: every approval recorded for this request (earlier ones carry their
        ``counter_baseline``) plus any new one (``counter_baseline=None``).
    :param counters: last seen signCount per slot id, from the agent's state; a slot missing here
        starts from its enrolment value (``public["sign_count"]``, or 0).
    :param now: Unix seconds (injected: the function reads no clock).
    """
    payload = request.payload
    digest = approval_digest(payload)
    scan = _Scan(counters={k: int(v) for k, v in counters.items()})
    m = policy_rule.approvals_required

    terminal: QuorumOutcome | None = None
    if request.consumed:
        terminal = QuorumOutcome.CONSUMED
        scan.note("request-consumed", f"request {payload.request_id.hex()} was already signed once")
    if policy_rule.policy_generation is not None and policy_rule.policy_generation != payload.policy_generation:
        terminal = terminal or QuorumOutcome.STALE
        scan.note(
            "policy-generation",
            f"the request was judged under policy generation {payload.policy_generation}, "
            f"generation {policy_rule.policy_generation} is now in force",
        )
    if now >= payload.expires_at:
        terminal = terminal or QuorumOutcome.EXPIRED
        scan.note("request-expired", f"the request expired at {payload.expires_at} (now {now})")
    vetoed = _vetoes(request, rejections, operators, scan)
    if vetoed:
        terminal = terminal or QuorumOutcome.REJECTED
    if m < 1:
        terminal = terminal or QuorumOutcome.STALE
        scan.note("quorum", f"approvals_required {m} is impossible: at least one approval is always needed")

    valid = _valid_approvals(request, approvals, policy_rule, operators, now, digest, scan)
    accepted = _counter_check(valid, operators, scan)

    approved_by: list[bytes] = []
    for approval in accepted:
        op = operators[approval.operator_id]
        if not policy_rule.initiator_may_approve and op.operator_id == request.initiator:
            scan.note(
                "initiator",
                f"{op.display} initiated this request and may not approve it",
                op,
                op.slot(approval.slot_id),
            )
            continue
        if op.operator_id in scan.suspended:
            scan.note("suspended", f"{op.display} was suspended in this evaluation; their approval does not count", op)
            continue
        if op.operator_id in approved_by:
            scan.note(
                "distinct-operators", f"{op.display} already approved with another token or touch; counted once", op
            )
            continue
        approved_by.append(op.operator_id)

    eligible = sum(
        1
        for op in operators.values()
        if not op.suspended
        and op.operator_id not in scan.suspended
        and (policy_rule.initiator_may_approve or op.operator_id != request.initiator)
    )
    if terminal is not None:
        outcome = terminal
    elif len(approved_by) >= m:
        outcome = QuorumOutcome.APPROVED
        names = ", ".join(operators[o].display for o in approved_by)
        scan.note("quorum", f"{len(approved_by)} of {m} distinct operators approved: {names}")
    else:
        outcome = QuorumOutcome.PENDING
        missing = m - len(approved_by)
        scan.note("quorum", f"{len(approved_by)} of {m} distinct operators approved; {missing} more needed")
        if eligible < m:
            scan.note(
                "quorum", f"only {eligible} operators may still approve: this request cannot reach {m}", alert=True
            )
    return QuorumDecision(
        outcome, m, tuple(approved_by), accepted, dict(scan.updates), tuple(scan.suspended), tuple(scan.reasons)
    )


def _vetoes(request: ApprovalRequest, rejections: Iterable[Rejection], operators: Roster, scan: _Scan) -> bool:
    vetoed = False
    for rejection in rejections:
        if rejection.request_id != request.payload.request_id:
            scan.note("veto", "a rejection recorded for another request was ignored", operator_id=rejection.operator_id)
            continue
        op = operators.get(rejection.operator_id)
        if op is None:
            scan.note(
                "veto",
                f"a rejection by unknown operator {rejection.operator_id.hex()} was ignored",
                operator_id=rejection.operator_id,
                alert=True,
            )
            continue
        why = f": {rejection.reason}" if rejection.reason else ""
        touch = rejection.touch
        if touch is None:
            # Recorded before vetoes were signed: honoured, since a veto can only make us refuse.
            vetoed = True
            scan.note("veto", f"{op.display} rejected the request{why} (an unsigned veto of an older kms-agent)", op)
            continue
        slot = op.slot(touch.slot_id)
        try:
            if slot is None:
                raise ApprovalInvalid(f"slot {touch.slot_id.hex()} is not one of {op.display}'s tokens")
            if (touch.request_id, touch.operator_id) != (request.payload.request_id, op.operator_id):
                raise ApprovalInvalid("the touch names another request or operator")
            verify_approval(touch, slot, rejection_digest(request.payload, rejection.reason))
        except ApprovalInvalid as exc:
            scan.note("veto-signature", f"a veto by {op.display} was ignored: {exc.message}", op, slot, alert=True)
            continue
        vetoed = True
        scan.note("veto", f"{op.display} rejected the request{why} (signed by {slot.label!r})", op, slot)
    return vetoed


def _valid_approvals(
    request: ApprovalRequest,
    approvals: Iterable[RecordedApproval],
    rule: QuorumRule,
    operators: Roster,
    now: int,
    digest: bytes,
    scan: _Scan,
) -> list[RecordedApproval]:
    """Approvals whose slot, operator, timing and signature checks pass (counters come next)."""
    payload = request.payload
    valid: list[RecordedApproval] = []
    seen: set[tuple[bytes, bytes]] = set()
    for approval in sorted(approvals, key=lambda a: (a.approved_at, a.sign_count)):
        op = operators.get(approval.operator_id)
        slot = op.slot(approval.slot_id) if op else None
        if op is None or slot is None:
            owner = next((o for o in operators.values() if o.slot(approval.slot_id)), None)
            what = (
                f"slot {approval.slot_id.hex()} belongs to {owner.display}, not to operator "
                f"{approval.operator_id.hex()}"
                if owner
                else f"slot {approval.slot_id.hex()} is not enrolled"
            )
            scan.note("unknown-slot", f"approval refused: {what}", operator_id=approval.operator_id, alert=True)
            continue
        if (approval.slot_id, approval.signature) in seen:
            continue  # the very same evidence recorded twice: ignore silently, it proves nothing new
        seen.add((approval.slot_id, approval.signature))
        if op.suspended:
            scan.note("suspended", f"{op.display} is suspended (cloned-token alert); approval refused", op, slot)
            continue
        if approval.request_id != payload.request_id:
            scan.note(
                "request-mismatch",
                f"approval by {op.display} was recorded for request {approval.request_id.hex()}; refused",
                op,
                slot,
                alert=True,
            )
            continue
        if approval.approved_at > now or approval.approved_at >= payload.expires_at:
            scan.note(
                "approval-expired",
                f"approval by {op.display} is dated {approval.approved_at}, outside the "
                f"request's lifetime (expires {payload.expires_at}, now {now}); refused",
                op,
                slot,
            )
            continue
        if now >= approval.approved_at + rule.approval_ttl:
            scan.note(
                "approval-expired",
                f"approval by {op.display} from {approval.approved_at} is older than the "
                f"rule's {rule.approval_ttl} s; refused",
                op,
                slot,
            )
            continue
        try:
            verify_approval(approval, slot, digest)
        except ApprovalInvalid as exc:
            # A signature that does not verify over *this* digest is what a replay from another
            # request or a tampered transaction looks like; the other refusals say what they are.
            why = " (a replay or a tampered transaction?)" if "does not verify" in exc.message else ""
            scan.note(
                "signature",
                f"approval by {op.display} via {slot.label!r} refused: {exc.message}{why}",
                op,
                slot,
                alert=True,
            )
            continue
        valid.append(approval)
    return valid


def _counter_check(valid: Sequence[RecordedApproval], operators: Roster, scan: _Scan) -> tuple[RecordedApproval, ...]:
    """signCount per credential: ``new > stored`` unless both are 0; a regression suspends the operator."""
    accepted: list[RecordedApproval] = []
    for approval in valid:
        op = operators[approval.operator_id]
        slot = op.slot(approval.slot_id)
        assert slot is not None  # checked by _valid_approvals
        if approval.counter_baseline is not None:
            stored = approval.counter_baseline
        else:
            enrolled = slot.public.get("sign_count", 0)
            stored = max(scan.counters.get(slot.slot_id, 0), enrolled if isinstance(enrolled, int) else 0)
        new = approval.sign_count
        if new > stored or new == stored == 0:
            recorded = approval if approval.counter_baseline is not None else approval.with_baseline(stored)
            accepted.append(recorded)
            if approval.counter_baseline is None:
                scan.counters[slot.slot_id] = max(stored, new)
                if new > stored:
                    scan.updates[slot.slot_id] = new
            continue
        if op.operator_id not in scan.suspended:
            scan.suspended.append(op.operator_id)
        scan.note(
            "sign-count",
            f"{slot.label!r} of {op.display} reported signCount {new}, not above the {stored} "
            f"already seen: a cloned token? approval refused and {op.name} suspended",
            op,
            slot,
            alert=True,
        )
    return tuple(accepted)


def counters_from_records(approvals: Iterable[RecordedApproval]) -> dict[bytes, int]:
    """Last seen signCount per slot from accepted approval records (e.g. the audit log's approval rows)."""
    out: dict[bytes, int] = {}
    for approval in approvals:
        out[approval.slot_id] = max(out.get(approval.slot_id, 0), approval.sign_count)
    return out
