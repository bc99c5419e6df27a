"""Many HTTP clients at once against the real server process: nothing lost, nothing doubled, no limit passed twice."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, AutoPrompts
from tests.service.agent_proc import AgentProcess, start_agent
from tests.service.test_withdrawals_api import tx_body
from tests.withdrawals.helpers import ETHER, Ready, ready_home


def withdrawal_rows(ready: Ready) -> list[str]:
    """Request ids of the ``request`` rows of withdrawals (not policy changes), in log order."""
    return [str(r.request_id) for r in ready.service.audit.rows(kinds=["request"]) if "payload_cbor" in r.payload]


@pytest.mark.slow
def test_two_hundred_parallel_submits(agent: AgentProcess, ready: Ready) -> None:
    local = threading.local()

    def submit(n: int) -> httpx.Response:
        if not hasattr(local, "client"):
            local.client = agent.tcp(timeout=120)
        client: httpx.Client = local.client
        return client.post("/v1/withdrawals", json=tx_body(ready, nonce=n, initiator="app:load"))

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(submit, range(200)))
    assert [r.status_code for r in responses] == [201] * 200, {r.status_code: r.text for r in responses}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 200
    assert sorted(withdrawal_rows(ready)) == sorted(ids)
    assert ready.service.audit.verify().ok


@pytest.mark.slow
def test_an_overloaded_agent_answers_429_not_a_timeout(ready: Ready) -> None:
    agent = start_agent(ready.home, "--max-inflight", "1", "--max-queue", "2")
    try:
        barrier = threading.Barrier(30)

        def submit(n: int) -> httpx.Response:
            with agent.tcp() as client:
                barrier.wait()
                return client.post("/v1/withdrawals", json=tx_body(ready, nonce=n))

        with ThreadPoolExecutor(30) as pool:
            responses = list(pool.map(submit, range(30)))
    finally:
        assert agent.stop() == 0
    codes = [r.status_code for r in responses]
    assert set(codes) <= {201, 429} and 429 in codes, codes
    assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 429)
    assert len(withdrawal_rows(ready)) == codes.count(201)


@pytest.mark.slow
def test_two_requests_racing_past_the_daily_limit_sign_at_most_once(home: Path, prompts: AutoPrompts) -> None:
    ready = ready_home(home, prompts, per_day=3 * ETHER // 2)  # room for one 1-ETH withdrawal a day
    agent = start_agent(ready.home)
    try:
        with agent.tcp() as client:
            ids = [
                client.post("/v1/withdrawals", json=tx_body(ready, value=ETHER, nonce=n)).json()["id"] for n in (0, 1)
            ]
            # `approve` hands its touches to a running agent that has the approval endpoints; until
            # `kms-agent serve` includes them, the one-shot CLI path (no agent answering) races instead.
            through_agent = "/v1/withdrawals/{request_id}/approvals" in client.get("/openapi.json").json()["paths"]
        assert [ready.service.request(i).status for i in ids] == ["pending", "pending"]
        if not through_agent:
            assert agent.stop() == 0
        env = {**os.environ, "KMS_AGENT_HOME": str(ready.home), "KMS_AGENT_SIM_TOUCH": "auto"}
        approvers = [
            subprocess.Popen(
                [sys.executable, "-m", "agent", "approve", rid, "--operator", "alice", "--operator", "bob", "--json"],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for rid in ids
        ]
        results = [(p.wait(120), p.stderr.read().decode() if p.stderr else "") for p in approvers]
        statuses = [ready.service.request(rid).status.value for rid in ids]
    finally:
        assert agent.stop() == 0
    assert len(ready.signature_rows()) <= 1, results
    assert statuses.count("signed") == len(ready.signature_rows()) == 1, (statuses, results)
    assert sorted(statuses) == ["denied", "signed"], results
    assert {code for code, _ in results} == {0, 5}
    assert "Traceback" not in "".join(err for _, err in results)


@pytest.mark.slow
def test_a_short_load_of_submits_and_polls(agent: AgentProcess, ready: Ready) -> None:
    """10 clients for 5 s, each submitting then polling what it submitted (scripts/bench-service runs 50 for 60 s)."""
    stop = time.monotonic() + 5
    created: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(n: int) -> None:
        with agent.tcp() as client:
            i = 0
            while time.monotonic() < stop:
                r = client.post("/v1/withdrawals", json=tx_body(ready, nonce=n * 10_000 + i))
                i += 1
                if r.status_code != 201:
                    errors.append(r.text)
                    continue
                rid = r.json()["id"]
                with lock:
                    created.append(rid)
                if client.get(f"/v1/withdrawals/{rid}").json()["id"] != rid:
                    errors.append(f"poll of {rid}")

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert created and sorted(withdrawal_rows(ready)) == sorted(created)
