"""Approvals that add up over time through a running agent, with the real CLI and the real server.

alice approves at one moment; later bob approves with only his own token plugged in, and that signs:
the agent held alice's share in memory. After a restart the approvals still count, the status says
the vault needs fresh touches, and one more touch signs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.procs import CliRunner
from tests.service.agent_proc import AgentProcess, start_agent
from tests.withdrawals.helpers import ETHER, Ready

pytestmark = pytest.mark.xdist_group("agent")


def kms(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_AGENT_")}
    env.update(KMS_AGENT_HOME=str(home), KMS_AGENT_SIM_TOUCH="auto")
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )


def approve(home: Path, rid: str, *operators: str) -> tuple[int, dict[str, Any], str]:
    proc = kms(home, "approve", rid, "--json", *[a for op in operators for a in ("--operator", op)])
    assert "Traceback" not in proc.stderr
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {}), proc.stderr


def touches(agent: AgentProcess, rid: str) -> dict[str, Any]:
    with agent.unix() as client:
        response = client.get(f"/v1/withdrawals/{rid}/touches")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


def test_alice_now_and_bob_later_with_only_his_token_signs(ready: Ready) -> None:
    agent = start_agent(ready.home, tcp=False)
    try:
        rid = ready.create(ETHER // 100)
        code, first, _ = approve(ready.home, rid, "alice")
        assert code == 0 and first["status"] == "pending"
        assert first["vault_touches"]["held"] == 1 and first["vault_touches"]["needed"] == 2
        code, again, stderr = approve(ready.home, rid, "alice")  # alice again: nothing new to hand over
        assert code == 0 and again["status"] == "pending" and "Touch sim:alice" not in stderr
        assert kms(ready.home, "sim", "unplug", "alice").returncode == 0  # alice goes home with her token
        code, done, stderr = approve(ready.home, rid, "bob")
        assert code == 0, stderr
        assert done["status"] == "signed" and done["signed"]["raw"].startswith("0x02")
        assert "sim:alice" not in stderr  # nobody asked alice again
        assert touches(agent, rid)["held"] == 0  # her share was wiped once it signed
        with agent.unix() as client:
            shown = client.get(f"/v1/withdrawals/{rid}").json()
        assert shown["status"] == "signed"
    finally:
        assert agent.stop() == 0
    kms(ready.home, "sim", "plug", "alice")


def test_a_restart_needs_fresh_touches_and_the_status_says_so(ready: Ready) -> None:
    rid = ready.create(ETHER // 100)
    agent = start_agent(ready.home, tcp=False)
    try:
        assert approve(ready.home, rid, "alice")[0] == 0
        assert touches(agent, rid)["held"] == 1
    finally:
        assert agent.stop() == 0  # the agent stops: alice's share is gone with it
    agent = start_agent(ready.home, tcp=False)
    try:
        assert touches(agent, rid) == {"held": 0, "needed": 2, "waiting": False}
        code, after, _ = approve(ready.home, rid, "bob")
        assert code == 0 and after["status"] == "pending"  # approved by alice and bob...
        assert after["vault_touches"] == {"held": 1, "needed": 2, "waiting": True}  # ...waiting for a touch
        code, done, _ = approve(ready.home, rid, "alice")  # a fresh touch opens the vault
        assert code == 0 and done["status"] == "signed"
        assert len(ready.signature_rows(rid)) == 1
    finally:
        assert agent.stop() == 0


@pytest.mark.slow
def test_twenty_approvers_racing_through_the_agent_sign_once(ready: Ready, tmp_path: Path) -> None:
    agent = start_agent(ready.home, tcp=False)
    try:
        runner = CliRunner(ready.home, tmp_path / "procs")
        rid = ready.create(ETHER // 100)
        names = ("alice", "bob", "carol")
        results = runner.run_all([["approve", rid, "--json", "--operator", names[i % 3]] for i in range(20)])
        codes = [code for code, _, _ in results]
        assert set(codes) <= {0, 5}, [err for code, _, err in results if code not in (0, 5)]
        assert len(ready.signature_rows(rid)) == 1
        touched = sum(err.count("Touch sim:") for _, _, err in results)
        assert len(ready.service.audit.rows(kinds=["approval"], request_id=rid)) == touched
        assert touches(agent, rid)["held"] == 0
    finally:
        assert agent.stop() == 0


def test_a_veto_through_the_agent_wipes_held_shares(ready: Ready) -> None:
    agent = start_agent(ready.home, tcp=False)
    try:
        rid = ready.create(ETHER // 100)
        assert approve(ready.home, rid, "alice")[0] == 0
        proc = kms(ready.home, "reject", rid, "--operator", "carol", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["status"] == "rejected"
        assert touches(agent, rid)["held"] == 0
        code, _, stderr = approve(ready.home, rid, "bob")
        assert code == 5 and "rejected" in stderr
    finally:
        assert agent.stop() == 0
