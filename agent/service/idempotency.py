"""``Idempotency-Key``: a retried submit returns the withdrawal the first one created, never a second one.

``state/idempotency.sqlite`` (0600, WAL, ``synchronous=FULL``) maps each key to the SHA-256 of the
request body and the request id it created. A submit holds the key's lock (``flock`` on one of
:data:`STRIPES` files under ``state/locks/``, so it excludes other threads and other processes
alike) from the lookup until the mapping is written:

1. a finished entry: the same body returns its request id; a different body is a 409;
2. otherwise a *claim* (key, body hash, audit seq) is committed before the request is created, then
   completed with the request id. A claim found unfinished means its process died in between: the
   audit log is searched from the claim's seq for the request the same bytes created, so a crash
   after the request's commit still never makes a second one.

A submit that fails before creating anything (bad input, an unknown wallet) drops its claim: the
key can be used again. A denial by policy *is* a created request (status ``denied``): it keeps its key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StateError
from agent.files import PRIVATE_FILE, ensure_private_dir
from agent.locks import WRITER_TIMEOUT, locks_dir

DB_NAME = "idempotency.sqlite"
#: Keys hash onto this many lock files: unrelated keys rarely wait on each other.
STRIPES = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    body_sha256 TEXT NOT NULL,
    request_id  TEXT,
    audit_seq   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Entry:
    key: str
    body_sha256: str
    #: None while the submit that claimed the key has not finished (or died before it could).
    request_id: str | None
    #: The audit log's newest seq when the key was claimed: the request, if any, comes after it.
    audit_seq: int
    created_at: int


class IdempotencyStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            ensure_private_dir(self.state_dir)
            if not self.path.exists():
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE))
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the idempotency store {self.path}: {exc}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a lost mapping would let a retry create a second request
            db.executescript(_SCHEMA)
            yield db
        except sqlite3.Error as exc:
            raise StateError(f"the idempotency store {self.path} failed: {exc}") from None
        finally:
            db.close()

    @contextlib.contextmanager
    def held(self, key: str, *, timeout: float | None = None) -> Iterator[None]:
        """Hold ``key``'s lock (across threads and processes) for the block."""
        stripe = hashlib.sha256(key.encode()).digest()[0] % STRIPES
        path = locks_dir(self.state_dir) / f"idempotency-{stripe:02d}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
        except OSError as exc:
            raise StateError(f"cannot open the lock file {path}: {exc.strerror or exc}") from None
        try:
            wait = WRITER_TIMEOUT if timeout is None else timeout
            if not _lock(fd, time.monotonic() + wait):
                raise StateError(f"another submit with this Idempotency-Key has been running for {wait:.0f} s")
            yield
        finally:
            os.close(fd)

    def get(self, key: str) -> Entry | None:
        with self._db() as db:
            row = db.execute(
                "SELECT key, body_sha256, request_id, audit_seq, created_at FROM idempotency WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else Entry(*row)

    def claim(self, key: str, body_sha256: str, audit_seq: int) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO idempotency (key, body_sha256, request_id, audit_seq, created_at) "
                "VALUES (?, ?, NULL, ?, ?)",
                (key, body_sha256, audit_seq, int(time.time())),
            )

    def complete(self, key: str, request_id: str) -> None:
        with self._db() as db:
            db.execute("UPDATE idempotency SET request_id = ? WHERE key = ?", (request_id, key))

    def forget(self, key: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM idempotency WHERE key = ? AND request_id IS NULL", (key,))


def _lock(fd: int, deadline: float) -> bool:
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
