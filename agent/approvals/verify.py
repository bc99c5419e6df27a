"""Offline verification of one recorded approval against the slot enrolled in the vault header.

Pure: no token, no disk. The same checks run when the agent accepts an approval, when the quorum is
evaluated, and when ``kms-agent audit verify`` re-checks every approval row years later
(docs/approvals.md §3).

* FIDO2 (``fido2-hmac``): the UP (touch) flag must be set in the signed ``authData``, always, and
  the UV (PIN) flag whenever the slot enrolled UV (``slot.public["uv"]``; slots from before that
  field existed were all UV slots). A slot that records ``up: false`` cannot approve at all.
  Then :func:`agent.tokens.fido2_token.verify_assertion`: the COSE key from the slot verifies the
  signature over ``authData || digest`` and ``rp_id_hash`` must be SHA-256 of the slot's rp id.
  The recorded ``sign_count`` and flags must equal what the signed ``authData`` says.
* PIV (``piv``): the card's signing key signs the 32-byte digest as an already-hashed message
  (``Prehashed(SHA256)``), exactly as :mod:`agent.tokens.piv_token` asks the card to; we verify
  with ``cryptography`` under the slot's ``sign_pub`` (compressed SEC1 P-256 point). PIV proves
  touch and PIN only through the attested slot policy, so the slot must say touch ALWAYS and a PIN
  policy that requires the PIN; ``auth_data`` is empty and ``sign_count`` is 0 (PIV has no counter).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from agent.approvals.evidence import RecordedApproval, Rejection, Roster, Slot, find_slot
from agent.approvals.payload import Action, ApprovalPayload, approval_digest
from agent.approvals.statements import ReinstatementStatement, RejectionPayload
from agent.errors import ApprovalInvalid, KmsAgentError

FIDO2_KIND = "fido2-hmac"
#: ``agent.tokens.piv_token.KIND`` (kept literal so verifying never imports yubikit).
PIV_KIND = "piv"
PIV_APPROVAL_ALG = "ecdsa-p256-prehashed-sha256"
#: yubikit ``TOUCH_POLICY.ALWAYS``: CACHED would let one touch approve several requests.
_PIV_TOUCH_ALWAYS = 2
#: yubikit ``PIN_POLICY`` ONCE, ALWAYS, MATCH_ONCE, MATCH_ALWAYS: the PIN (or a fingerprint) is required.
_PIV_PIN_REQUIRED = frozenset({2, 3, 4, 5})
_AUTH_DATA_MIN = 37  # rp_id_hash(32) | flags(1) | counter(4)
_FLAGS_OFFSET = 32
_FLAG_UP = 0x01  # WebAuthn §6.1 authenticator data flags
_FLAG_UV = 0x04


def verify_approval(approval: RecordedApproval, slot: Slot, digest: bytes) -> None:
    """Check that ``approval`` is ``slot``'s token's signature over ``digest`` with touch and PIN.

    This does not apply the signCount rule, expiry or the quorum: see
    :func:`agent.approvals.quorum.evaluate_quorum`.

    :raises ApprovalInvalid: the evidence does not verify, or its recorded fields disagree with it.
    """
    if len(digest) != 32:
        raise ApprovalInvalid("an approval digest is 32 bytes")
    if approval.slot_id != slot.slot_id:
        raise ApprovalInvalid(f"the approval names slot {approval.slot_id.hex()}, not {slot.label!r}")
    if approval.kind != slot.kind:
        raise ApprovalInvalid(f"the approval is a {approval.kind!r} approval but slot {slot.label!r} is {slot.kind!r}")
    if slot.kind == FIDO2_KIND:
        _verify_fido2(approval, slot, digest)
    elif slot.kind == PIV_KIND:
        _verify_piv(approval, slot, digest)
    else:
        raise ApprovalInvalid(f"slot {slot.label!r} is of kind {slot.kind!r}, which cannot approve")


def _verify_fido2(approval: RecordedApproval, slot: Slot, digest: bytes) -> None:
    from agent.tokens.fido2_token import verify_assertion

    if len(approval.auth_data) < _AUTH_DATA_MIN:
        raise ApprovalInvalid(f"the approval by {slot.label!r} has truncated authenticator data")
    if slot.public.get("up") is False:
        raise ApprovalInvalid(f"slot {slot.label!r} was enrolled without user presence and cannot approve")
    flags = approval.auth_data[_FLAGS_OFFSET]
    if not flags & _FLAG_UP:
        raise ApprovalInvalid(
            f"the approval by {slot.label!r} carries no user presence (UP flag): nothing shows a touch"
        )
    if slot.public.get("uv", True) and not flags & _FLAG_UV:
        raise ApprovalInvalid(
            f"the approval by {slot.label!r} carries no user verification (UV flag) although its slot enrolled UV"
        )
    try:
        evidence = verify_assertion(slot.public, digest, approval.auth_data, approval.signature, slot.label)
    except KmsAgentError as exc:
        raise ApprovalInvalid(f"the approval by {slot.label!r} does not verify: {exc.message}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ApprovalInvalid(f"the approval by {slot.label!r} cannot be checked ({type(exc).__name__})") from None
    recorded = (approval.sign_count, approval.user_present, approval.user_verified)
    signed = (evidence.sign_count, evidence.user_present, evidence.user_verified)
    if recorded != signed:
        raise ApprovalInvalid(
            f"the approval record of {slot.label!r} says (count, UP, UV) = {recorded}, "
            f"its signed authenticator data says {signed}"
        )


def _verify_piv(approval: RecordedApproval, slot: Slot, digest: bytes) -> None:
    public = slot.public
    if public.get("approval_alg", PIV_APPROVAL_ALG) != PIV_APPROVAL_ALG:
        raise ApprovalInvalid(f"slot {slot.label!r} uses approval algorithm {public.get('approval_alg')!r}")
    if public.get("sign_touch_policy") != _PIV_TOUCH_ALWAYS or public.get("sign_pin_policy") not in _PIV_PIN_REQUIRED:
        raise ApprovalInvalid(f"slot {slot.label!r}: its signing key does not require a touch every time and a PIN")
    if approval.auth_data or approval.sign_count != 0 or not (approval.user_present and approval.user_verified):
        raise ApprovalInvalid(f"the PIV approval record of {slot.label!r} has FIDO2-only fields or missing flags")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(public["sign_pub"]))
        key.verify(approval.signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError, KeyError, TypeError):
        raise ApprovalInvalid(f"the approval by {slot.label!r} does not verify against its enrolled key") from None


# --- audit rows -------------------------------------------------------------------------------
def approval_audit_payload(
    payload: ApprovalPayload,
    approval: RecordedApproval,
    slot: Slot,
    *,
    payload_inline: bool = True,
    public_inline: bool = True,
) -> dict[str, Any]:
    """The audit-log payload of an ``approval`` row: the raw evidence, and what it was checked against.

    The signed payload (canonical CBOR, hex) and the slot's public fields at the time (so an
    approval by a since-removed token still re-verifies) are written inline, or, when the log
    already holds them, as their SHA-256: a withdrawal's payload is in its ``request`` row, and a
    slot's public fields in the first approval row that slot ever wrote. A row with references is
    re-verified with a :class:`Resolver` over the same log (docs/audit-log.md §5).
    """
    canonical = payload.canonical_bytes()
    public_cbor = slot_public_cbor(slot)
    slot_record: dict[str, Any] = {"kind": slot.kind, "label": slot.label, "operator_id": slot.operator_id.hex()}
    if public_inline:
        slot_record["public_cbor"] = public_cbor.hex()
    else:
        slot_record["public_sha256"] = hashlib.sha256(public_cbor).hexdigest()
    record: dict[str, Any] = {
        "digest": approval_digest(payload).hex(),
        "approval": approval.to_json(),
        "slot": slot_record,
    }
    if payload_inline:
        record["payload_cbor"] = canonical.hex()
    else:
        record["payload_sha256"] = hashlib.sha256(canonical).hexdigest()
    return record


def slot_public_cbor(slot: Slot) -> bytes:
    """The canonical CBOR of a slot's public fields, as approval rows record (or reference) it."""
    return bytes(cbor2.dumps(dict(slot.public), canonical=True))


