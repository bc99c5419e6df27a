"""The quorum: distinct operators, initiator, expiry, replay, tampering, cloned tokens, vetoes."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from agent.approvals import (
    QuorumOutcome,
    QuorumRule,
    Rejection,
    counters_from_records,
    evaluate_quorum,
)
from agent.errors import ApprovalExpired, ApprovalRejected, QuorumNotMet
from tests.approvals.helpers import NOW, RULE_2, Team, oid, payload, request


@pytest.fixture
def team() -> Team:
    return Team.build()


def rules(decision: object) -> list[str]:
    return [r.rule for r in decision.reasons]  # type: ignore[attr-defined]


def test_two_of_three_is_met(team: Team) -> None:
    p = payload()
    approvals = [team.approve(p, 1, 0x11), team.approve(p, 2, 0x21)]
    d = evaluate_quorum(request(p), approvals, [], RULE_2, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.APPROVED and d.approved
    assert d.approved_by == (oid(1), oid(2))
    assert d.counter_updates == {oid(0x11): 1, oid(0x21): 1}
    assert all(a.counter_baseline == 0 for a in d.accepted)
    assert "alice" in d.explain() and "bob" in d.explain()
    d.raise_unless_approved()


def test_piv_and_fido2_operators_together(team: Team) -> None:
    p = payload()
    d = evaluate_quorum(
        request(p), [team.approve(p, 3, 0x31), team.approve(p, 4, 0x41)], [], RULE_2, team.roster, NOW, {}
    )
    assert d.approved and d.approved_by == (oid(3), oid(4))
    assert oid(0x31) not in d.counter_updates  # PIV has no counter: 0 == 0 is accepted, nothing to store


def test_one_approval_is_not_enough(team: Team) -> None:
    p = payload()
    d = evaluate_quorum(request(p), [team.approve(p, 2, 0x21)], [], RULE_2, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.PENDING
    assert "1 of 2" in d.explain()
    with pytest.raises(QuorumNotMet):
        d.raise_unless_approved()


def test_two_tokens_of_one_operator_count_once(team: Team) -> None:
    p = payload()
    approvals = [team.approve(p, 1, 0x11), team.approve(p, 1, 0x12, at=NOW - 30)]
    d = evaluate_quorum(request(p), approvals, [], RULE_2, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.PENDING
    assert d.approved_by == (oid(1),)
    assert "distinct-operators" in rules(d)
    assert len(d.accepted) == 2  # both are valid evidence and are recorded


def test_the_same_evidence_twice_counts_once(team: Team) -> None:
    p = payload()
    a = team.approve(p, 2, 0x21)
    d = evaluate_quorum(request(p), [a, a], [], RULE_2, team.roster, NOW, {})
    assert d.approved_by == (oid(2),) and len(d.accepted) == 1 and not d.suspended


def test_initiator_cannot_approve_own_request(team: Team) -> None:
    p = payload()
    approvals = [team.approve(p, 1, 0x11), team.approve(p, 2, 0x21)]
    d = evaluate_quorum(request(p, initiator=oid(1)), approvals, [], RULE_2, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.PENDING and d.approved_by == (oid(2),)
    assert any(r.rule == "initiator" and r.operator_id == oid(1) for r in d.reasons)
    allowed = dataclasses.replace(RULE_2, initiator_may_approve=True)
    assert evaluate_quorum(request(p, initiator=oid(1)), approvals, [], allowed, team.roster, NOW, {}).approved


def test_initiator_exclusion_can_make_the_quorum_unreachable(team: Team) -> None:
    rule = QuorumRule(4, policy_generation=7)
    d = evaluate_quorum(request(initiator=oid(1)), [], [], rule, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.PENDING and d.alerts and "cannot reach 4" in d.explain()


def test_approval_replayed_onto_another_request_is_refused(team: Team) -> None:
    first = payload()
    other = payload(request_id=bytes(range(100, 116)))
    # Evidence signed for `first`, recorded against `other`: the digest differs, the signature fails.
    replayed = dataclasses.replace(team.approve(first, 1, 0x11), request_id=other.request_id)
    d = evaluate_quorum(request(other), [replayed, team.approve(other, 2, 0x21)], [], RULE_2, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.PENDING and d.approved_by == (oid(2),)
    sig = [r for r in d.reasons if r.rule == "signature"]
    assert sig and sig[0].operator_id == oid(1) and sig[0].alert
    # Recorded under its own request id it fails on the request check before any crypto.
    d2 = evaluate_quorum(request(other), [team.approve(first, 1, 0x11)], [], RULE_2, team.roster, NOW, {})
    assert "request-mismatch" in rules(d2)


def test_approval_over_a_tampered_transaction_is_refused(team: Team) -> None:
    shown = payload()
    swapped = dataclasses.replace(shown, unsigned_tx_sha256=hashlib.sha256(b"attacker tx").digest())
    approvals = [team.approve(shown, 1, 0x11), team.approve(shown, 2, 0x21)]
    d = evaluate_quorum(request(swapped), approvals, [], RULE_2, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.PENDING and d.approved_by == ()
    assert rules(d).count("signature") == 2
    # Same for a changed destination amount, with the tx hash untouched.
    richer = dataclasses.replace(shown, fee=shown.fee + 1)
    assert not evaluate_quorum(request(richer), approvals, [], RULE_2, team.roster, NOW, {}).approved


def test_expired_approval_is_refused(team: Team) -> None:
    p = payload(expires_at=NOW + 10 * 3600)
    old = team.approve(p, 1, 0x11, at=NOW - 7200)  # exactly the TTL old
    fresh = team.approve(p, 2, 0x21)
    d = evaluate_quorum(request(p), [old, fresh], [], RULE_2, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.PENDING and d.approved_by == (oid(2),)
    assert "approval-expired" in rules(d)
    future = team.approve(p, 4, 0x41, at=NOW + 5)
    assert "approval-expired" in rules(evaluate_quorum(request(p), [future], [], RULE_2, team.roster, NOW, {}))


def test_expired_request_is_expired(team: Team) -> None:
    p = payload(expires_at=NOW - 1)
    approvals = [team.approve(p, 1, 0x11, at=NOW - 100), team.approve(p, 2, 0x21, at=NOW - 100)]
    d = evaluate_quorum(request(p), approvals, [], RULE_2, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.EXPIRED
    with pytest.raises(ApprovalExpired):
        d.raise_unless_approved()


def test_consumed_request_is_never_approved_again(team: Team) -> None:
    p = payload()
    approvals = [team.approve(p, 1, 0x11), team.approve(p, 2, 0x21)]
    d = evaluate_quorum(request(p, consumed=True), approvals, [], RULE_2, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.CONSUMED and not d.approved


def test_policy_generation_change_makes_the_request_stale(team: Team) -> None:
    p = payload()
    approvals = [team.approve(p, 1, 0x11), team.approve(p, 2, 0x21)]
    newer = dataclasses.replace(RULE_2, policy_generation=8)
    assert evaluate_quorum(request(p), approvals, [], newer, team.roster, NOW, {}).outcome is QuorumOutcome.STALE


def test_cloned_token_is_refused_and_its_operator_suspended(team: Team) -> None:
    p = payload()
    clone = team.approve(p, 1, 0x11, counter=5)  # the clone replays an older counter
    d = evaluate_quorum(request(p), [clone, team.approve(p, 2, 0x21)], [], RULE_2, team.roster, NOW, {oid(0x11): 9})
    assert d.outcome is QuorumOutcome.PENDING
    assert d.suspended == (oid(1),)
    alert = [r for r in d.alerts if r.rule == "sign-count"]
    assert alert and alert[0].operator_id == oid(1) and "suspended" in alert[0].detail
    assert oid(0x11) not in d.counter_updates  # never lowered


def test_equal_nonzero_counter_is_a_regression(team: Team) -> None:
    p = payload()
    d = evaluate_quorum(request(p), [team.approve(p, 2, 0x21, counter=3)], [], RULE_2, team.roster, NOW, {oid(0x21): 3})
    assert d.suspended == (oid(2),)


def test_zero_counter_token_is_accepted_while_stored_is_zero(team: Team) -> None:
    p = payload()
    approvals = [team.approve(p, 2, 0x21, counter=0), team.approve(p, 4, 0x41, counter=0)]
    assert evaluate_quorum(request(p), approvals, [], RULE_2, team.roster, NOW, {}).approved


def test_suspended_operator_cannot_approve() -> None:
    team = Team.build(suspended=(oid(2),))
    p = payload()
    d = evaluate_quorum(
        request(p), [team.approve(p, 1, 0x11), team.approve(p, 2, 0x21)], [], RULE_2, team.roster, NOW, {}
    )
    assert d.outcome is QuorumOutcome.PENDING and "suspended" in rules(d)


def test_a_veto_rejects(team: Team) -> None:
    p = payload()
    approvals = [team.approve(p, 1, 0x11), team.approve(p, 2, 0x21)]
    veto = Rejection(p.request_id, oid(4), NOW - 10, "destination unknown to me")
    d = evaluate_quorum(request(p), approvals, [veto], RULE_2, team.roster, NOW, {})
    assert d.outcome is QuorumOutcome.REJECTED
    assert any(r.rule == "veto" and r.operator_id == oid(4) and "unknown to me" in r.detail for r in d.reasons)
    with pytest.raises(ApprovalRejected):
        d.raise_unless_approved()
    # Vetoes for another request or by strangers do not count.
    stray = [Rejection(bytes(16), oid(4), NOW, ""), Rejection(p.request_id, oid(9), NOW, "")]
    assert evaluate_quorum(request(p), approvals, stray, RULE_2, team.roster, NOW, {}).approved


def test_approval_via_someone_elses_slot_is_refused(team: Team) -> None:
    p = payload()
    stolen = dataclasses.replace(team.approve(p, 1, 0x21), operator_id=oid(1))  # bob's token, claimed by alice
    d = evaluate_quorum(request(p), [stolen], [], RULE_2, team.roster, NOW, {})
    assert "unknown-slot" in rules(d) and "belongs to bob" in d.explain()


def test_missing_uv_flag_is_refused(team: Team) -> None:
    from tests.approvals.helpers import UP

    p = payload()
    d = evaluate_quorum(request(p), [team.approve(p, 1, 0x11, flags=UP)], [], RULE_2, team.roster, NOW, {})
    assert "signature" in rules(d) and not d.accepted


def test_reevaluation_uses_the_recorded_baseline(team: Team) -> None:
    """An approval accepted earlier stays valid after the same token approved another request."""
    p = payload()
    first = evaluate_quorum(request(p), [team.approve(p, 1, 0x11)], [], RULE_2, team.roster, NOW, {})
    recorded = first.accepted[0]
    counters = dict(first.counter_updates)
    other = payload(request_id=bytes(range(50, 66)))
    later = evaluate_quorum(request(other), [team.approve(other, 1, 0x11)], [], RULE_2, team.roster, NOW, counters)
    counters.update(later.counter_updates)
    assert counters[oid(0x11)] == 2
    again = evaluate_quorum(request(p), [recorded, team.approve(p, 2, 0x21)], [], RULE_2, team.roster, NOW, counters)
    assert again.approved and not again.suspended
    assert counters_from_records([recorded, *later.accepted]) == {oid(0x11): 2}


def test_enrolment_counter_is_the_floor(team: Team) -> None:
    alice = team.roster[oid(1)]
    slot = dataclasses.replace(alice.slots[0], public={**alice.slots[0].public, "sign_count": 40})
    roster = {**team.roster, oid(1): dataclasses.replace(alice, slots=(slot, alice.slots[1]))}
    p = payload()
    d = evaluate_quorum(request(p), [team.approve(p, 1, 0x11, counter=12)], [], RULE_2, roster, NOW, {})
    assert d.suspended == (oid(1),)


def test_a_signed_veto_rejects_only_when_its_signature_verifies(team: Team) -> None:
    from agent.approvals.statements import rejection_digest

    p = payload()
    approvals = [team.approve(p, 1, 0x11), team.approve(p, 2, 0x21)]
    for slot, operator in ((0x41, 4), (0x31, 3)):  # FIDO2 and PIV vetoes
        touch = team.approve(p, operator, slot, digest=rejection_digest(p, "no"))
        veto = Rejection(p.request_id, oid(operator), NOW - 5, "no", touch)
        d = evaluate_quorum(request(p), approvals, [veto], RULE_2, team.roster, NOW, {})
        assert d.outcome is QuorumOutcome.REJECTED, d.explain()
    # Signed over the approval digest, over another reason, or with another operator's token: ignored, alerted.
    bad = [
        Rejection(p.request_id, oid(4), NOW, "no", team.approve(p, 4, 0x41)),
        Rejection(p.request_id, oid(4), NOW, "edited", team.approve(p, 4, 0x41, digest=rejection_digest(p, "no"))),
        Rejection(p.request_id, oid(4), NOW, "no", team.approve(p, 4, 0x21, digest=rejection_digest(p, "no"))),
    ]
    for veto in bad:
        d = evaluate_quorum(request(p), approvals, [veto], RULE_2, team.roster, NOW, {})
        assert d.approved and any(r.rule == "veto-signature" and r.alert for r in d.reasons), d.explain()
