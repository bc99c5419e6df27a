"""Helpers for audit tests: a filled log, and an attacker's direct SQLite access."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.audit import AuditLog

T0 = 1_750_000_000


def filled(directory: Path, n: int = 5) -> AuditLog:
    log = AuditLog(directory)
    kinds = ["request", "decision", "approval", "signature", "broadcast", "alert", "unlock"]
    for i in range(n):
        log.append(
            kinds[i % len(kinds)],
            {"i": i, "note": f"row {i + 1}", "tx": "00ff" * 8},
            request_id=bytes([i]) * 16 if i % 2 == 0 else None,
            actor="alice" if i % 3 else None,
            ts=T0 + i,
        )
    return log


@contextmanager
def attacker(log: AuditLog) -> Iterator[sqlite3.Connection]:
    """Direct write access to the database, with the append-only triggers dropped (anyone with the file can)."""
    conn = sqlite3.connect(log.path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
        yield conn
    finally:
        conn.close()


def count(log: AuditLog) -> int:
    conn = sqlite3.connect(log.path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0])
    finally:
        conn.close()
