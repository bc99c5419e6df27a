"""Vetoes signed with a touch (docs/approvals.md §8): evidence, not just a row."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from agent.approvals import approval_row_verifier, roster_from_header
from agent.approvals.statements import rejection_digest
from agent.audit import AuditKind
from agent.errors import ApprovalError, ApprovalInvalid
from agent.withdrawals.index_check import LogResolver
from agent.withdrawals.ledger import Status, open_audit
from tests.conftest import AutoPrompts, Cli
from tests.withdrawals.helpers import ETHER, Ready, ready_home


@pytest.fixture
def ready(home: Path, prompts: AutoPrompts) -> Ready:
    return ready_home(home, prompts)


def audit_problems(ready: Ready) -> list[str]:
    service = ready.service
    roster = roster_from_header(service.vault().header, suspended=service.ledger.suspended())
    report = service.audit.verify(approval_row_verifier(roster, LogResolver(open_audit(service.state))))
    return [p.what for p in report.problems]


def test_a_signed_veto_stops_signing_and_reverifies(ready: Ready) -> None:
    rid = ready.create(ETHER // 10)
    ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice"])
    state = ready.service.reject(
        rid, operator="carol", reason="not expected", finder=ready.finder, prompts=ready.prompts
    )
    assert state.status is Status.REJECTED
    assert ready.prompts.touched[-1] == "sim:carol"  # carol touched her token for the veto
    (veto,) = state.rejections
    assert veto.touch is not None and veto.touch.user_present and veto.touch.user_verified
    row = ready.service.audit.rows(kinds=["rejection"], request_id=rid)[-1].payload
    assert {"request_id", "operator_id", "rejected_at", "reason"} <= set(row)  # the old shape, plus evidence
    assert row["touch"]["signature"] and row["touch"]["auth_data"] and row["slot"]["public_cbor"]
    assert row["digest"] == rejection_digest(state.payload, "not expected").hex()
    with pytest.raises(ApprovalError, match="rejected"):
        ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["bob"])
    assert ready.signature_rows(rid) == []
    assert audit_problems(ready) == []
    record = state.to_record()["rejections"][0]
    assert record["operator_id"] == veto.operator_id.hex() and record["touch"]["slot_id"]


def test_a_veto_signed_over_another_request_or_reason_is_refused(ready: Ready) -> None:
    first, second = ready.create(ETHER // 10, nonce=0), ready.create(ETHER // 10, nonce=1)
    veto = ready.service.sign_rejection(
        first, operator="carol", reason="no", finder=ready.finder, prompts=ready.prompts
    )
    assert veto.touch is not None
    replayed = dataclasses.replace(
        veto, request_id=bytes.fromhex(second), touch=dataclasses.replace(veto.touch, request_id=bytes.fromhex(second))
    )
    with pytest.raises(ApprovalInvalid, match="does not verify"):
        ready.service.reject(second, operator="carol", reason="no", rejection=replayed)
    with pytest.raises(ApprovalInvalid, match="does not verify"):
        ready.service.reject(first, operator="carol", rejection=dataclasses.replace(veto, reason="edited"))
    assert ready.service.audit.rows(kinds=["rejection"]) == []
    assert ready.service.request(first).pending and ready.service.request(second).pending


def test_a_forged_rejection_row_is_ignored_and_reported_by_audit_verify(ready: Ready) -> None:
    rid = ready.create(ETHER // 10)
    good = ready.create(ETHER // 10, nonce=1)
    ready.service.reject(good, operator="carol", reason="r", finder=ready.finder, prompts=ready.prompts)
    genuine = ready.service.audit.rows(kinds=["rejection"], request_id=good)[-1].payload
    # Someone who can write the agent's log (not carol's token) forges carol's veto of rid: the
    # genuine signature cannot be bent to rid, and an edited one does not verify.
    forged = json.loads(json.dumps(genuine))
    forged["request_id"] = forged["touch"]["request_id"] = rid
    forged["payload_sha256"] = ready.service.audit.rows(kinds=["rejection"], request_id=good)[-1].payload[
        "payload_sha256"
    ]
    sig = bytearray(bytes.fromhex(forged["touch"]["signature"]))
    sig[-1] ^= 1
    forged["touch"]["signature"] = sig.hex()
    ready.service.audit.append(AuditKind.REJECTION, forged, request_id=rid, actor="carol")
    state = ready.service.request(rid)
    assert state.status is Status.PENDING  # a veto that does not verify rejects nothing
    problems = audit_problems(ready)
    assert len(problems) == 1 and problems[0].startswith("rejection does not verify"), problems
    state = ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    assert state.status is Status.SIGNED
    decision = ready.service.audit.rows(kinds=["alert"], request_id=rid)
    assert any("veto" in row.payload_text for row in decision)


def test_an_unsigned_rejection_row_of_an_older_version_is_still_a_veto(ready: Ready) -> None:
    rid = ready.create(ETHER // 10)
    carol = ready.service.vault().header.operator_named("carol")
    assert carol is not None
    legacy: dict[str, Any] = {
        "request_id": rid,
        "operator_id": carol.operator_id.hex(),
        "rejected_at": 1,
        "reason": "old",
    }
    ready.service.audit.append(AuditKind.REJECTION, legacy, request_id=rid, actor="carol")
    assert ready.service.request(rid).status is Status.REJECTED
    assert audit_problems(ready) == []


def test_reject_cli_touches_and_keeps_its_json_shape(ready: Ready, cli: Cli) -> None:
    rid = ready.create(ETHER // 10)
    out = cli.json("reject", rid, "--operator", "carol", "--reason", "unexpected")
    assert out["status"] == "rejected" and out["id"] == rid
    (veto,) = out["rejections"]
    assert veto["reason"] == "unexpected" and veto["touch"]["kind"] == "fido2-hmac"
    proc = cli("reject", rid, "--operator", "carol", touch="deny")
    assert proc.returncode != 0


@pytest.mark.xdist_group("agent")
def test_the_running_agent_takes_only_signed_vetoes(ready: Ready) -> None:
    from tests.service.agent_proc import start_agent

    agent = start_agent(ready.home, tcp=False)
    try:
        rid = ready.create(ETHER // 100)
        veto = ready.service.sign_rejection(
            rid, operator="carol", reason="x", finder=ready.finder, prompts=ready.prompts
        )
        assert veto.touch is not None
        with agent.unix() as client:
            unsigned = client.post(f"/v1/withdrawals/{rid}/reject", json={"operator": "carol", "reason": "x"})
            assert unsigned.status_code >= 400 and unsigned.json()["error"]["code"] == "usage"
            touch = {
                "slot_id": veto.touch.slot_id.hex(),
                "kind": veto.touch.kind,
                "auth_data": base64.b64encode(veto.touch.auth_data).decode(),
                "signature": base64.b64encode(veto.touch.signature).decode(),
                "sign_count": veto.touch.sign_count,
                "user_present": True,
                "user_verified": True,
            }
            edited = client.post(
                f"/v1/withdrawals/{rid}/reject", json={"operator": "carol", "reason": "edited", "touch": touch}
            )
            assert edited.status_code >= 400 and edited.json()["error"]["code"] == "approval"
            assert ready.service.request(rid).pending
            signed = client.post(
                f"/v1/withdrawals/{rid}/reject", json={"operator": "carol", "reason": "x", "touch": touch}
            )
            assert signed.status_code == 200, signed.text
            assert signed.json()["status"] == "rejected" and signed.json()["rejections"][0]["touch"]
    finally:
        assert agent.stop() == 0
