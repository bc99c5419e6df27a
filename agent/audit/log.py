"""Append-only, hash-chained audit log in SQLite, with its head pinned in a separate file.

Files, under the agent's state directory (``<home>/state``), all 0600 in a 0700 directory:

* ``audit.sqlite`` (+ ``-wal``/``-shm``): WAL mode, ``synchronous=FULL``, one table. Triggers refuse
  UPDATE and DELETE (defence in depth: whoever can write the file can drop them, which is what the
  chain and the head pin are for).
* ``audit-head.json``: ``{"v": 1, "seq": n, "hash": hex}`` of the newest row, padded to 256 bytes
  and rewritten in place (one sector: old line or new) after every transaction, so deleting the
  newest rows (truncation) is detected too.
* ``audit.lock``: ``flock`` serialising appenders across processes, so the head pin is only ever
  written by the process that appended the row it names.

:meth:`AuditLog.append` fails closed: any problem (disk full, read-only, locked past the busy
timeout, a corrupted database, a tail that does not match the head pin) raises
:class:`~agent.errors.StateError` naming it, the row is not written (one transaction), and the
caller must not sign or broadcast. :meth:`AuditLog.verify` re-checks the whole chain and names the
first bad seq (docs/audit-log.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.audit.chain import GENESIS, canonical_json, row_bytes, row_hash
from agent.errors import AuditIntegrityError, KmsAgentError, ProgrammingError, StateError
from agent.files import atomic_write, inode_of

DB_NAME = "audit.sqlite"
HEAD_NAME = "audit-head.json"
LOCK_NAME = "audit.lock"
DEFAULT_BUSY_TIMEOUT = 10.0
#: Bytes of ``audit-head.json``: one JSON line, space-padded, rewritten in place (:meth:`AuditLog._write_head`).
HEAD_SIZE = 256
_PRIVATE_FILE = 0o600
_PRIVATE_DIR = 0o700

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq        INTEGER PRIMARY KEY,
    ts         INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    request_id TEXT,
    actor      TEXT,
    payload    TEXT    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    batch      INTEGER
);
CREATE INDEX IF NOT EXISTS audit_log_kind_ts ON audit_log (kind, ts);
CREATE INDEX IF NOT EXISTS audit_log_request ON audit_log (request_id);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS audit_index (
    name TEXT    NOT NULL,
    key  INTEGER NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (name, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_index_key ON audit_index (name, key, seq);
CREATE TABLE IF NOT EXISTS audit_index_level (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    seq     INTEGER NOT NULL,
    version TEXT    NOT NULL
);
"""
_COLUMNS = "seq, ts, kind, request_id, actor, payload, prev_hash, hash"


class AuditKind(StrEnum):
    """What a row records. Payload shapes per kind: docs/audit-log.md §5."""

    REQUEST = "request"
    DECISION = "decision"
    APPROVAL = "approval"
    REJECTION = "rejection"
    SIGNATURE = "signature"
    BROADCAST = "broadcast"
    CONFIRMATION = "confirmation"
    ERROR = "error"
    UNLOCK = "unlock"
    PIN_ERROR = "pin_error"
    ALERT = "alert"
    POLICY_CHANGE = "policy_change"
    #: An operator's approvals stop counting (cloned-token evidence); docs/withdrawals.md.
    SUSPENSION = "suspension"
    #: The vault was opened with recovery shares instead of the operators' tokens.
    RECOVERY = "recovery"
    #: A quorum of other operators lifted an operator's suspension (docs/withdrawals.md §7).
    REINSTATEMENT = "reinstatement"
    #: A token's PIN was changed through `kms-agent token pin` (which token, never the PIN).
    PIN_CHANGE = "pin_change"


#: Rows carrying token evidence that ``verify(approval_verifier)`` re-checks: approvals and signed vetoes.
_TOUCH_KINDS = frozenset({AuditKind.APPROVAL.value, AuditKind.REJECTION.value})


@dataclass(frozen=True)
class AuditRow:
    seq: int
    ts: int
    kind: str
    request_id: str | None
    actor: str | None
    #: The canonical JSON text exactly as stored (``payload`` is its parsed value).
    payload_text: str
    prev_hash: bytes
    hash: bytes
    payload: Any = field(compare=False, default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "request_id": self.request_id,
            "actor": self.actor,
            "payload": self.payload,
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
        }


#: Entries an :class:`AuditIndexer` derives from one row: ``(name, key)`` pairs.
IndexEntries = Iterable[tuple[str, int]]


