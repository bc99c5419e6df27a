"""Approvals bound to exact bytes: canonical payload and digest, offline verification, the quorum.

Spec and vectors: docs/approvals.md. Everything here is pure (no disk, no token, no clock).
"""

from __future__ import annotations

from agent.approvals.evidence import (
    Operator,
    RecordedApproval,
    Rejection,
    Roster,
    Slot,
    find_slot,
    roster_from_header,
)
from agent.approvals.payload import (
    DOMAIN,
    Action,
    ApprovalPayload,
    PayloadOutput,
    approval_digest,
    canonical_cbor,
    payload_to_json,
)
from agent.approvals.quorum import (
    DEFAULT_APPROVAL_TTL,
    ApprovalRequest,
    QuorumDecision,
    QuorumOutcome,
    QuorumReason,
    QuorumRule,
    counters_from_records,
    evaluate_quorum,
)
from agent.approvals.verify import (
    FIDO2_KIND,
    PIV_KIND,
    Resolver,
    approval_audit_payload,
    approval_row_verifier,
    slot_public_cbor,
    verify_approval,
    verify_approval_record,
)

__all__ = [
    "DEFAULT_APPROVAL_TTL",
    "DOMAIN",
    "FIDO2_KIND",
    "PIV_KIND",
    "Action",
    "ApprovalPayload",
    "ApprovalRequest",
    "Operator",
    "PayloadOutput",
    "QuorumDecision",
    "QuorumOutcome",
    "QuorumReason",
    "QuorumRule",
    "RecordedApproval",
    "Rejection",
    "Resolver",
    "Roster",
    "Slot",
    "approval_audit_payload",
    "approval_digest",
    "approval_row_verifier",
    "canonical_cbor",
    "counters_from_records",
    "evaluate_quorum",
    "find_slot",
    "payload_to_json",
    "roster_from_header",
    "slot_public_cbor",
    "verify_approval",
    "verify_approval_record",
]
