"""verify_approval: FIDO2 through the product's verify_assertion, PIV as the PIV backend signs; audit rows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.approvals import (
    PIV_KIND,
    ApprovalPayload,
    approval_audit_payload,
    approval_digest,
    approval_row_verifier,
    slot_public_cbor,
    verify_approval,
    verify_approval_record,
)
from agent.errors import ApprovalInvalid, ProgrammingError
from tests.approvals.helpers import UP, UV, SoftPiv, Team, oid, payload


@pytest.fixture
def team() -> Team:
    return Team.build()


def slot_of(team: Team, n: int):  # type: ignore[no-untyped-def]
    for op in team.roster.values():
        for slot in op.slots:
            if slot.slot_id == oid(n):
                return slot
    raise KeyError(n)


def test_fido2_approval_verifies(team: Team) -> None:
    p = payload()
    verify_approval(team.approve(p, 2, 0x21), slot_of(team, 0x21), approval_digest(p))


@pytest.mark.parametrize(
    "case",
    [
        "wrong-digest",
        "wrong-rp",
        "no-uv",
        "no-up",
        "other-key",
        "bad-sig",
        "record-count-lies",
        "record-flags-lie",
        "kind-mismatch",
        "truncated",
    ],
)
def test_fido2_approval_refusals(team: Team, case: str) -> None:
    p = payload()
    digest = approval_digest(p)
    slot = slot_of(team, 0x21)
    kw: dict[str, Any] = {}
    if case == "wrong-rp":
        kw = {"rp_id": "evil.example"}
    elif case == "no-uv":
        kw = {"flags": UP}
    elif case == "no-up":
        kw = {"flags": UV}
    approval = team.approve(p, 2, 0x21, digest=bytes(32) if case == "wrong-digest" else None, **kw)
    if case == "other-key":
        approval = dataclasses.replace(team.approve(p, 4, 0x41), operator_id=oid(2), slot_id=oid(0x21))
    elif case == "bad-sig":
        approval = dataclasses.replace(
            approval, signature=approval.signature[:-1] + bytes([approval.signature[-1] ^ 1])
        )
    elif case == "record-count-lies":
        approval = dataclasses.replace(approval, sign_count=approval.sign_count + 100)
    elif case == "record-flags-lie":
        approval = dataclasses.replace(team.approve(p, 2, 0x21, flags=UP), user_verified=True)
    elif case == "kind-mismatch":
        approval = dataclasses.replace(approval, kind="piv")
    elif case == "truncated":
        approval = dataclasses.replace(approval, auth_data=approval.auth_data[:20])
    with pytest.raises(ApprovalInvalid):
        verify_approval(approval, slot, digest)


def test_piv_approval_verifies_and_matches_the_backend(team: Team) -> None:
    from agent.tokens import piv_token

    assert piv_token.KIND == PIV_KIND
    p = payload()
    digest = approval_digest(p)
    approval = team.approve(p, 3, 0x31)
    slot = slot_of(team, 0x31)
    verify_approval(approval, slot, digest)
    # The backend's own offline check agrees, on the good and on a wrong digest.
    assert piv_token.verify_approval(slot.public, digest, approval.signature)
    assert not piv_token.verify_approval(slot.public, bytes(32), approval.signature)


@pytest.mark.parametrize(
    "public", [{"sign_touch_policy": 3}, {"sign_touch_policy": 1}, {"sign_pin_policy": 1}, {"approval_alg": "rsa"}]
)
def test_piv_slot_must_require_touch_and_pin(public: dict[str, Any]) -> None:
    token = SoftPiv("p")
    from agent.approvals import RecordedApproval, Slot

    slot = Slot(oid(9), oid(8), "piv", "p", {**token.public(), **public})
    p = payload()
    digest = approval_digest(p)
    approval = RecordedApproval.from_token(
        token.approve(digest), request_id=p.request_id, operator_id=oid(8), slot_id=oid(9), approved_at=0
    )
    with pytest.raises(ApprovalInvalid, match=r"touch|algorithm"):
        verify_approval(approval, slot, digest)


def test_piv_signature_over_unhashed_message_is_refused() -> None:
    """A card that hashed the digest again (ECDSA-SHA256 over the digest) is not what we enrolled."""
    from agent.approvals import RecordedApproval, Slot

    token = SoftPiv("p")
    slot = Slot(oid(9), oid(8), "piv", "p", token.public())
    p = payload()
    digest = approval_digest(p)
    wrong = token.key.sign(digest, ec.ECDSA(hashes.SHA256()))
    approval = RecordedApproval(p.request_id, oid(8), oid(9), "piv", b"", wrong, 0, True, True, 0)
    with pytest.raises(ApprovalInvalid):
        verify_approval(approval, slot, digest)


def test_payload_rejects_bad_fields() -> None:
    for bad in (
        {"request_id": bytes(15)},
        {"fee": -1},
        {"derivation_index": True},
        {"nonce": 1 << 64},
        {"outputs": [()]},
        {"unsigned_tx_sha256": "00" * 32},
        {"action": "withdrawal"},
    ):
        with pytest.raises(ProgrammingError):
            payload(**bad)


def test_payload_digest_changes_with_every_field() -> None:
    base = payload()
    variants = [
        payload(chain="LTC"),
        payload(network="mainnet"),
        payload(derivation_index=1),
        payload(unsigned_tx_sha256=hashlib.sha256(b"x").digest()),
        payload(fee=1411),
        payload(nonce=0),
        payload(expires_at=base.expires_at + 1),
        payload(policy_generation=8),
        payload(outputs=()),
        payload(signature_id="other"),
        payload(vault_id=bytes(16)),
        payload(request_id=bytes(16)),
    ]
    digests = {approval_digest(v) for v in variants}
    assert approval_digest(base) not in digests and len(digests) == len(variants)
    assert ApprovalPayload.from_cbor(base.canonical_bytes()) == base


def test_audit_record_reverifies(team: Team) -> None:
    p = payload()
    approval = team.approve(p, 2, 0x21).with_baseline(0)
    record = approval_audit_payload(p, approval, slot_of(team, 0x21))
    assert verify_approval_record(record, team.roster, request_id=p.request_id.hex()) == approval
    # Removed from the header since: still verifies under the recorded slot.
    assert verify_approval_record(record, {}) == approval
    tampered = {**record, "digest": "00" * 32}
    with pytest.raises(ApprovalInvalid):
        verify_approval_record(tampered, team.roster)
    wrong_request = approval_audit_payload(payload(request_id=oid(7)), approval, slot_of(team, 0x21))
    with pytest.raises(ApprovalInvalid):
        verify_approval_record(wrong_request, team.roster)
    swapped_key = dataclasses.replace(slot_of(team, 0x41), slot_id=oid(0x21), operator_id=oid(2))
    with pytest.raises(ApprovalInvalid):
        verify_approval_record(approval_audit_payload(p, approval, swapped_key), team.roster)
    with pytest.raises(ApprovalInvalid):
        approval_row_verifier(team.roster)(type("Row", (), {"request_id": None, "payload": {"junk": 1}})())


@dataclasses.dataclass
class _Log:
    """What an audit log holds for a compact approval row to refer to."""

    payloads: dict[str, bytes]
    publics: list[bytes]

    def payload(self, request_id: str, sha256: bytes) -> bytes | None:
        return self.payloads.get(request_id)

    def slot_public(self, sha256: bytes) -> bytes | None:
        return next((p for p in self.publics if hashlib.sha256(p).digest() == sha256), None)


def test_a_compact_audit_record_reverifies_from_what_the_log_holds(team: Team) -> None:
    p = payload()
    slot = slot_of(team, 0x21)
    approval = team.approve(p, 2, 0x21).with_baseline(0)
    compact = approval_audit_payload(p, approval, slot, payload_inline=False, public_inline=False)
    full = approval_audit_payload(p, approval, slot)
    assert "payload_cbor" not in compact and "public_cbor" not in compact["slot"]
    saved = len(p.canonical_bytes().hex()) + len(slot_public_cbor(slot).hex()) - 2 * len("ab" * 32)
    assert len(json.dumps(full)) - len(json.dumps(compact)) >= saved - 64  # the two key names
    rid = p.request_id.hex()
    log = _Log({rid: p.canonical_bytes()}, [slot_public_cbor(slot)])
    assert verify_approval_record(compact, {}, request_id=rid, resolver=log) == approval
    # Nothing to refer to, or something else under the same request id: refused.
    with pytest.raises(ApprovalInvalid, match="request payload it refers to is not in the log"):
        verify_approval_record(compact, {}, request_id=rid)
    other = _Log({rid: payload(signature_id="other").canonical_bytes()}, log.publics)
    with pytest.raises(ApprovalInvalid, match="request payload it refers to"):
        verify_approval_record(compact, {}, request_id=rid, resolver=other)
    with pytest.raises(ApprovalInvalid, match="slot it refers to"):
        verify_approval_record(compact, {}, request_id=rid, resolver=_Log(log.payloads, []))


def test_an_approval_without_the_up_flag_is_refused_even_if_the_record_says_touched(team: Team) -> None:
    """A correctly signed authData without UP: no touch happened, whatever the record claims."""
    p = payload()
    slot = slot_of(team, 0x21)
    untouched = team.approve(p, 2, 0x21, flags=UV)
    assert untouched.auth_data[32] & UP == 0
    for approval in (untouched, dataclasses.replace(untouched, user_present=True)):
        with pytest.raises(ApprovalInvalid) as refused:
            verify_approval(approval, slot, approval_digest(p))
        assert "user presence" in refused.value.message


def test_uv_is_required_exactly_when_the_slot_enrolled_uv(team: Team) -> None:
    p = payload()
    slot = slot_of(team, 0x21)
    no_uv = team.approve(p, 2, 0x21, flags=UP)
    with pytest.raises(ApprovalInvalid) as refused:
        verify_approval(no_uv, slot, approval_digest(p))
    assert "user verification" in refused.value.message
    # A slot that enrolled without UV accepts a touch-only approval, but never one without UP.
    touch_only = dataclasses.replace(slot, public={**slot.public, "uv": False})
    verify_approval(team.approve(p, 2, 0x21, flags=UP), touch_only, approval_digest(p))
    with pytest.raises(ApprovalInvalid):
        verify_approval(team.approve(p, 2, 0x21, flags=UV), touch_only, approval_digest(p))
    # A slot that says it was enrolled without user presence cannot approve at all.
    no_presence = dataclasses.replace(slot, public={**slot.public, "up": False})
    with pytest.raises(ApprovalInvalid):
        verify_approval(team.approve(p, 2, 0x21), no_presence, approval_digest(p))
