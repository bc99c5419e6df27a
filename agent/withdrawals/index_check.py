"""Is the queue index what the audit log says? For `audit verify`: reports, never repairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.audit import AuditLog
from agent.errors import KmsAgentError
from agent.withdrawals.ledger import Ledger
from agent.withdrawals.queue import Queue, differences


@dataclass(frozen=True)
class IndexMismatch:
    request_id: str
    fields: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "fields": list(self.fields)}


def check_queue(state_dir: Path) -> list[IndexMismatch]:
    """Every request the log knows, compared with its queue record (and queue records the log lacks)."""
    ledger = Ledger(AuditLog(state_dir))
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
