"""The withdrawal queue: requests with their full payload, approvals, signCounts and suspensions.

SQLite (WAL) under ``$KMS_AGENT_HOME/state/queue.sqlite``, 0600. Each request is one JSON record
(the request is small and read whole); the audit log, not this table, is the tamper-evident
history, and every state change here is preceded by its audit row.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.errors import StateError, UsageError
from agent.vault.store import PRIVATE_FILE, ensure_private_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, status TEXT NOT NULL,
                                     record TEXT NOT NULL, signed_at INTEGER, history TEXT);
CREATE TABLE IF NOT EXISTS counters (slot_id TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS suspended (operator_id TEXT PRIMARY KEY, at INTEGER NOT NULL, reason TEXT NOT NULL);
"""


#: Columns added after the first release of the table: (name, SQL type).
_ADDED_COLUMNS = (("signed_at", "INTEGER"), ("history", "TEXT"))


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a queue written by an earlier version up to date, in place and idempotently."""
    have = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    for name, kind in _ADDED_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")
    db.execute("CREATE INDEX IF NOT EXISTS requests_signed ON requests (signed_at) WHERE signed_at IS NOT NULL")


class Queue:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "queue.sqlite"

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            ensure_private_dir(self.path.parent)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the withdrawal queue {self.path}: {exc}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            _migrate(db)
            yield db
        except sqlite3.Error as exc:
            raise StateError(f"the withdrawal queue {self.path} failed: {exc}") from None
        finally:
            db.close()

    def put(self, record: Mapping[str, Any]) -> None:
        signed_at = (record.get("signed") or {}).get("signed_at")
        history = json.dumps(record["history"], sort_keys=True) if record.get("history") else None
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO requests (id, created_at, status, record, signed_at, history) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record["id"],
                    record["created_at"],
                    record["status"],
                    json.dumps(record, sort_keys=True),
                    signed_at,
                    history,
                ),
            )

    def history(self, since: int) -> list[tuple[int, dict[str, Any]]]:
        """(signed_at, velocity record) of withdrawals signed since ``since``: what velocity limits read."""
        with self._db() as db:
            rows = db.execute(
                "SELECT signed_at, history FROM requests WHERE signed_at >= ? AND history IS NOT NULL "
                "ORDER BY signed_at",
                (since,),
            ).fetchall()
        return [(int(at), json.loads(h)) for at, h in rows]

    def get(self, request_id: str) -> dict[str, Any]:
        with self._db() as db:
            row = db.execute("SELECT record FROM requests WHERE id = ?", (request_id.lower(),)).fetchone()
        if row is None:
            raise UsageError(f"no withdrawal request {request_id!r} (see `kms-agent request list`)")
        record: dict[str, Any] = json.loads(row[0])
        return record

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        with self._db() as db:
            if status:
                rows = db.execute("SELECT record FROM requests WHERE status = ? ORDER BY created_at", (status,))
            else:
                rows = db.execute("SELECT record FROM requests ORDER BY created_at")
            return [json.loads(r[0]) for r in rows.fetchall()]

    def counters(self) -> dict[bytes, int]:
        with self._db() as db:
            return {bytes.fromhex(s): c for s, c in db.execute("SELECT slot_id, count FROM counters").fetchall()}

    def update_counters(self, updates: Mapping[bytes, int]) -> None:
        with self._db() as db:
            db.executemany(
                "INSERT OR REPLACE INTO counters (slot_id, count) VALUES (?, ?)",
                [(k.hex(), int(v)) for k, v in updates.items()],
            )

    def suspended(self) -> set[bytes]:
        with self._db() as db:
            return {bytes.fromhex(r[0]) for r in db.execute("SELECT operator_id FROM suspended").fetchall()}

    def suspend(self, operator_id: bytes, at: int, reason: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO suspended (operator_id, at, reason) VALUES (?, ?, ?)",
                (operator_id.hex(), at, reason),
            )
