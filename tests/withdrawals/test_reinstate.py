"""Reinstating a suspended operator: a quorum of OTHER operators' touches (docs/withdrawals.md §6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.approvals import approval_row_verifier, roster_from_header
from agent.audit import AuditKind
from agent.errors import ApprovalInvalid, QuorumNotMet, UsageError
from agent.withdrawals.index_check import LogResolver
from agent.withdrawals.ledger import Status, open_audit
from tests.conftest import AutoPrompts, Cli
from tests.withdrawals.helpers import ETHER, Ready, ready_home


@pytest.fixture
def ready(home: Path, prompts: AutoPrompts) -> Ready:
    return ready_home(home, prompts)


def suspend_alice(ready: Ready) -> bytes:
    """Clone alice's simulated token, use the clone late: signCount goes back, alice is suspended."""
    token = ready.home / "sim" / "alice.fido2.json"
    snapshot = token.read_bytes()
    first = ready.create(ETHER // 10, nonce=0)
    assert ready.service.approve(first, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"]).signed
    token.write_bytes(snapshot)
    second = ready.create(ETHER // 10, nonce=1)
    with pytest.raises(ApprovalInvalid, match="signCount"):
        ready.service.approve(second, finder=ready.finder, prompts=ready.prompts, operators=["alice"])
    alice = ready.service.vault().header.operators[0].operator_id
    assert ready.service.ledger.suspended(ready.service.vault().header) == {alice}
    return alice


def test_suspended_operator_cannot_approve_until_a_quorum_reinstates_them(ready: Ready) -> None:
    suspend_alice(ready)
    rid = ready.create(ETHER // 10, nonce=1)
    touched = len(ready.prompts.touched)
    state = ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    assert (
        state.pending
        and [a.operator_id for a in state.approvals] != []
        and ready.prompts.touched[touched:] == ["sim:bob"]
    )  # alice is not even asked; bob's approval alone is not a quorum

    done = ready.service.reinstate("alice", finder=ready.finder, prompts=ready.prompts, operators=["bob", "carol"])
    assert sorted(done.approved_by) == ["bob", "carol"]
    assert "sim:alice" not in ready.prompts.touched[-2:]
    assert ready.service.ledger.suspended(ready.service.vault().header) == set()
    (row,) = ready.service.audit.rows(kinds=[AuditKind.REINSTATEMENT])
    assert row.payload["operator"] == "alice" and len(row.payload["approvals"]) == 2

    # The refused touch already moved the token's counter past what the log saw: the next is accepted.
    state = ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    assert state.status is Status.SIGNED
    assert len({a.operator_id for a in state.approvals}) == 2

    roster = roster_from_header(ready.service.vault().header)
    report = ready.service.audit.verify(approval_row_verifier(roster, LogResolver(open_audit(ready.service.state))))
    assert report.ok, report.problems


def test_reinstatement_without_quorum_is_refused_and_writes_nothing(ready: Ready) -> None:
    alice = suspend_alice(ready)
    before = ready.service.audit.last_seq()
    with pytest.raises(QuorumNotMet, match="other operators"):
        ready.service.reinstate("alice", finder=ready.finder, prompts=ready.prompts, operators=["bob"])
    # alice's own touch never counts: she is not even asked
    with pytest.raises(QuorumNotMet):
        ready.service.reinstate("alice", finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    with pytest.raises(UsageError, match="own touch"):
        ready.service.reinstate("alice", finder=ready.finder, prompts=ready.prompts, operators=["alice"])
    assert ready.service.audit.last_seq() == before
    assert ready.service.ledger.suspended(ready.service.vault().header) == {alice}
    with pytest.raises(UsageError, match="not suspended"):
        ready.service.reinstate("bob", finder=ready.finder, prompts=ready.prompts)


def test_a_forged_reinstatement_row_lifts_nothing(ready: Ready) -> None:
    alice = suspend_alice(ready)
    seq = ready.service.ledger.last_suspension(alice)
    forged = {
        "operator_id": alice.hex(),
        "operator": "alice",
        "suspension_seq": seq,
        "statement_cbor": "",
        "payload_cbor": "",
        "approvals_required": 0,
        "approvals": [],
        "approved_by": ["bob", "carol"],
    }
    ready.service.audit.append(AuditKind.REINSTATEMENT, forged, request_id=None, actor="alice")
    assert ready.service.ledger.suspended(ready.service.vault().header) == {alice}


def test_operator_reinstate_cli(ready: Ready, cli: Cli) -> None:
    suspend_alice(ready)
    proc = cli("operator", "reinstate", "alice", "--operator", "bob", "--json")
    assert proc.returncode == 5, proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "approval"
    out = cli.json("operator", "reinstate", "alice", "--operator", "bob", "--operator", "carol")
    assert out["operator"] == "alice" and sorted(out["approved_by"]) == ["bob", "carol"]
