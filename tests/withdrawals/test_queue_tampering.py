"""Someone with write access to state/ but no token edits queue.sqlite: each edit steers nothing.

Every edit named in the integrity issue, one test each. The queue is an index; decisions come from the
signed header, the token-signed approvals and the hash-chained audit log (docs/withdrawals.md §3).
Where the edit is visible, it is reported with the request id (stderr and an ``alert`` row).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ApprovalError, ApprovalInvalid, PolicyDenied
from agent.withdrawals.service import Withdrawals
from tests.conftest import AutoPrompts
from tests.withdrawals.helpers import ETHER, Ready, ready_home

ELSEWHERE = "0x000000000000000000000000000000000000bad0"


@pytest.fixture
def ready(home: Path, prompts: AutoPrompts) -> Ready:
    return ready_home(home, prompts, per_day=ETHER)


def _edit(ready: Ready, rid: str, **changes: object) -> None:
    record = json.loads(
        __import__("sqlite3")
        .connect(ready.home / "state" / "queue.sqlite")
        .execute("SELECT record FROM requests WHERE id = ?", (rid,))
        .fetchone()[0]
    )
    record.update(changes)
    ready.queue_sql(
        "UPDATE requests SET record = ?, status = ? WHERE id = ?", json.dumps(record), record["status"], rid
    )


def _reported(ready: Ready, rid: str, capsys: pytest.CaptureFixture[str]) -> bool:
    alerts = [r.payload["rule"] for r in ready.service.audit.rows(kinds=["alert"], request_id=rid)]
    return "queue-tampered" in alerts and rid in capsys.readouterr().err


def test_rewriting_a_pending_requests_bytes_and_payload(ready: Ready) -> None:
    """The queue keeps no bytes or payloads (they are in the audit log, once): forged ones are never read."""
    rid = ready.create(ETHER // 100)
    other = Withdrawals(ready.home)  # build a consistent forgery: another request's bytes and payload
    forged = other.request(ready.create(ETHER // 100, nonce=1))
    ready.queue_sql("DELETE FROM requests WHERE id = ?", forged.request_id)
    _edit(
        ready,
        rid,
        tx=ready.tx(ETHER // 100, to=ELSEWHERE).removeprefix("0x"),
        payload=forged.payload.canonical_bytes().hex(),
    )
    logged = ready.service.ledger.request(rid)
    listed = {r["id"]: r for r in ready.service.queue.list()}[rid]
    assert (listed["tx"], listed["payload"]) == (logged.tx.hex(), logged.payload.canonical_bytes().hex())
    done = ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    assert done.tx == logged.tx  # the logged bytes were signed
    assert done.signed is not None and ELSEWHERE[2:] not in done.signed.raw.lower()


def test_lowering_the_approval_requirement(ready: Ready, capsys: pytest.CaptureFixture[str]) -> None:
    rid = ready.create(ETHER // 100)
    _edit(ready, rid, rule={"approvals_required": 1, "initiator_may_approve": True, "approval_ttl": 7200})
    rec = ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice"])
    assert rec.status == "pending" and ready.signature_rows(rid) == []  # still 2 approvals needed
    assert _reported(ready, rid, capsys)


def test_blanking_the_initiator(ready: Ready, capsys: pytest.CaptureFixture[str]) -> None:
    rid = ready.create(ETHER // 100, initiator="alice")
    _edit(ready, rid, initiator=None, initiator_id=None)
    rec = ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice"])
    assert rec.approvals == ()  # alice initiated it: the signed payload says so, whatever the queue says
    assert ready.prompts.touched == [] or "sim:alice" not in ready.prompts.touched[-1:]
    assert _reported(ready, rid, capsys)


def test_deleting_a_veto(ready: Ready, capsys: pytest.CaptureFixture[str]) -> None:
    rid = ready.create(ETHER // 100)
    ready.service.reject(rid, operator="carol", reason="unexpected")
    _edit(ready, rid, status="pending", rejections=[])
    with pytest.raises(ApprovalError, match="rejected"):
        ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    assert ready.signature_rows(rid) == []
    assert _reported(ready, rid, capsys)


def test_resetting_a_signed_request_to_pending(ready: Ready, capsys: pytest.CaptureFixture[str]) -> None:
    rid = ready.create(ETHER // 100)
    ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    _edit(ready, rid, status="pending", signed=None, approvals=[])
    with pytest.raises(ApprovalError, match="already signed"):
        ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    assert len(ready.signature_rows(rid)) == 1
    assert _reported(ready, rid, capsys)


def test_erasing_the_velocity_history(ready: Ready) -> None:
    first, second = ready.create(9 * ETHER // 10), ready.create(9 * ETHER // 10, nonce=1)  # 1 ETH a day
    ready.service.approve(first, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    ready.queue_sql("DELETE FROM requests WHERE status = 'signed'")
    with pytest.raises(PolicyDenied, match="velocity-day"):
        ready.service.approve(second, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    assert ready.signature_rows(second) == []


def test_deleting_an_operators_suspension(ready: Ready, home: Path) -> None:
    snapshot = (home / "sim" / "alice.fido2.json").read_bytes()  # a clone made today...
    first = ready.create(ETHER // 100)
    ready.service.approve(first, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    (home / "sim" / "alice.fido2.json").write_bytes(snapshot)  # ...used later: alice is suspended
    second = ready.create(ETHER // 100, nonce=1)
    with pytest.raises(ApprovalInvalid, match="signCount"):
        ready.service.approve(second, finder=ready.finder, prompts=ready.prompts, operators=["alice"])
    for table in ("requests", "meta"):
        ready.queue_sql(f"DELETE FROM {table}")  # whatever the queue held about it is gone
    third = ready.create(ETHER // 100, nonce=2)
    rec = ready.service.approve(third, finder=ready.finder, prompts=ready.prompts, operators=["bob", "alice"])
    assert rec.status == "pending"  # bob counts; suspended alice does not (the audit log says so)
    # suspended alice is not even asked to touch; bob's approval is the only one
    assert {a.operator_id for a in rec.approvals} == {ready.service.vault().header.operators[1].operator_id}
    assert rec.to_record()["rule"]["approvals_required"] == 2


def test_deleting_the_queue_loses_nothing_but_speed(ready: Ready) -> None:
    signed = ready.create(ETHER // 100)
    ready.service.approve(signed, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    vetoed = ready.create(ETHER // 100, nonce=1)
    ready.service.reject(vetoed, operator="carol")
    half = ready.create(ETHER // 100, nonce=2)
    ready.service.approve(half, finder=ready.finder, prompts=ready.prompts, operators=["alice"])
    with pytest.raises(PolicyDenied):
        ready.service.create(chain="ETH", signature_id=ready.sig_id, index=0, tx=ready.tx(ETHER, to=ELSEWHERE))
    before = ready.service.queue.list()
    assert sorted(r["status"] for r in before) == ["denied", "pending", "rejected", "signed"]
    for suffix in ("", "-wal", "-shm"):
        (ready.home / "state" / f"queue.sqlite{suffix}").unlink(missing_ok=True)
    after = Withdrawals(ready.home).queue.list()
    assert after == before