class Resolver(Protocol):
    """Finds what an approval row refers to by digest, in the log it came from."""

    def payload(self, request_id: str, sha256: bytes) -> bytes | None:
        """The canonical payload of ``request_id`` with that digest, or None."""
        ...

    def slot_public(self, sha256: bytes) -> bytes | None:
        """A slot's public CBOR recorded earlier with that digest, or None."""
        ...


def _referenced(
    record: Mapping[str, Any], inline: str, digest_key: str, fetch: Callable[[bytes], bytes | None] | None, what: str
) -> bytes:
    if inline in record:
        return bytes.fromhex(record[inline])
    want = bytes.fromhex(record[digest_key])
    found = fetch(want) if fetch is not None else None
    if found is None or hashlib.sha256(found).digest() != want:
        raise ApprovalInvalid(f"approval row: the {what} it refers to is not in the log")
    return found


class _Row(Protocol):
    @property
    def request_id(self) -> str | None: ...

    @property
    def payload(self) -> Mapping[str, Any]: ...


def verify_approval_record(
    record: Mapping[str, Any],
    roster: Roster | None = None,
    *,
    request_id: str | None = None,
    resolver: Resolver | None = None,
) -> RecordedApproval:
    """Re-verify an approval row's payload (see :func:`approval_audit_payload`).

    The slot comes from ``roster`` (the current vault header) when it still lists it, and must then
    equal the recorded one; a slot removed since is checked under its recorded public key.

    :param resolver: finds what a row refers to by digest (rows without references need none).
    :raises ApprovalInvalid: anything does not match or verify.
    """
    try:
        raw_slot = record["slot"]
        payload_bytes = _referenced(
            record,
            "payload_cbor",
            "payload_sha256",
            None if resolver is None or request_id is None else lambda d: resolver.payload(request_id, d),
            "request payload",
        )
        public_bytes = _referenced(
            raw_slot, "public_cbor", "public_sha256", None if resolver is None else resolver.slot_public, "slot"
        )
        payload = ApprovalPayload.from_cbor(payload_bytes)
        digest = bytes.fromhex(record["digest"])
        approval = RecordedApproval.from_json(record["approval"])
        recorded_public = cbor2.loads(public_bytes)
        recorded = Slot(
            approval.slot_id,
            bytes.fromhex(raw_slot["operator_id"]),
            raw_slot["kind"],
            raw_slot["label"],
            recorded_public,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ApprovalInvalid(f"approval row is malformed ({type(exc).__name__}: {exc})") from None
    if digest != approval_digest(payload):
        raise ApprovalInvalid("approval row: the stored digest is not the digest of the stored payload")
    if approval.request_id != payload.request_id or (request_id is not None and request_id != payload.request_id.hex()):
        raise ApprovalInvalid("approval row: the approval, the payload and the row name different requests")
    slot = recorded
    if roster is not None:
        current = find_slot(roster, approval.slot_id)
        if current is not None:
            if (current.operator_id, current.kind, dict(current.public)) != (
                recorded.operator_id,
                recorded.kind,
                recorded.public,
            ):
                raise ApprovalInvalid("approval row: the recorded slot differs from the slot in the vault header")
            slot = current
    if slot.operator_id != approval.operator_id:
        raise ApprovalInvalid("approval row: the approval names another operator than its slot's owner")
    verify_approval(approval, slot, digest)
    return approval


def approval_row_verifier(roster: Roster | None = None, resolver: Resolver | None = None) -> Callable[[_Row], None]:
    """A callback for :meth:`agent.audit.AuditLog.verify` that re-verifies every ``approval`` row,
    and every signed ``rejection`` row (docs/approvals.md §8)."""

    def check(row: _Row) -> None:
        if getattr(row, "kind", "approval") == "rejection":
            verify_rejection_record(row.payload, roster, request_id=row.request_id, resolver=resolver)
            return
        verify_approval_record(row.payload, roster, request_id=row.request_id, resolver=resolver)

    return check


# --- vetoes ----------------------------------------------------------------------------------
def rejection_audit_payload(payload: ApprovalPayload, rejection: Rejection, slot: Slot) -> dict[str, Any]:
    """The payload of a signed ``rejection`` row: the veto, its digest, the request's payload hash, the slot.

    The slot's public fields are written inline, so a veto by a since-removed token still re-verifies.
    """
    canonical = payload.canonical_bytes()
    return {
        **rejection.to_json(),
        "digest": RejectionPayload.for_request(payload, rejection.reason).digest().hex(),
        "payload_sha256": hashlib.sha256(canonical).hexdigest(),
        "slot": {
            "kind": slot.kind,
            "label": slot.label,
            "operator_id": slot.operator_id.hex(),
            "public_cbor": slot_public_cbor(slot).hex(),
        },
    }


def verify_rejection(rejection: Rejection, slot: Slot, payload: ApprovalPayload) -> None:
    """A signed veto: ``slot``'s token signed the rejection digest of the request with ``payload``.

    :raises ApprovalInvalid: unsigned, another request or operator, or the signature does not verify.
    """
    touch = rejection.touch
    if touch is None:
        raise ApprovalInvalid("the rejection carries no token signature")
    if touch.request_id != payload.request_id or rejection.request_id != payload.request_id:
        raise ApprovalInvalid("the rejection names another request")
    if slot.operator_id != rejection.operator_id or touch.operator_id != rejection.operator_id:
        raise ApprovalInvalid("the rejection names another operator than its slot's owner")
    try:
        verify_approval(touch, slot, RejectionPayload.for_request(payload, rejection.reason).digest())
    except ApprovalInvalid as exc:
        raise ApprovalInvalid(exc.message.replace("the approval", "the rejection")) from None


def rejection_row_slot(record: Mapping[str, Any], rejection: Rejection) -> Slot:
    """The slot a signed ``rejection`` row recorded (its public fields as they were at the time).

    :raises ApprovalInvalid: the row has no (well-formed) slot.
    """
    try:
        raw = record["slot"]
        assert rejection.touch is not None
        return Slot(
            rejection.touch.slot_id,
            bytes.fromhex(raw["operator_id"]),
            raw["kind"],
            raw["label"],
            cbor2.loads(bytes.fromhex(raw["public_cbor"])),
        )
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise ApprovalInvalid(f"rejection row is malformed ({type(exc).__name__}: {exc})") from None


def verify_rejection_record(
    record: Mapping[str, Any],
    roster: Roster | None = None,
    *,
    request_id: str | None = None,
    resolver: Resolver | None = None,
) -> Rejection:
    """Re-verify a ``rejection`` row (see :func:`rejection_audit_payload`); unsigned rows (older
    kms-agent versions) pass unchecked, as vetoes they can only make the agent refuse.

    :raises ApprovalInvalid: a signed row whose digest, payload reference, slot or signature is wrong.
    """
    rejection = Rejection.from_json(record)
    if rejection.touch is None:
        return rejection
    rid = request_id or rejection.request_id.hex()
    if rid != rejection.request_id.hex():
        raise ApprovalInvalid("rejection row: the row and the rejection name different requests")
    try:
        want = bytes.fromhex(record["payload_sha256"])
        digest = bytes.fromhex(record["digest"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ApprovalInvalid(f"rejection row is malformed ({type(exc).__name__})") from None
    found = resolver.payload(rid, want) if resolver is not None else None
    if found is None or hashlib.sha256(found).digest() != want:
        raise ApprovalInvalid("rejection row: the request payload it refers to is not in the log")
    payload = ApprovalPayload.from_cbor(found)
    if digest != RejectionPayload.for_request(payload, rejection.reason).digest():
        raise ApprovalInvalid("rejection row: the stored digest is not the digest of this request's veto")
    slot = rejection_row_slot(record, rejection)
    if roster is not None:
        current = find_slot(roster, slot.slot_id)
        if current is not None:
            if (current.operator_id, current.kind, dict(current.public)) != (slot.operator_id, slot.kind, slot.public):
                raise ApprovalInvalid("rejection row: the recorded slot differs from the slot in the vault header")
            slot = current
    verify_rejection(rejection, slot, payload)
    return rejection


# --- reinstatements ----------------------------------------------------------------------------
def verify_reinstatement_record(record: Mapping[str, Any], roster: Roster, *, vault_id: bytes) -> bytes:
    """Re-check a ``reinstatement`` row against the vault header; returns the reinstated operator's id.

    The statement must be what the approval payload's ``unsigned_tx_sha256`` names, and at least
    ``approvals_required`` (never fewer than one) distinct operators *other than the reinstated one*
    must have signed that payload with tokens enrolled in ``roster`` (docs/approvals.md §9). A row
    written by anyone but a quorum thus needs genuine touches over this exact reinstatement.

    :raises ApprovalInvalid: anything does not match or verify.
    """
    try:
        statement = ReinstatementStatement.from_cbor(bytes.fromhex(record["statement_cbor"]))
        payload = ApprovalPayload.from_cbor(bytes.fromhex(record["payload_cbor"]))
        approvals = [RecordedApproval.from_json(a) for a in record["approvals"]]
        required = record["approvals_required"]
        named = (bytes.fromhex(record["operator_id"]), record["suspension_seq"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ApprovalInvalid(f"reinstatement row is malformed ({type(exc).__name__})") from None
    if (
        payload.action is not Action.REINSTATEMENT
        or payload.unsigned_tx_sha256 != statement.sha256()
        or payload.initiator != statement.operator_id
        or named != (statement.operator_id, statement.suspension_seq)
        or statement.vault_id != vault_id
        or payload.vault_id != vault_id
    ):
        raise ApprovalInvalid("reinstatement row: its statement, payload and fields disagree")
    if isinstance(required, bool) or not isinstance(required, int):
        raise ApprovalInvalid("reinstatement row: approvals_required must be an integer")
    digest = approval_digest(payload)
    counted: set[bytes] = set()
    for approval in approvals:
        op = roster.get(approval.operator_id)
        slot = op.slot(approval.slot_id) if op is not None else None
        if slot is None or approval.operator_id == statement.operator_id or approval.request_id != payload.request_id:
            continue
        try:
            verify_approval(approval, slot, digest)
        except ApprovalInvalid:
            continue
        counted.add(approval.operator_id)
    if len(counted) < max(required, 1):
        raise ApprovalInvalid(
            f"reinstatement row: {len(counted)} valid approvals by other operators, {max(required, 1)} needed"
        )
    return statement.operator_id
