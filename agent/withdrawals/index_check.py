"""Is the queue index what the audit log says? For `audit verify`: reports, never repairs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.audit import AuditKind, AuditLog
from agent.audit.log import row_is_intact
from agent.errors import KmsAgentError
from agent.withdrawals.ledger import Ledger, open_audit
from agent.withdrawals.queue import Queue, differences
from agent.withdrawals.velocity import SLOT_PUBLIC, check_tallies, velocity_summary


@dataclass(frozen=True)
class IndexMismatch:
    request_id: str
    fields: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "fields": list(self.fields)}


class LogResolver:
    """What compact approval rows refer to, found in the same audit log (:class:`agent.approvals.Resolver`)."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log
        # Caught up now, before `audit verify` holds the log's shared lock (a catch-up needs the write lock).
        self._index = log.index()

    def payload(self, request_id: str, sha256: bytes) -> bytes | None:
        rows = self._log.rows(request_id=request_id, kinds=[AuditKind.REQUEST])
        text = rows[0].payload.get("payload_cbor") if rows and row_is_intact(rows[0]) else None
        return bytes.fromhex(text) if isinstance(text, str) else None

    def slot_public(self, sha256: bytes) -> bytes | None:
        seq = self._index.last(SLOT_PUBLIC + sha256.hex())
        candidates = [] if seq is None else [self._index.row(seq)]
        if seq is None:  # appended since the catch-up: look through the approval rows instead
            candidates = list(self._log.rows(kinds=[AuditKind.APPROVAL]))
        for row in candidates:
            slot = row.payload.get("slot") if row is not None and row_is_intact(row) else None
            text = slot.get("public_cbor") if isinstance(slot, dict) else None
            if isinstance(text, str) and hashlib.sha256(bytes.fromhex(text)).digest() == sha256:
                return bytes.fromhex(text)
        return None


def check_evidence_index(state_dir: Path) -> list[str]:
    """The audit index against the rows, and every running total against the withdrawals it sums."""
    log = open_audit(state_dir)
    found = [p.what for p in log.verify_index()]
    found += [f"row {p.seq}: {p.what}" for p in check_tallies(log.rows(kinds=[AuditKind.SIGNATURE]), velocity_summary)]
    return found


def check_queue(state_dir: Path) -> list[IndexMismatch]:
    """Every request the log knows, compared with its queue record (and queue records the log lacks)."""
    ledger = Ledger(open_audit(state_dir))
    queue = Queue(state_dir)
    queue.sync(ledger)  # a crash may have left it behind: that is not an edit
    found: list[IndexMismatch] = []
    known: set[str] = set()
    for rid in ledger.request_ids_since(0):
        try:
            state = ledger.request(rid)
        except KmsAgentError:
            continue  # not a withdrawal (policy change), or unreadable: the chain check reports edits
        known.add(rid)
        indexed = queue.get(rid)
        derived = state.to_record()
        if indexed is not None and indexed.get("status") == "expired" and derived["status"] == "pending":
            indexed = {**indexed, "status": "pending"}
        fields = differences(indexed, derived)
        if fields:
            found.append(IndexMismatch(rid, tuple(fields)))
    for record in queue.list():
        if record.get("id") not in known:
            found.append(IndexMismatch(str(record.get("id")), ("not in the audit log",)))
    return found
