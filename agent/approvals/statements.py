"""What a veto and a reinstatement sign: two small canonical payloads (docs/approvals.md §8 and §9).

A **veto** is signed like an approval, over its own domain, so a rejection signature can never pass
for an approval (or the reverse) and is bound to the exact request, through the SHA-256 of the
request's approval payload, and to the reason the operator gave::

    R = SHA-256("kms-agent/v1/rejection" || 0x00 || canonical_cbor(rejection payload))

A **reinstatement** lifts one suspension (cloned-token evidence) of one operator. Its statement is
canonical CBOR too; the approvers sign an ordinary approval payload (§2) whose action is
``reinstatement`` and whose ``unsigned_tx_sha256`` is the SHA-256 of the statement, so the quorum,
signCount and verification rules of approvals apply unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2

from agent.approvals.payload import ID_LEN, SHA256_LEN, Action, ApprovalPayload
from agent.errors import ApprovalInvalid, ProgrammingError

REJECTION_DOMAIN = b"kms-agent/v1/rejection\0"
REJECTION_VERSION = 1
REINSTATEMENT_VERSION = 1
_REJECTION_KEYS = frozenset({"v", "action", "vault_id", "request_id", "payload_sha256", "reason"})
_REINSTATEMENT_KEYS = frozenset({"v", "action", "vault_id", "operator_id", "suspension_seq"})
_MAX_REASON = 1024
_UINT64 = (1 << 64) - 1


def _canonical(fields: dict[str, Any]) -> bytes:
    return bytes(cbor2.dumps(fields, canonical=True))


def _strict_map(data: bytes, keys: frozenset[str], what: str) -> dict[str, Any]:
    try:
        raw = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several unrelated types for garbage
        raise ApprovalInvalid(f"{what} is not valid CBOR ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or set(raw) != keys:
        raise ApprovalInvalid(f"{what} must be a CBOR map of exactly {', '.join(sorted(keys))}")
    return raw


@dataclass(frozen=True)
class RejectionPayload:
    """What a vetoing operator's touch signs: this vault, this request, these exact payload bytes, this reason."""

    vault_id: bytes
    request_id: bytes
    #: SHA-256 of the request's canonical approval payload (§2): the veto names the exact bytes.
    payload_sha256: bytes
    reason: str = ""
    version: int = REJECTION_VERSION

    def __post_init__(self) -> None:
        for name, length in (("vault_id", ID_LEN), ("request_id", ID_LEN), ("payload_sha256", SHA256_LEN)):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != length:
                raise ProgrammingError(f"rejection payload: {name} must be {length} bytes")
        if not isinstance(self.reason, str) or len(self.reason) > _MAX_REASON:
            raise ProgrammingError(f"rejection payload: reason must be text of at most {_MAX_REASON} characters")
        if self.version != REJECTION_VERSION or isinstance(self.version, bool):
            raise ProgrammingError(f"rejection payload: version must be {REJECTION_VERSION}")

    @classmethod
    def for_request(cls, payload: ApprovalPayload, reason: str = "") -> RejectionPayload:
        """The veto of the request whose approval payload is ``payload``."""
        return cls(payload.vault_id, payload.request_id, hashlib.sha256(payload.canonical_bytes()).digest(), reason)

    def to_cbor_map(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "action": "reject",
            "vault_id": self.vault_id,
            "request_id": self.request_id,
            "payload_sha256": self.payload_sha256,
            "reason": self.reason,
        }

    def canonical_bytes(self) -> bytes:
        return _canonical(self.to_cbor_map())

    def digest(self) -> bytes:
        """``SHA-256("kms-agent/v1/rejection\\0" || canonical_cbor(payload))``: the 32 bytes a token signs."""
        return hashlib.sha256(REJECTION_DOMAIN + self.canonical_bytes()).digest()

    @classmethod
    def from_cbor(cls, data: bytes) -> RejectionPayload:
        """:raises ApprovalInvalid: not canonical CBOR, wrong keys, types or lengths."""
        raw = _strict_map(data, _REJECTION_KEYS, "rejection payload")
        if isinstance(raw["v"], bool) or raw["v"] != REJECTION_VERSION:
            raise ApprovalInvalid(f"rejection payload version {raw['v']!r} is not {REJECTION_VERSION}")
        if raw["action"] != "reject":
            raise ApprovalInvalid(f"rejection payload action {raw['action']!r} is not 'reject'")
        try:
            payload = cls(raw["vault_id"], raw["request_id"], raw["payload_sha256"], raw["reason"], raw["v"])
        except ProgrammingError as exc:
            raise ApprovalInvalid(str(exc)) from None
        if payload.canonical_bytes() != bytes(data):
            raise ApprovalInvalid("rejection payload is not in canonical CBOR form")
        return payload


