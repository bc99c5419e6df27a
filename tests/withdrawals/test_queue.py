"""The withdrawal queue file: private, and readable after an upgrade that added columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.withdrawals.queue import Queue


def test_queue_from_an_earlier_version_is_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "queue.sqlite")
    db.execute(
        "CREATE TABLE requests (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, status TEXT NOT NULL, "
        "record TEXT NOT NULL)"
    )
    db.execute(
        'INSERT INTO requests VALUES (\'aa\', 1, \'pending\', \'{"id": "aa", "created_at": 1, "status": "pending"}\')'
    )
    db.commit()
    db.close()
    queue = Queue(tmp_path)
    assert queue.get("aa")["status"] == "pending"
    assert queue.history(0) == []
    queue.put({"id": "bb", "created_at": 2, "status": "signed", "signed": {"signed_at": 5}, "history": {"x": 1}})
    assert queue.history(0) == [(5, {"x": 1})]


def test_queue_file_is_private(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "state")
    queue.put({"id": "cc", "created_at": 1, "status": "pending"})
    assert (tmp_path / "state" / "queue.sqlite").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
