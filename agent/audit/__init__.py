"""The append-only, hash-chained audit log (docs/audit-log.md)."""

from __future__ import annotations

from agent.audit.chain import DOMAIN, GENESIS, canonical_json, row_bytes, row_hash
from agent.audit.log import (
    DB_NAME,
    HEAD_NAME,
    ApprovalVerifier,
    AuditIndexer,
    AuditKind,
    AuditLog,
    AuditProblem,
    AuditReport,
    AuditRow,
    HeadPin,
    IndexLookup,
)

__all__ = [
    "DB_NAME",
    "DOMAIN",
    "GENESIS",
    "HEAD_NAME",
    "ApprovalVerifier",
    "AuditIndexer",
    "AuditKind",
    "AuditLog",
    "AuditProblem",
    "AuditReport",
    "AuditRow",
    "HeadPin",
    "IndexLookup",
    "canonical_json",
    "row_bytes",
    "row_hash",
]
