"""Every kind of tampering is detected, naming the first bad seq."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.audit import AuditLog
from agent.errors import AuditIntegrityError, StateError
from tests.audit.helpers import attacker, filled

N = 5
EDITS = {
    "ts": "ts + 1",
    "kind": "'alert'",
    "request_id": "'ff' || coalesce(request_id, '')",
    "actor": "'mallory'",
    "payload": """'{"i":99}'""",
    "prev_hash": "(CASE WHEN substr(prev_hash, 1, 2) = 'ff' THEN '00' ELSE 'ff' END) || substr(prev_hash, 3)",
    "hash": "(CASE WHEN substr(hash, 1, 2) = 'ff' THEN '00' ELSE 'ff' END) || substr(hash, 3)",
}


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    log = filled(tmp_path / "state", N)
    assert log.verify().ok
    return log


@pytest.mark.parametrize("seq", range(1, N + 1))
@pytest.mark.parametrize("column", sorted(EDITS))
def test_editing_any_column_of_any_row(log: AuditLog, column: str, seq: int) -> None:
    with attacker(log) as db:
        db.execute(f"UPDATE audit_log SET {column} = {EDITS[column]} WHERE seq = ?", (seq,))
    report = log.verify()
    assert not report.ok
    assert report.first_bad_seq == seq, report.problems


def test_editing_seq(log: AuditLog) -> None:
    with attacker(log) as db:
        db.execute("UPDATE audit_log SET seq = 99 WHERE seq = 3")
    report = log.verify()
    assert report.first_bad_seq == 3 and "row 3 is missing" in report.problems[0].what


def test_rewriting_a_row_and_everything_after_it_still_breaks_the_head(log: AuditLog) -> None:
    """An attacker who re-hashes the rest of the chain is caught by the head pin."""
    from agent.audit import row_bytes, row_hash

    with attacker(log) as db:
        db.execute("""UPDATE audit_log SET payload = '{"i":42}' WHERE seq = 2""")
        rows = db.execute(
            "SELECT seq, ts, kind, request_id, actor, payload, prev_hash FROM audit_log ORDER BY seq"
        ).fetchall()
        prev = bytes.fromhex(rows[0][6])
        for seq, ts, kind, rid, actor, payload, _ in rows:
            digest = row_hash(prev, row_bytes(seq, ts, kind, rid, actor, json.loads(payload)))
            db.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev.hex(), digest.hex(), seq))
            prev = digest
    report = log.verify()
    assert not report.ok and report.first_bad_seq == N  # the pinned row no longer matches


def test_deleting_a_middle_row(log: AuditLog) -> None:
    with attacker(log) as db:
        db.execute("DELETE FROM audit_log WHERE seq = 3")
    report = log.verify()
    assert report.first_bad_seq == 3
    assert any("missing" in p.what for p in report.problems)


def test_deleting_the_last_row(log: AuditLog) -> None:
    with attacker(log) as db:
        db.execute("DELETE FROM audit_log WHERE seq = ?", (N,))
    report = log.verify()
    assert report.first_bad_seq == N and "deleted" in report.problems[0].what
    with pytest.raises(AuditIntegrityError, match="deleted"):
        log.append("alert", {"x": 1})


def test_deleting_every_row(log: AuditLog) -> None:
    with attacker(log) as db:
        db.execute("DELETE FROM audit_log")
    assert log.verify().first_bad_seq == 1
    with pytest.raises(AuditIntegrityError):
        log.append("alert", {"x": 1})


def test_reordering_rows(log: AuditLog) -> None:
    with attacker(log) as db:
        db.execute("UPDATE audit_log SET seq = -2 WHERE seq = 2")
        db.execute("UPDATE audit_log SET seq = 2 WHERE seq = 3")
        db.execute("UPDATE audit_log SET seq = 3 WHERE seq = -2")
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 2


@pytest.mark.parametrize(
    ("change", "first_bad"),
    [
        (lambda pin: {**pin, "hash": "00" * 32}, N),  # forged hash
        (lambda pin: {**pin, "seq": N + 3}, N + 1),  # claims rows that are not there
        (lambda pin: {**pin, "seq": 2, "hash": None}, 3),  # rolled back to an older real row (filled below)
        (lambda pin: {**pin, "seq": 4, "hash": None}, 4),  # lag of one row, but the hash is row 2's
    ],
)
def test_rewriting_the_head_file(log: AuditLog, change, first_bad: int) -> None:  # type: ignore[no-untyped-def]
    pin = json.loads(log.head_path.read_text())
    new = change(pin)
    if new["hash"] is None:
        new["hash"] = log.rows()[1].hash.hex()  # row 2's real hash
    log.head_path.write_text(json.dumps(new))
    report = log.verify()
    assert not report.ok and report.first_bad_seq == first_bad, report.problems
    with pytest.raises(AuditIntegrityError):
        log.append("alert", {"x": 1})


def test_malformed_or_missing_head(log: AuditLog) -> None:
    log.head_path.write_text("{not json")
    report = log.verify()
    assert not report.ok and "unreadable" in report.problems[0].what
    with pytest.raises(StateError):
        log.append("alert", {"x": 1})
    log.head_path.unlink()
    report = log.verify()
    assert not report.ok and "missing" in report.problems[0].what
    with pytest.raises(AuditIntegrityError):
        log.append("alert", {"x": 1})


def test_a_loose_head_file_is_refused(log: AuditLog) -> None:
    log.head_path.chmod(0o644)
    with pytest.raises(StateError, match="other users"):
        log.append("alert", {"x": 1})


def test_a_crash_between_commit_and_pin_is_a_warning_and_heals(log: AuditLog) -> None:
    pin = json.loads(log.head_path.read_text())
    log.append("alert", {"x": 1})
    log.head_path.write_text(json.dumps(pin))  # as if the process died before re-pinning
    report = log.verify()
    assert report.ok and report.warnings and "not pinned yet" in report.warnings[0]
    log.append("alert", {"x": 2})
    report = log.verify()
    assert report.ok and not report.warnings and report.head is not None and report.head.seq == N + 2