class AuditIndexer:
    """Derives lookup entries from rows, so a decision reads O(log n) rows instead of all of them.

    The index is only a way to *find* rows: every row found through it is read back and checked
    against its own hash by the caller, and :meth:`AuditLog.verify_index` compares the whole
    index with what the rows say. Entries are a pure function of a row, so the index can always be
    rebuilt from the log; ``version`` names that function (a new one rebuilds the index).
    """

    version = "none"

    def entries(self, row: AuditRow) -> IndexEntries:
        return ()


@dataclass(frozen=True)
class HeadPin:
    seq: int
    hash: bytes

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, "seq": self.seq, "hash": self.hash.hex()}


@dataclass(frozen=True)
class AuditProblem:
    """One finding of :meth:`AuditLog.verify`; ``seq`` is None when no single row is to blame."""

    seq: int | None
    what: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "what": self.what}


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    rows: int
    #: Newest row in the database, and what the head file pins.
    head: HeadPin | None
    pinned: HeadPin | None
    first_bad_seq: int | None
    problems: tuple[AuditProblem, ...]
    warnings: tuple[str, ...] = ()
    approvals_checked: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "head": self.head.to_json() if self.head else None,
            "pinned": self.pinned.to_json() if self.pinned else None,
            "first_bad_seq": self.first_bad_seq,
            "problems": [p.to_json() for p in self.problems],
            "warnings": list(self.warnings),
            "approvals_checked": self.approvals_checked,
        }


ApprovalVerifier = Callable[[AuditRow], None]


