"""Records the quorum works on: the operator roster from the vault header, approvals, rejections.

An approval here is *recorded evidence*: what the token returned (``tokens.base.Approval``) plus
who and what it was for, kept so anyone can re-verify it later, offline, from the audit log. The
operator an approval counts for is always taken from the vault header's slot, never from the
record (a record naming another operator than its slot's owner is refused).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agent.errors import ApprovalInvalid, ProgrammingError
from agent.tokens.base import Approval

if TYPE_CHECKING:  # the header records only; approvals stay pure functions of plain values
    from agent.vault.records import VaultHeader

ID_LEN = 16
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


@dataclass(frozen=True)
class Slot:
    """One enrolled token credential (a keyslot of the vault header), public part only."""

    slot_id: bytes
    operator_id: bytes
    kind: str
    label: str
    public: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Operator:
    """One person. All of their tokens (slots) count as that one person in a quorum."""

    operator_id: bytes
    name: str
    slots: tuple[Slot, ...] = ()
    #: Set by the agent's state after a cloned-token alert; suspended operators' approvals do not count.
    suspended: bool = False

    def slot(self, slot_id: bytes) -> Slot | None:
        return next((s for s in self.slots if s.slot_id == slot_id), None)

    @property
    def display(self) -> str:
        return f"{self.name} ({self.operator_id.hex()[:8]})"


Roster = Mapping[bytes, Operator]


def roster_from_header(header: VaultHeader, *, suspended: Collection[bytes] = ()) -> dict[bytes, Operator]:
    """Operators and their slots as the (already verified) vault header lists them.

    :param suspended: operator ids the agent's state marks as suspended (cloned-token alerts).
    """
    slots: dict[bytes, list[Slot]] = {}
    for entry in header.slots:
        slot = Slot(entry.slot_id, entry.operator_id, entry.kind, entry.label, dict(entry.public))
        slots.setdefault(slot.operator_id, []).append(slot)
    out = set(suspended)
    return {
        op.operator_id: Operator(op.operator_id, op.name, tuple(slots.get(op.operator_id, ())), op.operator_id in out)
        for op in header.operators
    }


def find_slot(roster: Roster, slot_id: bytes) -> Slot | None:
    for operator in roster.values():
        slot = operator.slot(slot_id)
        if slot is not None:
            return slot
    return None


@dataclass(frozen=True)
class RecordedApproval:
    """One operator's touch over one request's approval digest, as the agent records it.

    ``counter_baseline`` is the signCount the agent had stored for this credential when it first
    accepted this approval; :func:`agent.approvals.quorum.evaluate_quorum` fills it in, so that a
    re-evaluation (or an auditor) checks the counter rule against the value of *that* moment,
    not against counters that later approvals of other requests have since raised.
    """

    request_id: bytes
    operator_id: bytes
    slot_id: bytes
    kind: str
    #: FIDO2 authenticator data (rp id hash, flags, counter); empty for PIV.
    auth_data: bytes
    signature: bytes
    sign_count: int
    user_present: bool
    user_verified: bool
    #: Unix seconds when the agent received it (the agent's clock; not signed by the token).
    approved_at: int
    counter_baseline: int | None = None

    def __post_init__(self) -> None:
        for name in ("request_id", "operator_id", "slot_id"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != ID_LEN:
                raise ProgrammingError(f"approval record: {name} must be {ID_LEN} bytes")

    @classmethod
    def from_token(
        cls, approval: Approval, *, request_id: bytes, operator_id: bytes, slot_id: bytes, approved_at: int
    ) -> RecordedApproval:
        """Wrap what ``Token.unwrap(..., digest=approval_digest(payload))`` returned."""
        return cls(
            request_id,
            operator_id,
            slot_id,
            approval.kind,
            bytes(approval.auth_data),
            bytes(approval.signature),
            approval.sign_count,
            approval.user_present,
            approval.user_verified,
            approved_at,
        )

    def with_baseline(self, baseline: int) -> RecordedApproval:
        return replace(self, counter_baseline=baseline)

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id.hex(),
            "operator_id": self.operator_id.hex(),
            "slot_id": self.slot_id.hex(),
            "kind": self.kind,
            "auth_data": self.auth_data.hex(),
            "signature": self.signature.hex(),
            "sign_count": self.sign_count,
            "user_present": self.user_present,
            "user_verified": self.user_verified,
            "approved_at": self.approved_at,
            "counter_baseline": self.counter_baseline,
        }

    @classmethod
    def from_json(cls, raw: Any) -> RecordedApproval:
        """Strict inverse of :meth:`to_json` (audit rows).

        :raises ApprovalInvalid: unknown or missing keys, wrong types, bad hex.
        """
        keys = {
            "request_id",
            "operator_id",
            "slot_id",
            "kind",
            "auth_data",
            "signature",
            "sign_count",
            "user_present",
            "user_verified",
            "approved_at",
            "counter_baseline",
        }
        if not isinstance(raw, dict) or set(raw) != keys:
            raise ApprovalInvalid("approval record must have exactly the keys " + ", ".join(sorted(keys)))
        baseline = raw["counter_baseline"]
        if baseline is not None and not _uint(baseline):
            raise ApprovalInvalid("approval record counter_baseline must be an unsigned integer or null")
        for name in ("sign_count", "approved_at"):
            if not _uint(raw[name]):
                raise ApprovalInvalid(f"approval record {name} must be an unsigned integer")
        for name in ("user_present", "user_verified"):
            if not isinstance(raw[name], bool):
                raise ApprovalInvalid(f"approval record {name} must be a boolean")
        if not isinstance(raw["kind"], str):
            raise ApprovalInvalid("approval record kind must be text")
        return cls(
            _hex(raw, "request_id", ID_LEN),
            _hex(raw, "operator_id", ID_LEN),
            _hex(raw, "slot_id", ID_LEN),
            raw["kind"],
            _hex(raw, "auth_data"),
            _hex(raw, "signature"),
            raw["sign_count"],
            raw["user_present"],
            raw["user_verified"],
            raw["approved_at"],
            baseline,
        )


@dataclass(frozen=True)
class Rejection:
    """An operator's veto, signed with a touch like an approval (docs/approvals.md §8).

    ``touch`` is the token's evidence over the rejection digest (``approved_at`` is when the agent
    received it). Rejections recorded before vetoes were signed have none; they are still honoured,
    since a veto can only make the agent refuse, never sign.
    """

    request_id: bytes
    operator_id: bytes
    rejected_at: int
    reason: str = ""
    touch: RecordedApproval | None = None

    def __post_init__(self) -> None:
        for name in ("request_id", "operator_id"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != ID_LEN:
                raise ProgrammingError(f"rejection record: {name} must be {ID_LEN} bytes")

    @property
    def signed(self) -> bool:
        return self.touch is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id.hex(),
            "operator_id": self.operator_id.hex(),
            "rejected_at": self.rejected_at,
            "reason": self.reason,
        }
        if self.touch is not None:
            out["touch"] = self.touch.to_json()
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Rejection:
        """Strict inverse of :meth:`to_json`; a ``rejection`` row may also carry ``digest``,
        ``payload_sha256`` and ``slot`` (checked by :func:`agent.approvals.verify.verify_rejection_record`).
        """
        legacy = {"request_id", "operator_id", "rejected_at", "reason"}
        if not isinstance(raw, dict) or not legacy <= set(raw) or not set(raw) <= legacy | _SIGNED_ROW_KEYS:
            raise ApprovalInvalid(
                "rejection record must have request_id, operator_id, rejected_at, reason "
                "(and, when signed, touch, digest, payload_sha256, slot)"
            )
        if not _uint(raw["rejected_at"]) or not isinstance(raw["reason"], str):
            raise ApprovalInvalid("rejection record has a field of the wrong type")
        touch = RecordedApproval.from_json(raw["touch"]) if raw.get("touch") is not None else None
        rejection = cls(
            _hex(raw, "request_id", ID_LEN), _hex(raw, "operator_id", ID_LEN), raw["rejected_at"], raw["reason"], touch
        )
        if touch is not None and (touch.request_id, touch.operator_id) != (rejection.request_id, rejection.operator_id):
            raise ApprovalInvalid("rejection record: its touch names another request or operator")
        return rejection


#: What a signed ``rejection`` row adds to :meth:`Rejection.to_json` (docs/audit-log.md §5).
_SIGNED_ROW_KEYS = frozenset({"touch", "digest", "payload_sha256", "slot"})


def _uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hex(raw: Mapping[str, Any], name: str, length: int | None = None) -> bytes:
    value = raw[name]
    if not isinstance(value, str) or _HEX.fullmatch(value) is None:
        raise ApprovalInvalid(f"record field {name} must be lower-case hex")
    data = bytes.fromhex(value)
    if length is not None and len(data) != length:
        raise ApprovalInvalid(f"record field {name} must be {length} bytes")
    return data
