"""Appending, verifying, querying; fail-closed appends; concurrent appenders."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.approvals import RecordedApproval, approval_audit_payload, approval_row_verifier
from agent.audit import AuditKind, AuditLog
from agent.errors import ProgrammingError, StateError
from tests.approvals.helpers import Team, payload
from tests.audit.helpers import T0, attacker, count, filled

REPO = Path(__file__).resolve().parents[2]


def test_append_and_verify(tmp_path: Path) -> None:
    log = filled(tmp_path / "state", 7)
    report = log.verify()
    assert report.ok and report.rows == 7 and report.first_bad_seq is None
    assert report.head == report.pinned and report.head is not None and report.head.seq == 7
    assert log.head() == report.head
    rows = log.rows()
    assert [r.seq for r in rows] == list(range(1, 8))
    assert rows[0].prev_hash == bytes(32) and all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert rows[0].payload == {"i": 0, "note": "row 1", "tx": "00ff" * 8}
    assert report.to_json()["ok"] is True


def test_files_are_private(tmp_path: Path) -> None:
    log = filled(tmp_path / "state", 2)
    assert stat.S_IMODE(log.directory.stat().st_mode) == 0o700
    for path in log.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    conn = sqlite3.connect(log.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_queries(tmp_path: Path) -> None:
    log = filled(tmp_path / "state", 7)
    assert [r.kind for r in log.rows(kinds=[AuditKind.APPROVAL, "alert"])] == ["approval", "alert"]
    assert [r.seq for r in log.rows(since=T0 + 2, until=T0 + 5)] == [3, 4, 5]
    assert [r.seq for r in log.rows(request_id=bytes([2]) * 16)] == [3]
    assert AuditLog(tmp_path / "elsewhere").rows() == [] and AuditLog(tmp_path / "elsewhere").verify().ok


def test_the_table_is_append_only(tmp_path: Path) -> None:
    log = filled(tmp_path / "state", 2)
    conn = sqlite3.connect(log.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit_log SET actor = 'x'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit_log")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "bad",
    [{"mnemonic": "abandon"}, {"nested": [{"PIN": "1234"}]}, {"x": 1.5}, {"x": b"raw"}, {"x": 2**60}, {1: "int key"}],
)
def test_secrets_and_unloggable_values_are_refused_before_any_write(tmp_path: Path, bad: dict[Any, Any]) -> None:
    log = filled(tmp_path / "state", 1)
    with pytest.raises(ProgrammingError):
        log.append("error", bad)
    with pytest.raises(ProgrammingError):
        log.append("not-a-kind", {})
    assert count(log) == 1


def test_approval_rows_reverify(tmp_path: Path) -> None:
    team = Team.build()
    p = payload()
    log = AuditLog(tmp_path / "state")
    slot = team.roster[team.approve(p, 2, 0x21).operator_id].slots[0]
    for n in range(2):
        approval = team.approve(p, 2, 0x21).with_baseline(n)
        log.append("approval", approval_audit_payload(p, approval, slot), request_id=p.request_id, actor="bob")
    report = log.verify(approval_verifier=approval_row_verifier(team.roster))
    assert report.ok and report.approvals_checked == 2
    # Swap one approval's signature for another valid-looking one and re-hash the chain: the chain
    # alone can no longer tell, the signature check still does.
    forged = team.approve(payload(fee=1), 2, 0x21)
    rows = log.rows()
    record = dict(rows[1].payload)
    record["approval"] = {**record["approval"], "signature": forged.signature.hex()}
    rehash(log, 2, record)
    report = log.verify(approval_verifier=approval_row_verifier(team.roster))
    assert not report.ok and report.first_bad_seq == 2 and "does not verify" in report.problems[0].what
    assert RecordedApproval.from_json(rows[0].payload["approval"]).counter_baseline == 0


def rehash(log: AuditLog, seq: int, new_payload: dict[str, Any]) -> None:
    import json

    from agent.audit import canonical_json, row_bytes, row_hash

    with attacker(log) as db:
        db.execute("UPDATE audit_log SET payload = ? WHERE seq = ?", (canonical_json(new_payload), seq))
        prev = bytes(32)
        for s, ts, kind, rid, actor, text in db.execute(
            "SELECT seq, ts, kind, request_id, actor, payload FROM audit_log ORDER BY seq"
        ).fetchall():
            digest = row_hash(prev, row_bytes(s, ts, kind, rid, actor, json.loads(text)))
            db.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev.hex(), digest.hex(), s))
            prev = digest
    log.head_path.write_text(json.dumps({"v": 1, "seq": seq, "hash": prev.hex()}))


# --- fail closed ----------------------------------------------------------------------------------
@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable even for root (immutable flag), or by mode for ordinary users."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a filesystem without chattr +i")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o500 if path.is_dir() else 0o400)
        try:
            yield
        finally:
            path.chmod(stat.S_IMODE(mode))


def assert_untouched(log: AuditLog, rows: int, head: str) -> None:
    assert count(log) == rows
    assert log.head_path.read_text() == head
    assert log.verify().ok


def settle(log: AuditLog) -> None:
    """Checkpoint and drop the WAL so the database file itself is what a write must change."""
    conn = sqlite3.connect(log.path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def test_read_only_database(tmp_path: Path) -> None:
    log = filled(tmp_path / "state", 3)
    settle(log)
    head = log.head_path.read_text()
    for suffix in ("-wal", "-shm"):
        Path(f"{log.path}{suffix}").unlink(missing_ok=True)
    with read_only(log.path), pytest.raises(StateError, match=r"read-only|cannot be opened|append failed"):
        log.append("signature", {"tx": "00"})
    assert_untouched(log, 3, head)


def test_unwritable_directory(tmp_path: Path) -> None:
    log = filled(tmp_path / "state", 3)
    settle(log)
    head = log.head_path.read_text()
    for suffix in ("-wal", "-shm"):
        Path(f"{log.path}{suffix}").unlink(missing_ok=True)
    with read_only(log.directory):
        with pytest.raises(StateError):
            log.append("signature", {"tx": "00"})
        assert log.verify().ok and len(log.rows()) == 3  # auditors can still read a read-only copy
    assert_untouched(log, 3, head)


def test_state_directory_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError):
        AuditLog(tmp_path / "file" / "state").append("unlock", {})


def test_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = filled(tmp_path / "state", 3)
    head = log.head_path.read_text()
    real = AuditLog._connect

    def capped(self: AuditLog, *, write: bool) -> sqlite3.Connection:
        conn = real(self, write=write)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
        return conn

    monkeypatch.setattr(AuditLog, "_connect", capped)
    with pytest.raises(StateError, match="disk is full"):
        AuditLog(log.directory).append("signature", {"tx": "ab" * 20000})  # a process that opens it now
    monkeypatch.undo()
    assert_untouched(log, 3, head)


def test_locked_database(tmp_path: Path) -> None:
    log = filled(tmp_path / "state", 2)
    head = log.head_path.read_text()
    holder = sqlite3.connect(log.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateError, match="locked"):
            AuditLog(log.directory, busy_timeout=0.2).append("alert", {})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    fd = os.open(log.lock_path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(StateError, match="locked"):
            AuditLog(log.directory, busy_timeout=0.2).append("alert", {})
    finally:
        os.close(fd)
    assert_untouched(log, 2, head)


def test_corrupted_database(tmp_path: Path) -> None:
    log = filled(tmp_path / "state", 2)
    settle(log)
    for suffix in ("-wal", "-shm"):
        Path(f"{log.path}{suffix}").unlink(missing_ok=True)
    log.path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="corrupted"):
        log.append("alert", {})
    with pytest.raises(StateError, match="corrupted"):
        log.verify()


def test_loose_database_permissions_are_refused(tmp_path: Path) -> None:
    log = filled(tmp_path / "state", 1)
    log.path.chmod(0o644)
    with pytest.raises(StateError, match="other users"):
        log.append("alert", {})


def test_head_pin_write_failure_is_reported_and_heals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = filled(tmp_path / "state", 2)

    def no_space(self: AuditLog, pin: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(AuditLog, "_write_head", no_space)
    with pytest.raises(StateError, match="committed but the head pin could not be written"):
        log.append("alert", {"n": 3})
    monkeypatch.undo()
    report = log.verify()
    assert report.ok and report.warnings and count(log) == 3  # the row is whole; only its pin lags
    log.append("alert", {"n": 4})
    report = log.verify()
    assert report.ok and not report.warnings and report.pinned is not None and report.pinned.seq == 4


# --- concurrency ----------------------------------------------------------------------------------
APPENDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from agent.audit import AuditLog
    log = AuditLog(Path({directory!r}), busy_timeout=30)
    for i in range({n}):
        log.append("request", {{"writer": {name!r}, "i": i}}, actor={name!r})
""")


