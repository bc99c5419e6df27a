"""Velocity from running totals: the same answers as summing every signed row, from a few rows, and refusing when edited."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.audit import AuditLog
from agent.errors import AuditIntegrityError
from agent.policy import HistoryVelocity, VelocityScope, scope_key
from agent.withdrawals.service import Withdrawals
from agent.withdrawals.velocity import VELOCITY, velocity_summary
from tests.conftest import AutoPrompts, Cli
from tests.withdrawals.helpers import ETHER, Ready, ready_home

T0 = 1_900_000_000
TENTH = ETHER // 10


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _sign(ready: Ready, service: Withdrawals, value: int, nonce: int) -> None:
    state = service.create(chain="ETH", signature_id=ready.sig_id, index=0, tx=ready.tx(value, nonce))
    assert service.approve(state.request_id, finder=ready.finder, prompts=ready.prompts).status == "signed"


def _db(home: Path) -> sqlite3.Connection:
    """What someone with write access to the data directory and no token can do to audit.sqlite."""
    db = sqlite3.connect(home / "state" / "audit.sqlite", isolation_level=None)
    db.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    return db


@pytest.fixture
def signed(home: Path, prompts: AutoPrompts) -> tuple[Ready, Withdrawals, Clock]:
    """Five withdrawals over two hours, under a clock the test moves."""
    ready = ready_home(home, prompts, per_hour=50 * ETHER, per_day=100 * ETHER)
    clock = Clock()
    service = Withdrawals(home, clock=clock)
    for nonce, (at, value) in enumerate([(0, 1), (600, 2), (3600, 3), (3601, 4), (7000, 5)]):
        clock.now = T0 + at
        _sign(ready, service, value * TENTH, nonce)
    return ready, service, clock


def test_running_totals_answer_what_summing_every_signed_row_answers(
    signed: tuple[Ready, Withdrawals, Clock],
) -> None:
    _, service, _ = signed
    rows = service.audit.rows(kinds=["signature"])
    summary = velocity_summary(rows[-1])
    assert summary is not None
    everything = HistoryVelocity([service.history_entry(r) for r in rows])
    answers = set()
    # Every boundary: just before, at and after each signature, for an hour and a day, in both scopes.
    for at in (0, 600, 3600, 3601, 7000):
        for delta in (-1, 0, 1):
            for seconds in (3600, 86400):
                since = T0 + at + delta - seconds + 3600
                for scope in VelocityScope:
                    want = everything.used(summary, scope, since)
                    assert service.velocity().used(summary, scope, since) == want, (at, delta, seconds, scope)
                    answers.add(tuple(want.items()))
    assert len(answers) > 4  # the windows really cut the history in different places
    # Each signature row carries both scopes' totals: 1.5 ETH plus the fees, all in ETH base units.
    last = rows[-1].payload["tally"]["scopes"]
    assert set(last) == {scope_key(summary, s) for s in VelocityScope}
    assert int(last[scope_key(summary, VelocityScope.WALLET)]["spent"]["ETH"]) >= 15 * TENTH


def test_an_edited_running_total_makes_the_next_decision_refuse(
    signed: tuple[Ready, Withdrawals, Clock],
) -> None:
    ready, service, _ = signed
    db = _db(ready.home)
    seq, payload = db.execute(
        "SELECT seq, payload FROM audit_log WHERE kind = 'signature' ORDER BY seq DESC"
    ).fetchone()
    db.execute(
        "UPDATE audit_log SET payload = ? WHERE seq = ?",
        (payload.replace('"spent":{"ETH":"', '"spent":{"ETH":"1'), seq),
    )
    before = db.execute("SELECT COUNT(*) FROM audit_log").fetchone()
    with pytest.raises(AuditIntegrityError, match=f"audit row {seq}"):
        service.create(chain="ETH", signature_id=ready.sig_id, index=0, tx=ready.tx(TENTH, 9))
    assert db.execute("SELECT COUNT(*) FROM audit_log").fetchone() == before


def test_an_index_that_lost_an_entry_is_reported_and_rebuilt(
    signed: tuple[Ready, Withdrawals, Clock], cli: Cli
) -> None:
    ready, _, _ = signed
    db = _db(ready.home)
    name, seq = db.execute(
        "SELECT name, seq FROM audit_index WHERE name LIKE ? ORDER BY seq DESC", (VELOCITY + "wallet:%",)
    ).fetchone()
    db.execute("DELETE FROM audit_index WHERE name = ? AND seq = ?", (name, seq))
    verify = cli("audit", "verify", "--json")
    assert verify.returncode != 0 and f"lacks entry '{name}' of row {seq}" in verify.stdout
    rebuilt = cli("request", "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert cli("audit", "verify").returncode == 0
    assert db.execute("SELECT COUNT(*) FROM audit_index WHERE name = ? AND seq = ?", (name, seq)).fetchone() == (1,)


def test_an_edited_total_in_a_row_that_still_hashes_is_reported_by_audit_verify(
    signed: tuple[Ready, Withdrawals, Clock],
) -> None:
    """Running totals are recomputed from the withdrawals: a row that sums wrong is named."""
    from agent.withdrawals.velocity import check_tallies

    _, service, _ = signed
    rows = service.audit.rows(kinds=["signature"])
    assert check_tallies(rows, velocity_summary) == []
    shifted = [rows[0], *rows[2:]]  # as if the second withdrawal's row were missing
    found = check_tallies(shifted, velocity_summary)
    assert found and found[0].seq == rows[2].seq and "does not follow" in found[0].what


def test_signature_rows_from_before_running_totals_still_count(home: Path, prompts: AutoPrompts) -> None:
    ready = ready_home(home, prompts, per_hour=ETHER)
    clock = Clock()
    service = Withdrawals(home, clock=clock)
    _sign(ready, service, 3 * TENTH, 0)
    signed = service.audit.rows(kinds=["signature"])[-1].payload
    legacy = {k: v for k, v in signed.items() if k != "tally"}
    AuditLog(home / "state").append("signature", legacy, ts=T0)  # what an older kms-agent wrote
    summary = velocity_summary(service.audit.rows(kinds=["signature"])[-1])
    assert summary is not None
    used = Withdrawals(home, clock=clock).velocity().used(summary, VelocityScope.WALLET, T0 - 3600)
    assert used == {"ETH": 2 * sum(summary.spent().values())}
    with pytest.raises(Exception, match="velocity-hour"):
        _sign(ready, Withdrawals(home, clock=clock), 5 * TENTH, 1)
