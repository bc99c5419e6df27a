"""A request's state, derived from the hash-chained audit log alone (docs/withdrawals.md §3).

The audit log is the evidence; the queue is an index built from it. Everything a signing decision
needs that is not in the signed vault header comes from here: the request's exact bytes and the
payload approvers signed, the approvals (token-signed), vetoes, the signature if one exists,
suspended operators, the signCounts already seen, and the velocity history. Every row read is
checked against its own hash, so an edited row makes us refuse, never sign.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.approvals import ApprovalPayload, RecordedApproval, Rejection, roster_from_header
from agent.approvals.verify import rejection_row_slot, verify_reinstatement_record, verify_rejection
from agent.audit import AuditKind, AuditLog, AuditRow, IndexLookup
from agent.audit.log import row_is_intact
from agent.broadcast.chainstate import OnChain, fold, is_chain_row
from agent.errors import ApprovalInvalid, AuditIntegrityError, UsageError
from agent.withdrawals.velocity import SIGN_COUNT, EvidenceIndexer

if TYPE_CHECKING:
    from agent.vault.records import VaultHeader


def open_audit(state_dir: Path) -> AuditLog:
    """The audit log with the evidence index every decision looks things up in."""
    return AuditLog(state_dir, indexer=EvidenceIndexer())


class Status(StrEnum):
    PENDING = "pending"
    DENIED = "denied"
    SIGNED = "signed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    #: Judged under a policy generation that is no longer in force.
    STALE = "stale"


#: Quorum outcomes recorded in ``decision`` rows after which a request can never be signed.
_TERMINAL_QUORUM = {"rejected": Status.REJECTED, "expired": Status.EXPIRED, "stale": Status.STALE}


class DecisionStage(StrEnum):
    """Which step wrote a ``decision`` row (its ``stage`` key)."""

    CREATE = "create"
    QUORUM = "quorum"
    SIGN = "sign"


@dataclass(frozen=True)
class Signed:
    txid: str
    raw: str
    sender: str | None
    signed_at: int

    def to_json(self) -> dict[str, Any]:
        return {"txid": self.txid, "raw": self.raw, "sender": self.sender, "signed_at": self.signed_at}


@dataclass(frozen=True)
class RequestState:
    """One withdrawal request as the audit log proves it."""

    request_id: str
    created_at: int
    chain: str
    testnet: bool
    signature_id: str
    index: int
    tx: bytes
    #: Free text as the caller gave it (display only: the signed ``payload.initiator`` is the evidence).
    initiator: str | None
    payload: ApprovalPayload
    #: The chain decode at create time (for display; decisions decode ``tx`` again).
    summary: Mapping[str, Any]
    status: Status
    approvals: tuple[RecordedApproval, ...]
    rejections: tuple[Rejection, ...]
    signed: Signed | None
    #: The newest policy decision (create or sign stage) and its rule, as recorded.
    decision: Mapping[str, Any]
    rule: Mapping[str, Any]
    last_seq: int
    #: The outside system's id this request was made for (``tatum:<pending-tx id>``), as its request row says.
    external: str | None = None
    #: Where the signed transaction is on its chain (broadcast, confirmation and stuck rows); None before any.
    onchain: OnChain | None = None

    @property
    def pending(self) -> bool:
        return self.status is Status.PENDING

    def status_at(self, now: int) -> Status:
        """A pending request whose payload expired is expired, whether or not a row says so yet."""
        if self.status is Status.PENDING and now >= self.payload.expires_at:
            return Status.EXPIRED
        return self.status

    def to_record(self) -> dict[str, Any]:
        """The JSON view kept in the queue index and printed by the CLI."""
        return {
            "id": self.request_id,
            "created_at": self.created_at,
            "status": self.status.value,
            "chain": self.chain,
            "testnet": self.testnet,
            "signature_id": self.signature_id,
            "index": self.index,
            "tx": self.tx.hex(),
            "initiator": self.initiator,
            "initiator_id": self.payload.initiator.hex() if self.payload.initiator else None,
            "payload": self.payload.canonical_bytes().hex(),
            "expires_at": self.payload.expires_at,
            "summary": dict(self.summary),
            "decision": dict(self.decision),
            "rule": dict(self.rule),
            # One per operator (the first): who approved. Every touch is in the audit log.
            "approvals": [a.to_json() for a in _first_per_operator(self.approvals)],
            "rejections": [r.to_json() for r in self.rejections],
            "signed": self.signed.to_json() if self.signed else None,
            "audit_seq": self.last_seq,
            "external": self.external,
            "onchain": self.onchain.to_json() if self.onchain else None,
        }


def _first_per_operator(approvals: Iterable[RecordedApproval]) -> list[RecordedApproval]:
    seen: set[bytes] = set()
    out = []
    for approval in approvals:
        if approval.operator_id not in seen:
            seen.add(approval.operator_id)
            out.append(approval)
    return out


def _intact(rows: Iterable[AuditRow]) -> list[AuditRow]:
    checked = []
    for row in rows:
        if not row_is_intact(row):
            raise AuditIntegrityError(
                f"audit row {row.seq} ({row.kind}{f' of request {row.request_id}' if row.request_id else ''}) "
                "does not match its hash: the log was edited; refusing to decide on it",
                hint="run `kms-agent audit verify`",
            )
        checked.append(row)
    return checked


class Ledger:
    """Read-side of the audit log for withdrawals: pure derivations over verified rows."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def rows(self, request_id: str) -> list[AuditRow]:
        return _intact(self.audit.rows(request_id=request_id))

    def request(self, request_id: str) -> RequestState:
        """:raises UsageError: no such request. :raises AuditIntegrityError: an edited row."""
        rid = request_id.lower()
        rows = self.rows(rid)
        if not rows or rows[0].kind != AuditKind.REQUEST.value or "payload_cbor" not in rows[0].payload:
            if rows and rows[0].kind == AuditKind.REQUEST.value and rows[0].payload.get("action"):
                raise UsageError(f"{rid} is a {rows[0].payload['action']} request, not a withdrawal")
            if rows:
                raise ApprovalInvalid(
                    f"request {rid} was recorded by an older kms-agent without its signed payload; "
                    "it cannot be signed (create it again)"
                )
            raise UsageError(f"no withdrawal request {request_id!r} (see `kms-agent request list`)")
        return derive(rows)

    def request_ids_since(self, seq: int) -> list[str]:
        return self.audit.request_ids_after(seq)

    def suspended(self, header: VaultHeader | None = None) -> set[bytes]:
        """Operators with a ``suspension`` row (cloned-token evidence) not lifted by a later ``reinstatement``.

        A reinstatement lifts the suspensions up to the row it names (``suspension_seq``), never a
        later one. With ``header``, a reinstatement counts only when its quorum of other operators'
        touches verifies against the tokens the header enrols (docs/withdrawals.md §7).
        """
        last: dict[bytes, int] = {}
        for row in _intact(self.audit.rows(kinds=[AuditKind.SUSPENSION])):
            op_id = bytes.fromhex(row.payload["operator_id"])
            last[op_id] = max(last.get(op_id, 0), row.seq)
        if not last:
            return set()
        lifted: dict[bytes, int] = {}
        roster = roster_from_header(header) if header is not None else None
        for row in _intact(self.audit.rows(kinds=[AuditKind.REINSTATEMENT])):
            body = row.payload
            try:
                if roster is not None and header is not None:
                    verify_reinstatement_record(body, roster, vault_id=header.vault_id)
                op_id, seq = bytes.fromhex(body["operator_id"]), int(body["suspension_seq"])
            except (ApprovalInvalid, KeyError, TypeError, ValueError):
                continue  # proves nothing: the operator stays suspended
            if seq < row.seq:
                lifted[op_id] = max(lifted.get(op_id, 0), seq)
        return {op_id for op_id, seq in last.items() if lifted.get(op_id, 0) < seq}

    def last_suspension(self, operator_id: bytes) -> int | None:
        """The audit row of ``operator_id``'s newest suspension, or None."""
        seqs = [
            row.seq
            for row in _intact(self.audit.rows(kinds=[AuditKind.SUSPENSION]))
            if row.payload.get("operator_id") == operator_id.hex()
        ]
        return max(seqs) if seqs else None

    def counters(self, slot_ids: Iterable[bytes], index: IndexLookup | None = None) -> dict[bytes, int]:
        """The highest signCount any approval row recorded for each of ``slot_ids`` (absent: none yet).

        One indexed lookup and one re-hashed row per slot. The row found must itself say that slot
        and that count; an index that lost its newest entries can hide a higher count, which
        ``audit verify`` reports (the index is compared with every row).

        :param index: lookups inside an open audit transaction (which sees its own rows).
        """
        index = index or self.audit.index()
        out: dict[bytes, int] = {}
        for slot_id in dict.fromkeys(slot_ids):
            seq = index.top(SIGN_COUNT + slot_id.hex())
            if seq is None:
                continue
            row = index.row(seq)
            approval = row.payload.get("approval") if row is not None and isinstance(row.payload, dict) else None
            count = approval.get("sign_count") if isinstance(approval, dict) else None
            if (
                row is None
                or not row_is_intact(row)
                or row.kind != AuditKind.APPROVAL.value
                or approval.get("slot_id") != slot_id.hex()  # type: ignore[union-attr]
                or type(count) is not int
            ):
                raise AuditIntegrityError(
                    f"audit row {seq}, indexed as the newest signCount of slot {slot_id.hex()}, does not say so",
                    hint="run `kms-agent audit verify`",
                )
            out[slot_id] = count
        return out

    def signature_rows(self, since: int) -> list[AuditRow]:
        return _intact(self.audit.rows(kinds=[AuditKind.SIGNATURE], since=since))


