"""The withdrawal queue: an index of requests for listing, rebuilt from the audit log at will.

SQLite (WAL) at ``$KMS_AGENT_HOME/state/queue.sqlite``, 0600. It holds one small JSON record per
request (:meth:`RequestState.to_record` without the bytes, the signed payload, the decode and the
raw evidence, which live once, in the audit log) and the audit seq it is level with. Listings
read each request's rows back from the log to show the whole record. Nothing here is evidence:
every decision re-derives the request from the audit log (:mod:`agent.withdrawals.ledger`), and
whoever can write this file can at most make us show a wrong list. Deleting it loses nothing but
the time to rebuild it; an index from an older kms-agent is dropped and rebuilt the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.audit import AuditLog
from agent.errors import KmsAgentError, StateError, UsageError
from agent.files import PRIVATE_FILE, ensure_private_dir, inode_of
from agent.withdrawals.ledger import Ledger, RequestState, Status, derive

#: Bumped whenever the index's shape changes: a mismatch drops the tables and rebuilds from the log.
INDEX_VERSION = 4

#: Record fields the queue does not keep: they are in the audit log, once.
_IN_THE_LOG = ("tx", "payload", "summary")
#: What the queue keeps of each approval (the signature and authenticator data are in the log).
_APPROVAL_FIELDS = ("operator_id", "slot_id", "approved_at", "sign_count")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, status TEXT NOT NULL,
                                     expires_at INTEGER NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, created_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

#: Fields compared when checking the index against the evidence (what an edit could change to mislead).
COMPARED = (
    "status",
    "initiator",
    "initiator_id",
    "signature_id",
    "index",
    "chain",
    "testnet",
    "approvals",
    "rejections",
    "rule",
    "signed",
)


def compact(record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a request's record the queue keeps (and compares): no payloads, no raw evidence."""
    out = {k: v for k, v in record.items() if k not in _IN_THE_LOG}
    if isinstance(record.get("approvals"), list):
        out["approvals"] = [
            {k: a[k] for k in _APPROVAL_FIELDS if k in a} if isinstance(a, dict) else a for a in record["approvals"]
        ]
    if isinstance(record.get("signed"), dict):
        out["signed"] = {k: v for k, v in record["signed"].items() if k != "raw"}
    return out