def rejection_digest(payload: ApprovalPayload, reason: str = "") -> bytes:
    """The digest a veto of the request with approval payload ``payload`` signs."""
    return RejectionPayload.for_request(payload, reason).digest()


@dataclass(frozen=True)
class ReinstatementStatement:
    """Lift the suspension recorded in audit row ``suspension_seq`` of operator ``operator_id``."""

    vault_id: bytes
    operator_id: bytes
    #: The audit row (``suspension``) being lifted: a later suspension is not lifted by this one.
    suspension_seq: int
    version: int = REINSTATEMENT_VERSION

    def __post_init__(self) -> None:
        for name in ("vault_id", "operator_id"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != ID_LEN:
                raise ProgrammingError(f"reinstatement: {name} must be {ID_LEN} bytes")
        seq = self.suspension_seq
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq <= _UINT64:
            raise ProgrammingError("reinstatement: suspension_seq must be a positive audit row number")
        if self.version != REINSTATEMENT_VERSION or isinstance(self.version, bool):
            raise ProgrammingError(f"reinstatement: version must be {REINSTATEMENT_VERSION}")

    def to_cbor_map(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "action": "reinstate",
            "vault_id": self.vault_id,
            "operator_id": self.operator_id,
            "suspension_seq": self.suspension_seq,
        }

    def canonical_bytes(self) -> bytes:
        return _canonical(self.to_cbor_map())

    def sha256(self) -> bytes:
        """What the approval payload's ``unsigned_tx_sha256`` carries."""
        return hashlib.sha256(self.canonical_bytes()).digest()

    @classmethod
    def from_cbor(cls, data: bytes) -> ReinstatementStatement:
        """:raises ApprovalInvalid: not canonical CBOR, wrong keys, types or lengths."""
        raw = _strict_map(data, _REINSTATEMENT_KEYS, "reinstatement statement")
        if raw["action"] != "reinstate" or isinstance(raw["v"], bool) or raw["v"] != REINSTATEMENT_VERSION:
            raise ApprovalInvalid("reinstatement statement: wrong version or action")
        try:
            statement = cls(raw["vault_id"], raw["operator_id"], raw["suspension_seq"], raw["v"])
        except ProgrammingError as exc:
            raise ApprovalInvalid(str(exc)) from None
        if statement.canonical_bytes() != bytes(data):
            raise ApprovalInvalid("reinstatement statement is not in canonical CBOR form")
        return statement


def reinstatement_payload(
    statement: ReinstatementStatement, *, request_id: bytes, expires_at: int, policy_generation: int
) -> ApprovalPayload:
    """The approval payload (§2, action ``reinstatement``) the other operators' touches sign.

    ``initiator`` is the suspended operator, so that their own touch never counts towards lifting
    their own suspension; ``unsigned_tx_sha256`` is the statement's SHA-256.
    """
    return ApprovalPayload.for_statement(
        Action.REINSTATEMENT,
        vault_id=statement.vault_id,
        request_id=request_id,
        statement_sha256=statement.sha256(),
        expires_at=expires_at,
        policy_generation=policy_generation,
        initiator=statement.operator_id,
    )