def _veto_counts(body: Mapping[str, Any], rejection: Rejection, payload: ApprovalPayload) -> bool:
    """A veto rejects the request when unsigned (older kms-agent: the safe direction) or when its
    signature verifies over this request's rejection digest under the slot the row records; the
    quorum evaluation checks it again against the slot enrolled in the header (docs/approvals.md §8)."""
    if rejection.touch is None:
        return True
    try:
        verify_rejection(rejection, rejection_row_slot(body, rejection), payload)
    except ApprovalInvalid:
        return False  # a forged veto proves nothing; `audit verify` reports its row
    return True


def derive(rows: Sequence[AuditRow]) -> RequestState:
    """Fold one request's rows (oldest first) into its state."""
    first = rows[0].payload
    payload_bytes = bytes.fromhex(first["payload_cbor"])
    payload_sha256 = hashlib.sha256(payload_bytes).hexdigest()
    payload = ApprovalPayload.from_cbor(payload_bytes)
    tx = bytes.fromhex(first["tx"])
    if hashlib.sha256(tx).digest() != payload.unsigned_tx_sha256 or payload.request_id.hex() != rows[0].request_id:
        raise ApprovalInvalid(f"request {rows[0].request_id}: its audit row does not match its own payload")
    status = Status.PENDING
    approvals: dict[tuple[bytes, bytes], RecordedApproval] = {}
    rejections: list[Rejection] = []
    signed: Signed | None = None
    decision: Mapping[str, Any] = {}
    rule: Mapping[str, Any] = {}
    for row in rows[1:]:
        body = row.payload
        if row.kind == AuditKind.DECISION.value:
            stage = body.get("stage")
            if stage in (DecisionStage.CREATE, DecisionStage.SIGN) or body.get("outcome") in (
                "allow",
                "deny",
                "escalate",
            ):
                decision, rule = body, body.get("rule") or rule
                if body.get("outcome") == "deny" and status is Status.PENDING:
                    status = Status.DENIED
            elif body.get("outcome") in _TERMINAL_QUORUM and status is Status.PENDING:
                status = _TERMINAL_QUORUM[body["outcome"]]
        elif row.kind == AuditKind.APPROVAL.value:
            if body.get("payload_sha256", body.get("payload_cbor")) not in (payload_sha256, first["payload_cbor"]):
                continue  # an approval of other bytes proves nothing about these
            approval = RecordedApproval.from_json(body["approval"])
            approvals[(approval.slot_id, approval.signature)] = approval
        elif row.kind == AuditKind.REJECTION.value:
            rejection = Rejection.from_json(body)
            rejections.append(rejection)
            if status is Status.PENDING and _veto_counts(body, rejection, payload):
                status = Status.REJECTED
        elif row.kind == AuditKind.SIGNATURE.value and signed is None:
            signed = Signed(str(body["txid"]), str(body["raw"]), body.get("sender"), row.ts)
    if signed is not None:
        status = Status.SIGNED
    return RequestState(
        request_id=str(rows[0].request_id),
        created_at=rows[0].ts,
        chain=str(first["chain"]),
        testnet=bool(first["testnet"]),
        signature_id=str(first["signature_id"]),
        index=int(first["index"]),
        tx=tx,
        initiator=first.get("initiator"),
        payload=payload,
        summary=first.get("summary") or {},
        status=status,
        approvals=tuple(approvals.values()),
        rejections=tuple(rejections),
        signed=signed,
        decision=decision,
        rule=rule,
        last_seq=rows[-1].seq,
        external=first.get("external") if isinstance(first.get("external"), str) else None,
        onchain=fold(row for row in rows[1:] if is_chain_row(row)) if signed is not None else None,
    )
