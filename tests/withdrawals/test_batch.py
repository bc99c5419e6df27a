"""Batches (the daemon's path): many requests recorded at once, approved per request, signed with one vault opening."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ApprovalError, PolicyDenied, UsageError
from agent.withdrawals.service import CreateSpec, Withdrawals
from tests.conftest import AutoPrompts
from tests.withdrawals.helpers import COLD, ETHER, Ready, ready_home

NINE_TENTHS = 9 * ETHER // 10
STRANGER = "0x00000000000000000000000000000000000bad00"


@pytest.fixture
def ready(home: Path, prompts: AutoPrompts) -> Ready:
    return ready_home(home, prompts, per_hour=3 * ETHER)


def _spec(
    ready: Ready, nonce: int, *, value: int = ETHER // 100, to: str = COLD, external: str | None = None
) -> CreateSpec:
    return CreateSpec("ETH", ready.sig_id, 0, ready.tx(value, nonce, to), "app:tatum-daemon", external)


def test_create_many_records_all_in_one_go_and_an_outside_id_only_once(ready: Ready) -> None:
    before = ready.service.audit.last_seq()
    created = ready.service.create_many(
        [
            _spec(ready, 0, external="tatum:a"),
            _spec(ready, 1, to=STRANGER, external="tatum:b"),  # not on the allowlist: denied, but recorded
            CreateSpec("ETH", ready.sig_id, 0, "not a transaction", None, "tatum:c"),
            _spec(ready, 2, external="tatum:a"),  # the same outside id again in the same batch
        ]
    )
    assert [c.state.status.value if c.state else None for c in created] == ["pending", "denied", None, None]
    assert created[0].error is None
    assert isinstance(created[1].error, PolicyDenied) and "allowlist" in created[1].error.message
    assert isinstance(created[2].error, UsageError)
    assert isinstance(created[3].error, UsageError) and "already has a withdrawal request" in created[3].error.message
    # Two requests, two rows each, and the outside id is in the signed request row.
    assert ready.service.audit.last_seq() == before + 4
    found, first = ready.service.find_external("tatum:a"), created[0].state
    assert found is not None and first is not None
    assert found.request_id == first.request_id and found.external == "tatum:a"
    assert ready.service.find_external("tatum:c") is None
    # A later create for the same id, from another process's view, is refused too.
    with pytest.raises(UsageError, match="already has"):
        Withdrawals(ready.home).create(
            chain="ETH", signature_id=ready.sig_id, index=0, tx=ready.tx(1, 9), external="tatum:b"
        )
    assert ready.service.audit.verify().ok
    assert (ready.service.queue.get(first.request_id) or {}).get("external") == "tatum:a"


def test_a_batch_is_signed_once_with_each_request_approved_over_its_own_digest(
    ready: Ready, prompts: AutoPrompts
) -> None:
    created = ready.service.create_many([_spec(ready, n) for n in range(5)])
    ids = [c.state.request_id for c in created if c.state]
    result = ready.service.approve_batch(ids, finder=ready.finder, prompts=prompts, operators=["alice", "bob"])
    assert sorted(s.request_id for s in result.signed) == sorted(ids) and not result.failed and not result.waiting
    for rid in ids:
        state = ready.service.request(rid)
        assert state.status.value == "signed"
        approvals = ready.service.audit.rows(kinds=["approval"], request_id=rid)
        assert len(approvals) == 2  # one touch per operator per request
        assert len(ready.signature_rows(rid)) == 1
    # Nonces 0..4 from the one key: five distinct transactions.
    assert len({(ready.service.request(rid).signed or _unsigned()).txid for rid in ids}) == 5
    again = ready.service.approve_batch(ids, finder=ready.finder, prompts=prompts, operators=["alice", "bob"])
    assert not again.signed and all(isinstance(e, ApprovalError) for e in again.failed.values())
    assert all(len(ready.signature_rows(rid)) == 1 for rid in ids)
    assert ready.service.audit.verify().ok


def test_velocity_counts_the_signatures_earlier_in_the_same_batch(ready: Ready, prompts: AutoPrompts) -> None:
    created = ready.service.create_many([_spec(ready, n, value=NINE_TENTHS) for n in range(5)])
    ids = [c.state.request_id for c in created if c.state]
    result = ready.service.approve_batch(ids, finder=ready.finder, prompts=prompts, operators=["alice", "bob"])
    # 3 ETH an hour: three of 0.9 ETH fit, the fourth would make 3.6.
    assert [s.request_id for s in result.signed] == ids[:3]
    assert set(result.failed) == set(ids[3:])
    assert all(isinstance(result.failed[rid], PolicyDenied) for rid in ids[3:])
    assert [ready.service.request(rid).status.value for rid in ids] == ["signed"] * 3 + ["denied"] * 2


def test_one_operator_cannot_sign_a_batch(ready: Ready, prompts: AutoPrompts) -> None:
    created = ready.service.create_many([_spec(ready, n) for n in range(2)])
    ids = [c.state.request_id for c in created if c.state]
    result = ready.service.approve_batch(ids, finder=ready.finder, prompts=prompts, operators=["alice"])
    assert not result.signed and result.waiting == ids
    assert not ready.signature_rows()


def _unsigned() -> Any:
    raise AssertionError("a request of the batch is not signed")


_RACER = """
import json, sys
from pathlib import Path
from agent.tokens.discovery import find_token
from agent.withdrawals.service import Withdrawals
from tests.conftest import AutoPrompts
home = Path(sys.argv[1]); ids = json.loads(sys.argv[2]); operators = json.loads(sys.argv[3])
result = Withdrawals(home).approve_batch(ids, finder=lambda slot: find_token(slot, home), prompts=AutoPrompts(home),
                                         operators=operators)
