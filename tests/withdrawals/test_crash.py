"""SIGKILL during approve and sign, at every named point and at random instants (real processes).

After each kill, and again after the next start: no request has two signatures, every signature a
process released has its audit row, vault and audit log verify, and the queue is level with the log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.errors import ApprovalError
from agent.faults import CRASH_ENV
from agent.withdrawals.index_check import check_queue
from agent.withdrawals.service import Withdrawals
from tests.conftest import AutoPrompts
from tests.procs import CliRunner
from tests.vault.helpers import load
from tests.withdrawals.helpers import ETHER, Ready, home_paths, ready_home

TRIALS = int(os.environ.get("KMS_APPROVE_CRASH_TRIALS", "200"))
APPROVE = ("--operator", "alice", "--operator", "bob")


@pytest.fixture
def ready(home: Path, prompts: AutoPrompts) -> Ready:
    return ready_home(home, prompts)


def _released(stdout: str) -> str | None:
    """The signed transaction a killed process managed to print, if any."""
    try:
        data = json.loads(stdout)
    except ValueError:
        return None
    return (data.get("signed") or {}).get("raw")


def _check(ready: Ready, released: dict[str, str]) -> Counter[str]:
    signatures = Counter(row.request_id for row in ready.signature_rows())
    assert max(signatures.values(), default=0) <= 1, "a request was signed twice"
    for rid, raw in released.items():
        rows = ready.signature_rows(rid)
        assert rows and rows[0].payload["raw"] == raw, "a signature left the agent without its audit row"
    return signatures


def _finish(ready: Ready, ids: list[str], released: dict[str, str]) -> None:
    """The next start: level, consistent, and every request can be completed exactly once."""
    service = Withdrawals(ready.home)
    assert check_queue(ready.home / "state") == []
    for rid in ids:
        state = service.request(rid)
        assert state.status in ("pending", "signed")
        if state.status == "pending":
            service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
        else:
            with pytest.raises(ApprovalError, match="already signed"):
                service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    signatures = _check(ready, released)
    assert all(signatures[rid] == 1 for rid in ids)
    assert service.audit.verify().ok
    load(home_paths(ready.home))  # wallet.dat parses, its signature verifies, the pin accepts it


@pytest.mark.slow
def test_a_kill_at_each_named_point_of_approve_and_sign(ready: Ready, tmp_path: Path) -> None:
    runner = CliRunner(ready.home, tmp_path / "procs")
    ids = []
    for nonce, point in enumerate(("after-touch", "before-commit", "after-commit", "after-queue")):
        rid = ready.create(ETHER // 100, nonce=nonce)
        ids.append(rid)
        child = runner.start("approve", rid, *APPROVE, "--json", env={CRASH_ENV: point})
        assert child.wait() == -signal.SIGKILL, child.stderr
        committed = point in ("after-commit", "after-queue")
        assert len(ready.signature_rows(rid)) == int(committed), point
        assert _released(child.stdout) is None  # killed before it printed anything
    _finish(ready, ids, {})


@pytest.mark.slow
def test_a_kill_at_each_named_point_of_a_vault_write(ready: Ready, tmp_path: Path) -> None:
    runner = CliRunner(ready.home, tmp_path / "procs")
    paths = home_paths(ready.home)
    for point in ("before-vault-save", "after-vault-save"):
        generation = load(paths).header.generation
        child = runner.start("wallet", "generate", "ETH", "--testnet", "--json", env={CRASH_ENV: point})
        assert child.wait() == -signal.SIGKILL
        after = load(paths)  # the old or the new vault, pinned, never a broken one
        assert after.header.generation == generation + (point == "after-vault-save")
        again = runner.start("wallet", "generate", "ETH", "--testnet", "--json")
        assert again.wait() == 0, again.stderr
        sig = json.loads(again.stdout)["wallets"][0]["signatureId"]
        assert sig in [w.signature_id for w in load(paths).wallets()]


@pytest.mark.slow
def test_random_sigkills_during_approve_and_sign(ready: Ready, tmp_path: Path) -> None:
    runner = CliRunner(ready.home, tmp_path / "procs")
    rng = random.Random(2026)
    ids: list[str] = []
    released: dict[str, str] = {}
    kills = Counter[str]()
    # How long an approve-and-sign takes on this machine now, so the kills spread over all of it.
    # The fastest of a few runs: a slow first run (cold caches, a busy machine) must not stretch the
    # window so far that most kills land after the process has already finished.
    spans = []
    for nonce in range(5):
        rid = ready.create(ETHER // 100, nonce=nonce)
        ids.append(rid)
        started = time.monotonic()
        assert runner.start("approve", rid, *APPROVE).wait() == 0
        spans.append(time.monotonic() - started)
    span = min(spans)
    for trial in range(5, TRIALS + 5):
        rid = ready.create(ETHER // 100, nonce=trial)
        ids.append(rid)
        child = runner.start("approve", rid, *APPROVE, "--json")
        # A little past the fastest run, so that some kills land after the commit (signed) too.
        time.sleep(rng.uniform(0.0, span * 1.25))
        child.kill()
        code = child.wait()
        raw = _released(child.stdout)
        if raw is not None:
            released[rid] = raw
        kills["finished" if code == 0 else "killed"] += 1
        kills["signed" if ready.signature_rows(rid) else "unsigned"] += 1
        _check(ready, released)
    print(f"\n{TRIALS} trials, approve-and-sign takes {span * 1e3:.0f} ms: {dict(kills)}")
    assert kills["killed"] >= TRIALS // 2 and kills["signed"] and kills["unsigned"]  # kills landed all over
    _finish(ready, ids, released)
