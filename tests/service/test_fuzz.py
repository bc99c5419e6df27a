"""A schema-driven fuzz of the live API (schemathesis, from the server's own /openapi.json) over loopback TCP.

Bounded: a fixed seed (derandomized), at most ``KMS_FUZZ_EXAMPLES`` examples per operation and mode
(valid data, then data that breaks the schema), no deadline per example. No answer may be a 5xx,
every error must have the JSON error shape, and nothing may be left behind but audit rows.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.service.agent_proc import AgentProcess
from tests.withdrawals.helpers import Ready

EXAMPLES = int(os.environ.get("KMS_FUZZ_EXAMPLES", "30"))


@pytest.mark.slow
def test_fuzzed_requests_never_get_a_5xx_and_leave_only_audit_rows(agent: AgentProcess, ready: Ready) -> None:
    headers = {"Authorization": f"Bearer {agent.token}"}
    schema = schemathesis.openapi.from_url(f"{agent.base_url}/openapi.json", headers=headers)
    wallet_before = (ready.home / "wallet.dat").read_bytes()
    state_before = {p.name for p in (ready.home / "state").iterdir()}
    seen: dict[str, set[int]] = {}
    session = requests.Session()

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the served schema is valid
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                try:
                    response = case.call(base_url=agent.base_url, headers=headers, session=session, timeout=60)
                except (requests.exceptions.InvalidHeader, UnicodeEncodeError, ValueError):
                    return  # a request the HTTP client itself cannot send
                seen.setdefault(case.operation.label, set()).add(response.status_code)
                assert response.status_code < 500, (case.as_curl_command(), response.text)
                if response.status_code >= 400:
                    error = response.json()["error"]
                    assert error["code"] and error["message"], response.text

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # an operation with nothing to break (GET /health)

    assert len(seen) >= 7, seen
    assert "Traceback" not in agent.stderr, agent.stderr
    # Nothing left behind but audit rows (and the indexes the service keeps by design).
    assert (ready.home / "wallet.dat").read_bytes() == wallet_before
    allowed = {"queue.sqlite-wal", "queue.sqlite-shm", "audit.sqlite-wal", "audit.sqlite-shm"}
    allowed |= {"idempotency.sqlite", "idempotency.sqlite-wal", "idempotency.sqlite-shm"}
    assert {p.name for p in (ready.home / "state").iterdir()} - state_before <= allowed
    kinds = {r.kind for r in ready.service.audit.rows()}
    assert kinds <= {"request", "decision", "approval", "policy_change", "alert"}, kinds
    assert ready.service.audit.verify().ok
