"""Many CLI processes at once (real processes, see tests/procs.py): nothing signed twice, no write lost."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from agent.audit import AuditLog
from agent.policy import policy_of
from tests.conftest import AutoPrompts
from tests.procs import CliRunner
from tests.vault.helpers import load
from tests.withdrawals.helpers import ETHER, MNEMONIC, Ready, home_paths, ready_home

ROUNDS = int(os.environ.get("KMS_RACE_ROUNDS", "20"))
PAIRS = (("alice", "bob"), ("bob", "carol"), ("alice", "carol"))


@pytest.fixture
def ready(home: Path, prompts: AutoPrompts) -> Ready:
    return ready_home(home, prompts)


def _operators(names: tuple[str, ...]) -> list[str]:
    return [arg for name in names for arg in ("--operator", name)]


@pytest.mark.slow
def test_twenty_approvers_racing_sign_once_and_every_touch_is_recorded(ready: Ready, tmp_path: Path) -> None:
    runner = CliRunner(ready.home, tmp_path / "procs")
    for round_ in range(ROUNDS):
        rid = ready.create(ETHER // 100, nonce=round_)
        results = runner.run_all([["approve", rid, "--json", *_operators(PAIRS[i % 3])] for i in range(20)])
        codes = [code for code, _, _ in results]
        assert set(codes) <= {0, 5}, [err for code, _, err in results if code not in (0, 5)]
        assert "Traceback" not in "".join(err for _, _, err in results)
        assert len(ready.signature_rows(rid)) == 1, f"round {round_}"
        # Every touch made is a valid approval over this request's digest, and every one is in the log.
        touches = sum(err.count("Touch sim:") for _, _, err in results)
        approvals = ready.service.audit.rows(kinds=["approval"], request_id=rid)
        assert len(approvals) == touches and touches >= 2
        # Whoever reported success saw the one signed transaction.
        raws = {json.loads(out)["signed"]["raw"] for code, out, _ in results if code == 0}
        assert len(raws) == 1
        assert raws == {ready.signature_rows(rid)[0].payload["raw"]}
    assert ready.service.audit.verify().ok


@pytest.mark.slow
def test_approve_racing_a_veto_never_signs_after_the_veto(ready: Ready, tmp_path: Path) -> None:
    runner = CliRunner(ready.home, tmp_path / "procs")
    rng = random.Random(8)
    outcomes: Counter[str] = Counter()
    for round_ in range(ROUNDS):
        rid = ready.create(ETHER // 100, nonce=round_)
        approve = runner.start("approve", rid, "--operator", "alice", "--operator", "bob")
        # Land the veto at varying moments of the approval: before, during the touches, at the commit.
        import time

        time.sleep(rng.uniform(0, 0.12))
        veto = runner.start("reject", rid, "--operator", "carol", "--reason", "race")
        codes = approve.wait(), veto.wait()
        signed = ready.signature_rows(rid)
        vetoed = ready.service.audit.rows(kinds=["rejection"], request_id=rid)
        assert len(signed) + len(vetoed) == 1, (codes, approve.stderr, veto.stderr)  # exactly one of them won
        assert (codes[0] == 0) == bool(signed) and (codes[1] == 0) == bool(vetoed)
        outcomes["signed" if signed else "vetoed"] += 1
        assert ready.service.request(rid).status == ("signed" if signed else "rejected")
    print(f"approve vs veto over {ROUNDS} rounds: {dict(outcomes)}")
    assert ready.service.audit.verify().ok


@pytest.mark.slow
def test_sixteen_parallel_wallet_writers_lose_nothing(ready: Ready, tmp_path: Path) -> None:
    runner = CliRunner(ready.home, tmp_path / "procs")
    before = {w.signature_id for w in load(home_paths(ready.home)).wallets()}
    commands = []
    for i in range(16):
        approvers = _operators(PAIRS[i % 3])
        if i % 2:
            commands.append(["wallet", "generate", "ETH", "--testnet", "--json", *approvers])
        else:
            commands.append(["wallet", "generate", "BTC", "--testnet", "--private-key", "--json", *approvers])
    children = [runner.start(*argv) for argv in commands]
    children.append(runner.start("wallet", "store", "ETH", "--testnet", "--json", stdin=MNEMONIC.encode()))
    results = [(c.wait(), c.stdout, c.stderr) for c in children]
    assert [code for code, _, _ in results] == [0] * 17, [err for _, _, err in results]
    printed = {w["signatureId"] for _, out, _ in results for w in json.loads(out).get("wallets", [json.loads(out)])}
    vault = load(home_paths(ready.home))
    assert {w.signature_id for w in vault.wallets()} == before | printed  # every printed id is in the vault
    assert len(printed) == 17
    assert vault.header.generation >= 17


@pytest.mark.slow
def test_token_removal_and_policy_change_racing_wallet_writes_hold(
    ready: Ready, tmp_path: Path, prompts: AutoPrompts
) -> None:
    runner = CliRunner(ready.home, tmp_path / "procs")
    enrol = runner.start("token", "enrol", "sim:alice2", "--owner", "alice", "--operator", "alice", "--operator", "bob")
    assert enrol.wait() == 0, enrol.stderr
    policy = policy_of(load(home_paths(ready.home)).header).to_dict()
    policy["generation"] += 1
    policy["default"]["frozen"] = True  # a freeze must never be lost to a racing writer
    (tmp_path / "freeze.json").write_text(json.dumps(policy))
    children = [runner.start("token", "remove", "sim:alice2", "--operator", "bob", "--operator", "carol")]
    children.append(runner.start("policy", "set", str(tmp_path / "freeze.json"), *_operators(("bob", "carol"))))
    for _ in range(6):
        children.append(
            runner.start("wallet", "generate", "ETH", "--testnet", "--operator", "alice", "--operator", "carol")
        )
    results = [(c.wait(), c.stderr) for c in children]
    assert [code for code, _ in results] == [0] * 8, results
    vault = load(home_paths(ready.home))
    assert "sim:alice2" not in [s.label for s in vault.header.slots]  # the removal held
    assert policy_of(vault.header).default.frozen  # and so did the freeze
    assert AuditLog(ready.home / "state").verify().ok
