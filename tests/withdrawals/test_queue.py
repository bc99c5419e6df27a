"""The queue is an index: private, versioned, and an index from an older kms-agent is dropped and rebuilt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.audit import AuditLog
from agent.withdrawals.ledger import Ledger
from agent.withdrawals.queue import Queue


def test_queue_file_is_private(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "state")
    queue.put({"id": "cc", "created_at": 1, "status": "pending", "expires_at": 2**40})
    assert (tmp_path / "state" / "queue.sqlite").stat().st_mode & 0o777 == 0o600
    assert queue.get("cc") == {"id": "cc", "created_at": 1, "status": "pending", "expires_at": 2**40}


def test_an_index_from_an_earlier_version_is_dropped_and_rebuilt_from_the_log(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "queue.sqlite")
    db.execute("CREATE TABLE requests (id TEXT PRIMARY KEY, created_at INTEGER, status TEXT, record TEXT)")
    db.execute("""INSERT INTO requests VALUES ('aa', 1, 'signed', '{"id": "aa", "status": "signed"}')""")
    db.execute("CREATE TABLE suspended (operator_id TEXT PRIMARY KEY)")
    db.commit()
    db.close()
    queue = Queue(tmp_path)
    assert queue.get("aa") is None  # an old index proves nothing: it is gone
    assert queue.sync(Ledger(AuditLog(tmp_path))) == 0 and queue.list() == []
    tables = {r[0] for r in sqlite3.connect(tmp_path / "queue.sqlite").execute("SELECT name FROM sqlite_master")}
    assert "suspended" not in tables


def test_expired_pending_requests_list_as_expired(tmp_path: Path) -> None:
    queue = Queue(tmp_path)
    queue.put({"id": "dd", "created_at": 1, "status": "pending", "expires_at": 5})
    assert [r["status"] for r in queue.list()] == ["expired"]
    assert [r["id"] for r in queue.list("expired")] == ["dd"] and queue.list("pending") == []