def _describe_sqlite(exc: sqlite3.Error) -> str:
    """Name the reason an operator can act on (the caller refuses to sign either way)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name == "SQLITE_FULL" or "disk is full" in text:
        return "the disk is full"
    if name.startswith("SQLITE_READONLY") or "readonly" in text or "read-only" in text:
        return "the database or its directory is read-only"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return "the database is locked by another process (busy timeout reached)"
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in text or "not a database" in text:
        return "the database file is corrupted"
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return "the database cannot be opened (missing or unwritable directory?)"
    if name.startswith("SQLITE_IOERR") or "disk i/o" in text:
        return "a disk I/O error occurred"
    if name in ("SQLITE_PERM", "SQLITE_AUTH"):
        return "permission denied"
    return f"SQLite failed ({name or type(exc).__name__}: {exc})"


class AuditLog:
    """The audit log of one agent home. Cheap to construct; every call opens and closes its own connection,
    so an instance may be shared across threads and survives ``fork``.

    :param directory: the state directory (``<home>/state``); created 0700 on first append.
    :param busy_timeout: seconds to wait for another appender before failing closed.
    :param clock: returns Unix seconds for rows appended without an explicit ``ts``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Callable[[], int] = lambda: int(time.time()),
        indexer: AuditIndexer | None = None,
    ) -> None:
        self.directory = Path(directory)
        #: Keeps ``audit_index`` level with the log on every append. A log opened without one leaves
        #: the index behind; the next appender with an indexer catches it up before its own rows.
        self.indexer = indexer
        self.path = self.directory / DB_NAME
        self.head_path = self.directory / HEAD_NAME
        self.lock_path = self.directory / LOCK_NAME
        self.busy_timeout = busy_timeout
        self.clock = clock
        self._local = threading.local()

    @classmethod
    def for_home(cls, home: Path, **kwargs: Any) -> AuditLog:
        return cls(Path(home) / "state", **kwargs)

    # --- plumbing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, exclusive: bool) -> Iterator[None]:
        """Cross-process lock around append (exclusive) and verify (shared), bounded by busy_timeout."""
        try:
            if exclusive:
                self.directory.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
            fd = os.open(self.lock_path, (os.O_RDWR | os.O_CREAT) if exclusive else os.O_RDONLY, _PRIVATE_FILE)
        except FileNotFoundError:
            if exclusive:
                raise StateError(f"audit log: cannot create its lock file in {self.directory}") from None
            yield  # nothing was ever appended here: nothing to hold still
            return
        except OSError as exc:
            raise StateError(f"audit log: cannot open {self.lock_path}: {exc.strerror or exc}") from None
        try:
            deadline = time.monotonic() + self.busy_timeout
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StateError("audit log: locked by another process (busy timeout reached)") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        if write:
            if not self.path.exists():
                # Create it ourselves so it is 0600 from its first byte; SQLite gives -wal/-shm the same mode.
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _PRIVATE_FILE)
                os.close(fd)
            self._check_private(self.path)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        else:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=self.busy_timeout, isolation_level=None
            )
            try:
                conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
            except sqlite3.OperationalError:
                conn.close()
                if Path(f"{self.path}-wal").exists():
                    raise
                # A WAL database in a directory we cannot write (a read-only copy, an immutable
                # backup): with no -wal file there is nothing uncheckpointed, so read the file as is.
                conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, isolation_level=None
                )
        try:
            if write:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StateError(f"audit log: SQLite refused WAL mode (got {mode!r})")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
                _add_batch_column(conn)
            conn.execute("PRAGMA trusted_schema=OFF")
        except BaseException:
            conn.close()
            raise
        return conn

    def _cached(self, *, write: bool) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema applied) once, not once per call.

        Reused while the process, the thread and the file are the same: a fork, another thread or a
        replaced ``audit.sqlite`` (a different inode) gets a connection of its own. A read-only one
        is upgraded when a write needs it.
        """
        local = self._local
        identity = self._identity()
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if (
            conn is not None
            and local.pid == os.getpid()
            and local.identity == identity
            and identity is not None
            and (local.write or not write)
        ):
            if write:
                self._check_private(self.path)
            return conn
        if conn is not None and local.pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        conn = self._connect(write=write)
        local.conn, local.pid, local.write = conn, os.getpid(), write
        local.identity = self._identity()
        return conn

    def _identity(self) -> tuple[int, int, int, int, int | None] | None:
        """The files and their permissions as a connection saw them: a change means open again.

        The status-change time catches chmod and chattr (an immutable log must refuse at once), and
        the ``-wal`` file's inode is there because a connection must never go on writing to a WAL
        file that was removed under it (what it wrote there would be lost).
        """
        try:
            st, parent = os.stat(self.path), os.stat(self.directory)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_ctime_ns, st.st_mode, parent.st_mode, inode_of(f"{self.path}-wal")

    def _forget(self) -> None:
        """Drop this thread's connection after a failure (the next call opens a fresh one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local.conn = None

    @staticmethod
    def _check_private(path: Path) -> None:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StateError(
                f"audit log: {path} is accessible by other users (mode {stat.S_IMODE(mode):04o})",
                hint=f"chmod 600 {path}",
            )

    def _read_head(self) -> HeadPin | None:
        """The pinned head, None when no head file exists.

        :raises AuditIntegrityError: the head file is unreadable or malformed.
        """
        try:
            self._check_private(self.head_path)
            raw = json.loads(self.head_path.read_text())
        except FileNotFoundError:
            return None
        except StateError:
            raise
        except (OSError, ValueError) as exc:
            raise AuditIntegrityError(f"audit head pin {self.head_path} is unreadable ({type(exc).__name__})") from None
        try:
            if set(raw) != {"v", "seq", "hash"} or raw["v"] != 1 or type(raw["seq"]) is not int or raw["seq"] < 1:
                raise ValueError("shape")
            digest = bytes.fromhex(raw["hash"])
            if len(digest) != 32:
                raise ValueError("hash length")
        except (TypeError, ValueError, AttributeError):
            raise AuditIntegrityError(f"audit head pin {self.head_path} is malformed") from None
        return HeadPin(raw["seq"], digest)

    def _write_head(self, pin: HeadPin) -> None:
        """Re-pin the head: one fdatasync, in place, once the file exists.

        The pin is one JSON line padded to a fixed :data:`HEAD_SIZE` bytes, far inside one disk
        sector, so a crash leaves the old line or the new one (JSON ignores the padding). That is
        the same guarantee a temporary file and a rename give, for one sync instead of three
        (file, rename, directory) on every transaction. The first pin is created the careful way.
        """
        line = (json.dumps(pin.to_json(), sort_keys=True) + "\n").encode()
        data = line.ljust(HEAD_SIZE - 1) + b"\n"
        try:
            fd = os.open(self.head_path, os.O_WRONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            atomic_write(self.head_path, data)
            return
        try:
            if os.fstat(fd).st_size != HEAD_SIZE:
                os.close(fd)
                fd = -1
                atomic_write(self.head_path, data)  # an older or foreign pin file: replace it whole
                return
            if os.pwrite(fd, data, 0) != HEAD_SIZE:
                raise OSError(errno.EIO, "short write of the audit head pin")
            os.fdatasync(fd)
        finally:
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _row(record: tuple[Any, ...]) -> AuditRow:
        seq, ts, kind, request_id, actor, payload, prev_hash, digest = record
        try:
            parsed = json.loads(payload)
        except (TypeError, ValueError):
            parsed = None
        return AuditRow(seq, ts, kind, request_id, actor, payload, _unhex(prev_hash), _unhex(digest), parsed)

    # --- append ---------------------------------------------------------------------------------
    def append(
        self,
        kind: AuditKind | str,
        payload: Mapping[str, Any],
        *,
        request_id: bytes | str | None = None,
        actor: str | None = None,
        ts: int | None = None,
    ) -> AuditRow:
        """Append one row and re-pin the head. Fails closed.

        :param payload: a JSON-able map with the *full* evidence (hex for bytes, decimal strings for
            amounts); secret-looking keys are refused.
        :raises StateError: the row could not be durably appended (and was not); do not sign.
        :raises AuditIntegrityError: the log's tail does not match its head pin; do not sign.
        :raises ProgrammingError: an unknown kind or a payload that cannot or must not be logged.
        """
        with self.transaction() as tx:
            return tx.append(kind, payload, request_id=request_id, actor=actor, ts=ts)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[AuditTransaction]:
        """Append several rows as one SQLite transaction: all of them become durable, or none.

        This is the commit point of every decision on a request: the rows of one decision (its
        approvals, alerts, the decision, a signature) go in together, so a crash leaves the old
        state or the new one. Rows are appended under the log's write lock; the head pin is
        rewritten once, after the commit. An exception inside the block rolls everything back.

        :raises StateError: the rows could not be made durable (nothing was written; do not sign).
        :raises AuditIntegrityError: the log's tail does not match its head pin (nothing was written).
        """
        with self._flock(exclusive=True):
            try:
                conn = self._cached(write=True)
            except sqlite3.Error as exc:
                self._forget()
                raise StateError(
                    f"audit log unusable: {_describe_sqlite(exc)}",
                    hint="nothing was signed; fix the state directory and retry",
                ) from None
            except OSError as exc:
                raise StateError(f"audit log unusable: cannot create {self.path}: {exc.strerror or exc}") from None
            try:
                tx = self._begin(conn)
                try:
                    yield tx
                    if tx.rows and self.indexer is not None:
                        _set_index_level(conn, tx.rows[-1].seq, self.indexer.version)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self._forget()
                raise StateError(
                    f"audit log append failed: {_describe_sqlite(exc)}",
                    hint="nothing was written and nothing may be signed",
                ) from None
            if tx.rows:
                last = tx.rows[-1]
                try:
                    self._write_head(HeadPin(last.seq, last.hash))
                except OSError as exc:
                    raise StateError(
                        f"audit rows up to {last.seq} were committed but the head pin could not be written "
                        f"({exc.strerror or exc}); the next append re-pins it",
                        hint="nothing may be signed until the state directory is writable",
                    ) from None

    def _begin(self, conn: sqlite3.Connection) -> AuditTransaction:
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = conn.execute(f"SELECT {_COLUMNS}, batch FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            tail = None if last is None else self._row(last[:-1])
            self._check_tail(conn, tail, None if last is None else last[-1])
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")  # the connection is reused: never leave it inside a transaction
            raise
        tail_seq = 0 if tail is None else tail.seq
        if self.indexer is not None:
            _catch_up_index(conn, self.indexer, tail_seq)
        return AuditTransaction(self, conn, tail_seq, GENESIS if tail is None else tail.hash)

    def _check_tail(self, conn: sqlite3.Connection, last: AuditRow | None, last_batch: int | None) -> None:
        """Refuse to extend a log whose newest rows do not match the head pin (inside the write lock)."""
        pinned = self._read_head()
        if last is None:
            if pinned is not None:
                raise AuditIntegrityError(
                    f"the audit log is empty but its head pins row {pinned.seq}: it was deleted or replaced"
                )
            return
        if last.hash != row_hash(
            last.prev_hash, row_bytes(last.seq, last.ts, last.kind, last.request_id, last.actor, last.payload)
        ):
            raise AuditIntegrityError(f"audit row {last.seq} does not match its hash: the log was edited")
        if pinned is None:
            if _first_batch(last.seq, last_batch) == 1:
                return  # the very first pin write failed after its commit: the same lag as below
            raise AuditIntegrityError(
                f"the audit log has {last.seq} rows but its head pin file is missing",
                hint="run `kms-agent audit verify`",
            )
        if pinned.seq > last.seq:
            raise AuditIntegrityError(
                f"the audit log ends at row {last.seq} but its head pins row {pinned.seq}: rows were deleted"
            )
        if pinned.seq < last.seq and _first_batch(last.seq, last_batch) != pinned.seq + 1:
            raise AuditIntegrityError(f"the audit head pins row {pinned.seq} but the log has {last.seq} rows")
        pinned_row = conn.execute("SELECT hash FROM audit_log WHERE seq = ?", (pinned.seq,)).fetchone()
        if pinned_row is None or _unhex(pinned_row[0]) != pinned.hash:
            raise AuditIntegrityError(f"audit row {pinned.seq} is not the row the head pin names: the log was edited")
        if pinned.seq < last.seq:
            after = conn.execute("SELECT prev_hash FROM audit_log WHERE seq = ?", (pinned.seq + 1,)).fetchone()
            if after is None or _unhex(after[0]) != pinned.hash:
                raise AuditIntegrityError(f"audit row {pinned.seq + 1} does not follow the pinned row {pinned.seq}")

    # --- verify ---------------------------------------------------------------------------------
    def verify(self, approval_verifier: ApprovalVerifier | None = None) -> AuditReport:
        """Re-check every row, the chain and the head pin; optionally re-verify every approval row.

        :param approval_verifier: called with each ``approval`` row; it raises a
            :class:`~agent.errors.KmsAgentError` when the approval does not verify
            (:func:`agent.approvals.approval_row_verifier` is one).
        :raises StateError: the database cannot be read at all.
        """
        problems: list[AuditProblem] = []
        warnings: list[str] = []
        pin_error: str | None = None
        with self._flock(exclusive=False):
            try:
                pinned = self._read_head()
            except AuditIntegrityError as exc:
                pinned, pin_error = None, exc.message
            records = self._select("", ()) if self.path.exists() else []
            head_batch = self._head_batch() if records else None
        checked = 0
        expected, prev = 1, GENESIS
        by_seq: dict[int, bytes] = {}
        for row in records:
            if row.seq != expected:
                problems.append(
                    AuditProblem(
                        expected,
                        f"rows {expected}..{row.seq - 1} are missing"
                        if row.seq > expected + 1
                        else f"row {expected} is missing",
                    )
                )
            expected = row.seq + 1
            problems.extend(self._check_row(row, prev))
            if approval_verifier is not None and row.kind in _TOUCH_KINDS and row.payload is not None:
                checked += 1
                try:
                    approval_verifier(row)
                except KmsAgentError as exc:
                    problems.append(AuditProblem(row.seq, f"{row.kind} does not verify: {exc.message}"))
            prev = row.hash
            by_seq[row.seq] = row.hash
        head = HeadPin(records[-1].seq, records[-1].hash) if records else None
        if pin_error is not None:
            problems.append(AuditProblem(None, pin_error))
        else:
            problems.extend(self._check_pin(head, head_batch, pinned, by_seq, warnings))
        bad = [p.seq for p in problems if p.seq is not None]
        return AuditReport(
            not problems,
            len(records),
            head,
            pinned,
            min(bad) if bad else None,
            tuple(sorted(problems, key=lambda p: (p.seq is None, p.seq or 0))),
            tuple(warnings),
            checked,
        )

    @staticmethod
    def _check_row(row: AuditRow, prev: bytes) -> list[AuditProblem]:
        found = []
        if row.prev_hash != prev:
            found.append(
                AuditProblem(
                    row.seq, "prev_hash is not the hash of the row before it (rows deleted, inserted or reordered)"
                )
            )
        if row.payload is None or canonical_or_none(row.payload) != row.payload_text:
            found.append(AuditProblem(row.seq, "payload is not canonical JSON"))
        elif row.kind not in AuditKind.__members__.values():
            found.append(AuditProblem(row.seq, f"unknown kind {row.kind!r}"))
        else:
            try:
                recomputed = row_hash(
                    row.prev_hash, row_bytes(row.seq, row.ts, row.kind, row.request_id, row.actor, row.payload)
                )
            except (ProgrammingError, TypeError):
                recomputed = b""
            if recomputed != row.hash:
                found.append(AuditProblem(row.seq, "the row does not match its hash (edited)"))
        return found

    @staticmethod
    def _check_pin(
        head: HeadPin | None,
        head_batch: int | None,
        pinned: HeadPin | None,
        by_seq: Mapping[int, bytes],
        warnings: list[str],
    ) -> list[AuditProblem]:
        """The pin may lag by the rows of one transaction (a crash between its commit and the pin write)."""
        if pinned is None:
            if head is not None and _first_batch(head.seq, head_batch) == 1:
                warnings.append("row 1 is not pinned yet (its head pin write failed?); the next append pins it")
            elif head is not None:
                return [AuditProblem(None, f"the head pin file is missing although the log has {head.seq} rows")]
            return []
        if head is None:
            return [AuditProblem(1, f"the log is empty or missing but its head pins row {pinned.seq}")]
        if pinned.seq > head.seq:
            return [
                AuditProblem(
                    head.seq + 1,
                    f"the log ends at row {head.seq} but its head pins row {pinned.seq}: the newest rows were deleted",
                )
            ]
        if by_seq.get(pinned.seq) != pinned.hash:
            return [
                AuditProblem(
                    pinned.seq, f"row {pinned.seq} is not the row the head pin names (edited row or forged head)"
                )
            ]
        if pinned.seq < head.seq and _first_batch(head.seq, head_batch) == pinned.seq + 1:
            warnings.append(
                f"rows {pinned.seq + 1}..{head.seq} are not pinned yet (a crash between commit and pin?); "
                "the next append pins them"
            )
        elif pinned.seq < head.seq:
            return [
                AuditProblem(
                    pinned.seq + 1,
                    f"rows {pinned.seq + 1}..{head.seq} come after the pinned head "
                    f"(row {pinned.seq}): the head file was rolled back",
                )
            ]
        return []

    # --- queries --------------------------------------------------------------------------------
    def _head_batch(self) -> int | None:
        try:
            row = (
                self._cached(write=False)
                .execute("SELECT seq, batch FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetchone()
            )
        except sqlite3.OperationalError:
            self._forget()
            return None  # a log from before batches: every row was its own transaction
        return None if row is None else _first_batch(int(row[0]), row[1])

    def _select(self, where: str, params: tuple[Any, ...]) -> list[AuditRow]:
        try:
            records = (
                self._cached(write=False)
                .execute(f"SELECT {_COLUMNS} FROM audit_log {where} ORDER BY seq", params)
                .fetchall()
            )
        except sqlite3.Error as exc:
            self._forget()
            raise StateError(f"audit log unreadable: {_describe_sqlite(exc)}") from None
        return [self._row(r) for r in records]

    def rows(
        self,
        *,
        kinds: Iterable[AuditKind | str] | None = None,
        since: int | None = None,
        until: int | None = None,
        request_id: bytes | str | None = None,
    ) -> list[AuditRow]:
        """Rows in seq order, filtered by kind, time range ``since <= ts < until`` and request id (reports)."""
        if not self.path.exists():
            return []
        clauses: list[str] = []
        params: list[Any] = []
        if kinds is not None:
            names = [AuditKind(k).value for k in kinds]
            clauses.append(f"kind IN ({', '.join('?' for _ in names)})")
            params += names
        if since is not None:
            clauses.append("ts >= ?")
            params.append(since)
        if until is not None:
            clauses.append("ts < ?")
            params.append(until)
        if request_id is not None:
            clauses.append("request_id = ?")
            params.append(request_id.hex() if isinstance(request_id, bytes) else request_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._select(where, tuple(params))

    def _scalar_query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        try:
            return self._cached(write=False).execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._forget()
            raise StateError(f"audit log unreadable: {_describe_sqlite(exc)}") from None

    def last_seq(self, *, request_id: str | None = None) -> int:
        """The newest row's seq (0 for an empty log), or the newest of one request's rows."""
        if request_id is not None:
            rows = self._scalar_query("SELECT MAX(seq) FROM audit_log WHERE request_id = ?", (request_id,))
            return int(rows[0][0] or 0) if rows else 0
        rows = self._scalar_query("SELECT MAX(seq) FROM audit_log")
        return int(rows[0][0] or 0) if rows else 0

    def request_ids_after(self, seq: int) -> list[str]:
        """Request ids with a row newer than ``seq``, oldest first."""
        rows = self._scalar_query(
            "SELECT request_id FROM audit_log WHERE seq > ? AND request_id IS NOT NULL "
            "GROUP BY request_id ORDER BY MIN(seq)",
            (seq,),
        )
        return [str(r[0]) for r in rows]

    # --- the index -------------------------------------------------------------------------------
    def index(self) -> IndexLookup:
        """Lookups on the index, level with the log (caught up first, under the write lock, if behind).

        :raises ProgrammingError: this log was opened without an indexer.
        """
        if self.indexer is None:
            raise ProgrammingError("an audit index lookup needs an AuditLog opened with an indexer")
        if self._index_behind():
            with self.transaction():
                pass  # _begin catches the index up and the (empty) transaction commits it
        return IndexLookup(lambda: self._cached(write=False))

    def _index_behind(self) -> bool:
        assert self.indexer is not None
        try:
            conn = self._cached(write=False)
            level = _index_level(conn)
            last = conn.execute("SELECT MAX(seq) FROM audit_log").fetchone()[0] or 0
        except sqlite3.OperationalError:
            self._forget()
            return True  # no index tables yet (a log written before them, or no log at all)
        return level is None or level != (int(last), self.indexer.version)

    def verify_index(self) -> list[AuditProblem]:
        """Compare the whole index with the entries the rows give (``audit verify``); never repairs."""
        if self.indexer is None or not self.path.exists():
            return []
        self.index()
        want: set[tuple[str, int, int]] = set()
        for row in self._select("", ()):
            want |= {(str(n), int(k), row.seq) for n, k in self.indexer.entries(row)}
        have = {(str(n), int(k), int(q)) for n, k, q in self._scalar_query("SELECT name, key, seq FROM audit_index")}
        problems = [
            AuditProblem(seq, f"the audit index lacks entry {name!r} of row {seq}")
            for name, _, seq in sorted(want - have, key=lambda e: e[2])
        ]
        problems += [
            AuditProblem(None, f"the audit index has entry {name!r} for row {seq}, which the row does not give")
            for name, _, seq in sorted(have - want, key=lambda e: e[2])
        ]
        return problems

    def reindex(self) -> int:
        """Rebuild the index from the rows (after an edit found by :meth:`verify_index`); returns its entries."""
        if self.indexer is None:
            raise ProgrammingError("reindex needs an AuditLog opened with an indexer")
        with self.transaction() as tx:
            tx._conn.execute("DELETE FROM audit_index_level")
            _catch_up_index(tx._conn, self.indexer, tx._seq)
        rows = self._scalar_query("SELECT COUNT(*) FROM audit_index")
        return int(rows[0][0]) if rows else 0

    def head(self) -> HeadPin | None:
        """The newest row's (seq, hash), or None for an empty log (for reports and external anchoring)."""
        rows = self._select("WHERE seq = (SELECT MAX(seq) FROM audit_log)", ()) if self.path.exists() else []
        return HeadPin(rows[0].seq, rows[0].hash) if rows else None


def _add_batch_column(conn: sqlite3.Connection) -> None:
    """Logs written before transactions had no ``batch`` column: add it (rows before it are batches of one)."""
    if "batch" not in {row[1] for row in conn.execute("PRAGMA table_info(audit_log)")}:
        conn.execute("ALTER TABLE audit_log ADD COLUMN batch INTEGER")


class AuditTransaction:
    """Rows appended inside :meth:`AuditLog.transaction`; visible to others only after its commit."""

    def __init__(self, log: AuditLog, conn: sqlite3.Connection, last_seq: int, last_hash: bytes) -> None:
        self._log = log
        self._conn = conn
        self._seq = last_seq
        self._prev = last_hash
        self.rows: list[AuditRow] = []

    @property
    def index(self) -> IndexLookup:
        """Lookups that see this transaction's own rows (the index is level with the log here)."""
        return IndexLookup(lambda: self._conn)

    def append(
        self,
        kind: AuditKind | str,
        payload: Mapping[str, Any],
        *,
        request_id: bytes | str | None = None,
        actor: str | None = None,
        ts: int | None = None,
    ) -> AuditRow:
        """Add one row to the transaction (see :meth:`AuditLog.append` for the rules on payloads)."""
        try:
            kind = AuditKind(kind)
        except ValueError:
            raise ProgrammingError(f"unknown audit kind {kind!r}") from None
        if not isinstance(payload, Mapping):
            raise ProgrammingError("an audit payload is a map")
        payload_text = canonical_json(payload)
        payload_value = json.loads(payload_text)
        rid = request_id.hex() if isinstance(request_id, bytes) else request_id
        ts = self._log.clock() if ts is None else ts
        if type(ts) is not int or ts < 0:
            raise ProgrammingError("audit ts must be non-negative Unix seconds")
        if actor is not None and not isinstance(actor, str):
            raise ProgrammingError("audit actor must be text")
        seq = self._seq + 1
        digest = row_hash(self._prev, row_bytes(seq, ts, kind.value, rid, actor, payload_value))
        batch = self.rows[0].seq if self.rows else seq
        self._conn.execute(
            f"INSERT INTO audit_log ({_COLUMNS}, batch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, kind.value, rid, actor, payload_text, self._prev.hex(), digest.hex(), batch),
        )
        row = AuditRow(seq, ts, kind.value, rid, actor, payload_text, self._prev, digest, payload_value)
        if self._log.indexer is not None:
            _insert_entries(self._conn, row, self._log.indexer)
        _remember_intact(row)  # hashed just now from these very fields: reading it back needs no re-hash
        self.rows.append(row)
        self._seq, self._prev = seq, digest
        return row


class IndexLookup:
    """Queries on ``audit_index``: each answers with seqs (or rows) that the caller must verify."""

    def __init__(self, connection: Callable[[], sqlite3.Connection]) -> None:
        self._connection = connection

    def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            found: tuple[Any, ...] | None = self._connection().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"audit index unreadable: {_describe_sqlite(exc)}") from None
        return found

    def _seq(self, sql: str, params: tuple[Any, ...]) -> int | None:
        found = self._one(sql, params)
        return None if found is None else int(found[0])

    def last(self, name: str) -> int | None:
        """The newest row with an entry ``name``."""
        return self._seq("SELECT seq FROM audit_index WHERE name = ? ORDER BY seq DESC LIMIT 1", (name,))

    def first(self, name: str) -> int | None:
        return self._seq("SELECT seq FROM audit_index WHERE name = ? ORDER BY seq LIMIT 1", (name,))

    def after(self, name: str, seq: int) -> int | None:
        """The oldest row with an entry ``name`` newer than row ``seq``."""
        return self._seq("SELECT seq FROM audit_index WHERE name = ? AND seq > ? ORDER BY seq LIMIT 1", (name, seq))

    def floor(self, name: str, key: int) -> int | None:
        """The row whose entry ``name`` has the greatest (key, seq) with key <= ``key``."""
        return self._seq(
            "SELECT seq FROM audit_index WHERE name = ? AND key <= ? ORDER BY key DESC, seq DESC LIMIT 1", (name, key)
        )

    def top(self, name: str) -> int | None:
        """The row whose entry ``name`` has the greatest key (the newest of equals)."""
        return self._seq("SELECT seq FROM audit_index WHERE name = ? ORDER BY key DESC, seq DESC LIMIT 1", (name,))

    def above(self, name: str, key: int) -> list[int]:
        """Rows whose entry ``name`` has a key greater than ``key``, oldest first."""
        try:
            found = (
                self._connection()
                .execute("SELECT seq FROM audit_index WHERE name = ? AND key > ? ORDER BY seq", (name, key))
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise StateError(f"audit index unreadable: {_describe_sqlite(exc)}") from None
        return [int(r[0]) for r in found]

    def row(self, seq: int) -> AuditRow | None:
        found = self._one(f"SELECT {_COLUMNS} FROM audit_log WHERE seq = ?", (seq,))
        return None if found is None else AuditLog._row(found)


def _insert_entries(conn: sqlite3.Connection, row: AuditRow, indexer: AuditIndexer) -> None:
    entries = {(str(name), int(key)) for name, key in indexer.entries(row)}
    if entries:
        conn.executemany(
            "INSERT OR IGNORE INTO audit_index (name, key, seq) VALUES (?, ?, ?)",
            [(name, key, row.seq) for name, key in sorted(entries)],
        )


def _index_level(conn: sqlite3.Connection) -> tuple[int, str] | None:
    found = conn.execute("SELECT seq, version FROM audit_index_level WHERE id = 1").fetchone()
    return None if found is None else (int(found[0]), str(found[1]))


def _set_index_level(conn: sqlite3.Connection, seq: int, version: str) -> None:
    conn.execute("INSERT OR REPLACE INTO audit_index_level (id, seq, version) VALUES (1, ?, ?)", (seq, version))


def _catch_up_index(conn: sqlite3.Connection, indexer: AuditIndexer, tail_seq: int) -> None:
    """Inside a write transaction: index the rows the index has not seen (all of them for a new version)."""
    level = _index_level(conn)
    if level is not None and level[1] == indexer.version and level[0] == tail_seq:
        return
    if level is None or level[1] != indexer.version or level[0] > tail_seq:
        conn.execute("DELETE FROM audit_index")
        start = 0
    else:
        start = level[0]
    cursor = conn.execute(f"SELECT {_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq", (start,))
    while batch := cursor.fetchmany(1000):
        for record in batch:
            _insert_entries(conn, AuditLog._row(record), indexer)
    _set_index_level(conn, tail_seq, indexer.version)


def _first_batch(seq: int, batch: int | None) -> int:
    """The first seq of the transaction that wrote row ``seq`` (rows from before batches: itself)."""
    return seq if batch is None else batch


#: Rows this process already re-hashed, by a plain digest of their stored fields: the same bytes
#: give the same answer, so a row read again (each decision reads a request's rows several times)
#: costs one SHA-256 over its text instead of two canonical JSON encodings. Bounded.
_INTACT: dict[bytes, bytes] = {}
_INTACT_MAX = 100_000


def _fingerprint(row: AuditRow) -> bytes:
    fields = (str(row.seq), str(row.ts), row.kind, row.request_id or "", row.actor or "", row.payload_text)
    return hashlib.sha256("\0".join(fields).encode() + row.prev_hash).digest()


def row_is_intact(row: AuditRow) -> bool:
    """Does the row still hash to its stored hash? (One row alone; the chain is :meth:`AuditLog.verify`.)"""
    seen = _INTACT.get(row.hash)
    if seen is not None and seen == _fingerprint(row):
        return True
    if row.payload is None or canonical_or_none(row.payload) != row.payload_text:
        return False
    try:
        intact = row.hash == row_hash(
            row.prev_hash, row_bytes(row.seq, row.ts, row.kind, row.request_id, row.actor, row.payload)
        )
    except (ProgrammingError, TypeError):
        return False
    if intact:
        _remember_intact(row)
    return intact


def _remember_intact(row: AuditRow) -> None:
    if len(_INTACT) >= _INTACT_MAX:
        _INTACT.clear()
    _INTACT[row.hash] = _fingerprint(row)


def canonical_or_none(value: Any) -> str | None:
    try:
        return canonical_json(value)
    except ProgrammingError:
        return None


def _unhex(value: Any) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        return b""
