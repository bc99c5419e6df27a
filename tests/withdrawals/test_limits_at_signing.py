"""Limits hold at the moment of signing: velocity from the audit log's signatures, time windows by the clock."""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest

from agent.errors import PolicyDenied
from agent.policy import TimeWindow
from agent.withdrawals.service import Withdrawals
from tests.conftest import AutoPrompts
from tests.procs import CliRunner
from tests.withdrawals.helpers import ETHER, ready_home

NINE_TENTHS = 9 * ETHER // 10


def _signed_value(service: Withdrawals) -> int:
    total = 0
    for row in service.audit.rows(kinds=["signature"]):
        total += sum(int(amount) for _, amount, asset, change in row.payload["velocity"]["outputs"] if not change)
    return total


def test_pending_requests_approved_one_by_one_never_pass_the_hourly_limit(home: Path, prompts: AutoPrompts) -> None:
    ready = ready_home(home, prompts, per_hour=2 * ETHER)
    ids = [ready.create(NINE_TENTHS, nonce=n) for n in range(4)]  # each under the limit, together over it
    statuses = []
    for rid in ids:
        try:
            statuses.append(ready.service.approve(rid, finder=ready.finder, prompts=prompts).status)
        except PolicyDenied as exc:
            assert "velocity-hour" in exc.message and rid in exc.message
            statuses.append(ready.service.request(rid).status)
    assert statuses == ["signed", "signed", "denied", "denied"]
    assert _signed_value(ready.service) == 2 * NINE_TENTHS <= 2 * ETHER


@pytest.mark.slow
def test_pending_requests_approved_in_parallel_never_pass_the_hourly_limit(
    home: Path, prompts: AutoPrompts, tmp_path: Path
) -> None:
    ready = ready_home(home, prompts, per_hour=2 * ETHER)
    ids = [ready.create(NINE_TENTHS, nonce=n) for n in range(4)]
    runner = CliRunner(home, tmp_path / "procs")
    pairs = (("alice", "bob"), ("bob", "carol"), ("alice", "carol"), ("alice", "bob"))
    results = runner.run_all(
        [
            ["approve", rid, *[a for name in pair for a in ("--operator", name)]]
            for rid, pair in zip(ids, pairs, strict=True)
        ]
    )
    assert sorted(code for code, _, _ in results) == [0, 0, 5, 5], [err for _, _, err in results]
    assert _signed_value(ready.service) == 2 * NINE_TENTHS
    assert sorted(ready.service.request(rid).status for rid in ids) == ["denied", "denied", "signed", "signed"]


def test_a_request_created_inside_its_time_window_is_not_signed_outside_it(home: Path, prompts: AutoPrompts) -> None:
    ready = ready_home(home, prompts, time_window=TimeWindow(start_hour=9, end_hour=17))
    monday_1659 = calendar.timegm((2026, 11, 30, 16, 59, 0))
    inside = Withdrawals(home, clock=lambda: monday_1659)
    rid = inside.create(
        chain="ETH", signature_id=ready.sig_id, index=0, tx=ready.tx(ETHER // 100), initiator="app:exchange"
    ).request_id
    inside.approve(rid, finder=ready.finder, prompts=prompts, operators=["alice"])
    outside = Withdrawals(home, clock=lambda: monday_1659 + 120)  # 17:01: the window has closed
    with pytest.raises(PolicyDenied, match="time"):
        outside.approve(rid, finder=ready.finder, prompts=prompts, operators=["bob", "alice"])
    assert outside.request(rid).status == "denied" and ready.signature_rows(rid) == []
