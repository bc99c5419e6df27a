"""A rotation racing withdrawals and wallet writes (real processes): nothing lost, no leaver's approval used."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from agent.audit import AuditLog
from tests.conftest import AutoPrompts
from tests.procs import CliRunner
from tests.rotation.helpers import ops
from tests.vault.helpers import load
from tests.withdrawals.helpers import ETHER, MNEMONIC, home_paths, ready_home

ROUNDS = 2


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_removing_an_operator_while_withdrawals_and_wallet_writes_race(
    home: Path, prompts: AutoPrompts, tmp_path: Path, round_: int
) -> None:
    ready = ready_home(home, prompts)
    carol_slots = {s.slot_id.hex() for s in load(home_paths(home)).header.slots if s.label == "sim:carol"}
    requests = [ready.create(ETHER // 100, nonce=i) for i in range(4)]
    before = {w.signature_id for w in load(home_paths(home)).wallets()}
    runner = CliRunner(home, tmp_path / "procs")
    rng = random.Random(round_)

    writers = [runner.start("wallet", "generate", "ETH", "--testnet", "--json", *ops("alice", "bob")) for _ in range(3)]
    writers.append(runner.start("wallet", "store", "ETH", "--testnet", "--json", stdin=MNEMONIC.encode()))
    approvers = [runner.start("approve", rid, "--json", *ops("carol", "alice")) for rid in requests[:2]]
    time.sleep(rng.uniform(0, 0.3))
    rotation = runner.start("operator", "remove", "carol", "--json", *ops("alice", "bob"))
    approvers += [runner.start("approve", rid, "--json", *ops("carol", "alice")) for rid in requests[2:]]

    assert rotation.wait() == 0, rotation.stderr
    results = [(w.wait(), w.stdout, w.stderr) for w in writers]
    # A writer that opened the vault before the rotation follows it (alice and bob stay): none fails.
    assert [code for code, _, _ in results] == [0] * len(writers), [err for _, _, err in results]
    printed = {w["signatureId"] for _, out, _ in results for w in json.loads(out).get("wallets", [json.loads(out)])}
    vault = load(home_paths(home))
    assert {w.signature_id for w in vault.wallets()} == before | printed  # no wallet write was lost
    assert "carol" not in [op.name for op in vault.header.operators]
    for a in approvers:
        code = a.wait()
        assert code in (0, 2, 5, 6), a.stderr  # signed before the removal, or refused after it
        assert "Traceback" not in a.stderr

    # Nothing is signed with carol's approval once the rotation committed (its row is written under
    # the writer lock just before the save, so the log orders it with every signing decision).
    log = AuditLog(home / "state")
    rotated = [r for r in log.rows(kinds=["unlock"]) if r.payload.get("purpose") == "operator-remove"]
    assert len(rotated) == 1
    for rid in requests:
        rows = log.rows(request_id=rid)
        for i, row in enumerate(rows):
            if row.kind != "signature" or row.seq < rotated[0].seq:
                continue
            quorum = [r for r in rows[:i] if r.kind == "decision" and r.payload.get("stage") == "quorum"][-1]
            assert not {a["slot_id"] for a in quorum.payload["accepted"]} & carol_slots, rid
    # Afterwards carol cannot approve at all, and the rest still sign.
    pending = [rid for rid in requests if ready.service.request(rid).status == "pending"]
    for rid in pending:
        assert runner.start("approve", rid, *ops("carol", "alice")).wait() == 2
        done = runner.start("approve", rid, "--json", *ops("alice", "bob"))
        assert done.wait() == 0, done.stderr
    assert all(ready.service.request(rid).status == "signed" for rid in requests)
    assert log.verify().ok