def test_two_processes_append_one_valid_chain(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    n = 40
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER.format(repo=str(REPO), directory=str(directory), n=n, name=name)]
        )
        for name in ("p1", "p2")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    log = AuditLog(directory)
    report = log.verify()
    assert report.ok and report.rows == 2 * n, report.problems
    rows = log.rows()
    for name in ("p1", "p2"):
        assert [r.payload["i"] for r in rows if r.actor == name] == list(range(n))


def test_the_head_pin_is_rewritten_in_place_and_an_older_pin_file_is_replaced(tmp_path: Path) -> None:
    import json

    log = AuditLog(tmp_path / "state")
    log.append("alert", {"n": 1})
    inode, size = log.head_path.stat().st_ino, log.head_path.stat().st_size
    row = log.append("alert", {"n": 2})
    assert (log.head_path.stat().st_ino, log.head_path.stat().st_size) == (inode, size) == (inode, 256)
    assert json.loads(log.head_path.read_text()) == {"v": 1, "seq": row.seq, "hash": row.hash.hex()}
    # A pin file written by an older kms-agent (one short line, no padding) still reads, and is replaced whole.
    log.head_path.write_text(json.dumps({"v": 1, "seq": row.seq, "hash": row.hash.hex()}) + "\n")
    row = log.append("alert", {"n": 3})
    assert log.head_path.stat().st_size == 256 and stat.S_IMODE(log.head_path.stat().st_mode) == 0o600
    assert json.loads(log.head_path.read_text())["seq"] == row.seq and log.verify().ok