class Queue:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "queue.sqlite"
        self._local = threading.local()
        self._audit = AuditLog(Path(state_dir))

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = self._connection()
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the withdrawal queue {self.path}: {exc}") from None
        try:
            yield db
        except sqlite3.Error as exc:
            self._local.db = None
            with contextlib.suppress(sqlite3.Error):
                db.close()
            raise StateError(f"the withdrawal queue {self.path} failed: {exc}") from None

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, set up once; a new one after a fork or when the file was replaced."""
        local = self._local
        identity = self._identity()
        db: sqlite3.Connection | None = getattr(local, "db", None)
        if db is not None and local.pid == os.getpid() and local.identity == identity and identity is not None:
            return db
        ensure_private_dir(self.path.parent)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # an index: a lost write is rebuilt from the log
            if db.execute("PRAGMA user_version").fetchone()[0] != INDEX_VERSION:
                _reset(db)
        except BaseException:
            db.close()
            raise
        local.db, local.pid, local.identity = db, os.getpid(), self._identity()
        return db

    def _identity(self) -> tuple[int, int | None] | None:
        inode = inode_of(self.path)
        return None if inode is None else (inode, inode_of(f"{self.path}-wal"))

    # --- keeping level with the audit log ------------------------------------------------------
    def sync(self, ledger: Ledger, known: RequestState | Iterable[RequestState] | None = None) -> int:
        """Re-derive every request with audit rows the index has not seen; returns how many.

        :param known: requests the caller derived from the log as it is now (one is not derived again
            if its rows are the newest the log has for it).
        """
        knowns: dict[str, RequestState]
        if known is None:
            knowns = {}
        elif isinstance(known, RequestState):
            knowns = {known.request_id: known}
        else:
            knowns = {k.request_id: k for k in known}
        head = ledger.audit.last_seq()
        with self._db() as db:
            if _applied(db) == head:
                return 0
            db.execute("BEGIN IMMEDIATE")
            try:
                applied = _applied(db)
                if applied > head:  # the log is shorter than what we indexed: start over
                    db.execute("DELETE FROM requests")
                    applied = 0
                ids = ledger.request_ids_since(applied)
                for rid in ids:
                    mine = knowns.get(rid)
                    if mine is not None and mine.last_seq == ledger.audit.last_seq(request_id=rid):
                        _put(db, mine.to_record())
                    else:
                        self._put_derived(db, ledger, rid)
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('applied_seq', ?)", (head,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return len(ids)

    @staticmethod
    def _put_derived(db: sqlite3.Connection, ledger: Ledger, rid: str) -> None:
        try:
            state = ledger.request(rid)
        except UsageError:
            return  # a policy change, an unlock: audit rows with a request id that are not withdrawals
        except KmsAgentError as exc:
            # Unreadable evidence: keep it visible in listings, never signable (decisions re-derive).
            db.execute(
                "INSERT OR REPLACE INTO requests (id, created_at, status, expires_at, record) VALUES (?, 0, ?, 0, ?)",
                (rid, "unreadable", json.dumps({"id": rid, "status": "unreadable", "error": exc.message})),
            )
            return
        _put(db, state.to_record())

    def put(self, record: Mapping[str, Any]) -> None:
        with self._db() as db:
            _put(db, record)

    def reset(self) -> None:
        """Forget everything: the next :meth:`sync` rebuilds the index from the audit log."""
        with self._db() as db:
            _reset(db)

    # --- reading -------------------------------------------------------------------------------
    def get(self, request_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT record FROM requests WHERE id = ?", (request_id.lower(),)).fetchone()
        return None if row is None else _as_of(json.loads(row[0]))

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        """Whole records (as :meth:`RequestState.to_record`), read back from the audit log; status as indexed."""
        return [self._whole(record) for record in self._indexed(status)]

    def records(self, status: str | None = None) -> tuple[dict[str, Any], ...]:
        """The compact records as indexed, without reading the audit log: for choosing whom to look at
        (the broadcast watcher), never evidence."""
        return tuple(self._indexed(status))

    def _whole(self, record: dict[str, Any]) -> dict[str, Any]:
        """Display only (never evidence): the request's rows as they are, without re-hashing them."""
        rid = record.get("id")
        if not isinstance(rid, str) or record.get("status") == "unreadable":
            return record
        try:
            rows = self._audit.rows(request_id=rid)
            whole = derive(rows).to_record() if rows else None
        except (KmsAgentError, KeyError, TypeError, ValueError):
            whole = None
        if whole is None:
            return record
        whole["status"] = record["status"]
        return whole

    def _indexed(self, status: str | None) -> Iterator[dict[str, Any]]:
        now = int(time.time())
        with self._db() as db:
            if status in (Status.PENDING, Status.EXPIRED):
                rows = db.execute(
                    "SELECT record FROM requests WHERE status = 'pending' AND (expires_at > ?) = ? ORDER BY created_at",
                    (now, status == Status.PENDING),
                )
            elif status:
                rows = db.execute("SELECT record FROM requests WHERE status = ? ORDER BY created_at", (status,))
            else:
                rows = db.execute("SELECT record FROM requests ORDER BY created_at")
            found = rows.fetchall()
        return iter([_as_of(json.loads(r[0]), now) for r in found])


def differences(indexed: Mapping[str, Any] | None, derived: Mapping[str, Any]) -> list[str]:
    """Fields where the index disagrees with the evidence (an edited or stale queue)."""
    if indexed is None:
        return ["missing"]
    derived = compact(derived)
    return [k for k in COMPARED if indexed.get(k) != derived.get(k)]


def _as_of(record: dict[str, Any], now: int | None = None) -> dict[str, Any]:
    now = int(time.time()) if now is None else now
    if record.get("status") == Status.PENDING and now >= int(record.get("expires_at", now + 1)):
        record["status"] = Status.EXPIRED.value
    return record


def _applied(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'applied_seq'").fetchone()
    return int(row[0]) if row else 0


def _put(db: sqlite3.Connection, record: Mapping[str, Any]) -> None:
    db.execute(
        "INSERT OR REPLACE INTO requests (id, created_at, status, expires_at, record) VALUES (?, ?, ?, ?, ?)",
        (
            record["id"],
            record["created_at"],
            record["status"],
            record.get("expires_at", 0),
            json.dumps(compact(record), sort_keys=True),
        ),
    )


def _reset(db: sqlite3.Connection) -> None:
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        db.execute(f'DROP TABLE IF EXISTS "{name}"')
    db.executescript(SCHEMA)
    db.execute(f"PRAGMA user_version = {INDEX_VERSION}")