print(json.dumps(sorted(s.request_id for s in result.signed)))
"""


@pytest.mark.slow
def test_batches_racing_in_separate_processes_sign_each_request_once(ready: Ready, tmp_path: Path) -> None:
    created = ready.service.create_many([_spec(ready, n) for n in range(12)])
    ids = [c.state.request_id for c in created if c.state]
    pairs = (["alice", "bob"], ["bob", "carol"], ["alice", "carol"])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(ready.home), json.dumps(ids[i % 2 :] + ids[: i % 2]), json.dumps(pair)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for i, pair in enumerate(pairs)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    signed_by = [json.loads(out) for out, _ in outputs]
    every = [rid for part in signed_by for rid in part]
    assert sorted(every) == sorted(ids)  # each signed by exactly one process
    assert all(len(ready.signature_rows(rid)) == 1 for rid in ids)
    assert ready.service.audit.verify().ok


def _racer(home: Path, ids: list[str], operators: list[str], **env: str) -> subprocess.Popen[str]:
    import os

    return subprocess.Popen(
        [sys.executable, "-c", _RACER, str(home), json.dumps(ids), json.dumps(operators)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_a_batch_killed_at_its_commit_points_loses_nothing_and_signs_once_on_the_next_run(
    ready: Ready, point: str
) -> None:
    created = ready.service.create_many([_spec(ready, n) for n in range(6)])
    ids = [c.state.request_id for c in created if c.state]
    killed = _racer(ready.home, ids, ["alice", "bob"], KMS_AGENT_CRASH_AT=point)
    killed.communicate(timeout=120)
    assert killed.returncode == -9
    after_kill = {rid: len(ready.signature_rows(rid)) for rid in ids}
    # before the commit nothing is signed; after it, the whole chunk is
    assert set(after_kill.values()) == ({1} if point == "after-commit" else {0})
    again = _racer(ready.home, ids, ["bob", "carol"])
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert sorted(json.loads(out)) == sorted(rid for rid, n in after_kill.items() if n == 0)
    assert all(len(ready.signature_rows(rid)) == 1 for rid in ids)
    assert Withdrawals(ready.home).audit.verify().ok


@pytest.mark.slow
def test_a_batch_killed_at_random_instants_never_signs_twice(ready: Ready) -> None:
    import random
    import time

    rng = random.Random(1414)
    created = ready.service.create_many([_spec(ready, n) for n in range(40)])
    ids = [c.state.request_id for c in created if c.state]
    pairs = (["alice", "bob"], ["bob", "carol"], ["alice", "carol"])
    for round_ in range(6):
        proc = _racer(ready.home, ids, pairs[round_ % 3])
        time.sleep(rng.uniform(0.05, 1.2))
        proc.kill()
        proc.communicate(timeout=60)
        assert all(len(ready.signature_rows(rid)) <= 1 for rid in ids)
    last = _racer(ready.home, ids, ["alice", "carol"])
    _, err = last.communicate(timeout=120)
    assert last.returncode == 0, err
    assert all(len(ready.signature_rows(rid)) == 1 for rid in ids)
    assert Withdrawals(ready.home).audit.verify().ok
