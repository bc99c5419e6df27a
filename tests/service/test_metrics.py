"""Metrics from the durable state: real withdrawals, the real audit log, and a scrape in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import events
from agent.errors import PinInvalid, PolicyDenied, QuorumNotMet, TouchTimeout
from agent.service.metrics import render_metrics
from tests.conftest import REPO, AutoPrompts
from tests.withdrawals.helpers import ETHER, ready_home

STRANGER = "0x000000000000000000000000000000000000dEaD"

#: The names docs/monitoring.md lists (samples as exposed: counters carry _total, info metrics _info).
DOCUMENTED = {
    "kms_agent_requests",
    "kms_agent_requests_created_total",
    "kms_agent_decisions_total",
    "kms_agent_approvals_total",
    "kms_agent_rejections_total",
    "kms_agent_approvals_waiting",
    "kms_agent_approvals_waiting_oldest_seconds",
    "kms_agent_signatures_total",
    "kms_agent_errors_total",
    "kms_agent_token_events_total",
    "kms_agent_unlock_failures_total",
    "kms_agent_audit_alerts_total",
    "kms_agent_audit_rows_total",
    "kms_agent_audit_chain_length",
    "kms_agent_audit_head_seq",
    "kms_agent_audit_head_info",
    "kms_agent_alerts_total",
}


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def scrape_in_new_process(home: Path) -> bytes:
    code = "import sys, pathlib; from agent.service.metrics import render_metrics; " + (
        "sys.stdout.buffer.write(render_metrics(pathlib.Path(sys.argv[1]))[0])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(home)], check=True, capture_output=True, cwd=REPO, timeout=120
    ).stdout


def test_metrics_match_the_audit_log(home: Path, prompts: AutoPrompts) -> None:
    ready = ready_home(home, prompts)
    body, content_type = render_metrics(home)
    assert content_type.startswith("text/plain; version=0.0.4")
    before = samples(body)
    assert value(before, "kms_agent_signatures_total") == 0

    signed = ready.create(ETHER // 10, nonce=0)
    ready.service.approve(signed, finder=ready.finder, prompts=prompts, operators=["alice", "bob"])
    waiting = ready.create(ETHER // 10, nonce=1)
    with pytest.raises(PolicyDenied):
        ready.service.create(chain="ETH", signature_id=ready.sig_id, index=0, tx=ready.tx(ETHER // 10, 2, to=STRANGER))
    state = home / "state"
    events.record(state, "approve", PinInvalid("wrong PIN for sim:alice: 7 tries left", attempts_remaining=7))
    events.record(state, "approve", TouchTimeout("sim:bob was not touched in time"))
    events.record(state, "unlock", QuorumNotMet("only 1 of 2 operators touched"))

    body, _ = render_metrics(home)
    found = samples(body)
    text = body.decode()
    for name in DOCUMENTED:  # every documented metric is exposed, with or without samples yet
        assert f"# TYPE {name} " in text, name

    log = ready.service.audit
    assert value(found, "kms_agent_signatures_total") == len(log.rows(kinds=["signature"])) == 1
    assert value(found, "kms_agent_requests_created_total") == len(log.rows(kinds=["request"]))
    assert value(found, "kms_agent_requests_created_total") == value(before, "kms_agent_requests_created_total") + 3
    assert value(found, "kms_agent_approvals_total") == len(log.rows(kinds=["approval"]))
    assert value(found, "kms_agent_approvals_total") == value(before, "kms_agent_approvals_total") + 2
    assert value(found, "kms_agent_requests", status="signed") == 1
    assert value(found, "kms_agent_requests", status="pending") == 1
    assert value(found, "kms_agent_requests", status="denied") == 1
    assert value(found, "kms_agent_requests", status="rejected") == 0
    assert value(found, "kms_agent_decisions_total", stage="create", outcome="deny") == 1
    assert value(found, "kms_agent_approvals_waiting") == 1
    assert 0 <= value(found, "kms_agent_approvals_waiting_oldest_seconds") < 120
    head = log.head()
    assert head is not None
    assert value(found, "kms_agent_audit_chain_length") == log.last_seq() == head.seq
    assert value(found, "kms_agent_audit_head_seq") == head.seq
    assert value(found, "kms_agent_audit_head_info", seq=str(head.seq), hash=head.hash.hex()) == 1
    assert value(found, "kms_agent_audit_rows_total", kind="signature") == 1
    assert value(found, "kms_agent_token_events_total", event="pin_error") == 1
    assert value(found, "kms_agent_token_events_total", event="touch_timeout") == 1
    assert value(found, "kms_agent_unlock_failures_total") == 1
    assert value(found, "kms_agent_errors_total", error="PinInvalid") == 1
    assert waiting

    # A fresh process (a restarted server) derives the same numbers from the durable state.
    again = samples(scrape_in_new_process(home))
    for key in (
        ("kms_agent_signatures_total", ()),
        ("kms_agent_requests_created_total", ()),
        ("kms_agent_audit_chain_length", ()),
        ("kms_agent_unlock_failures_total", ()),
        ("kms_agent_requests", (("status", "pending"),)),
    ):
        assert again[key] == found[key]


def test_scrapes_are_incremental(home: Path, prompts: AutoPrompts) -> None:
    ready = ready_home(home, prompts)
    first = samples(render_metrics(home)[0])
    ready.create(ETHER // 10, nonce=0)
    second = samples(render_metrics(home)[0])
    assert value(second, "kms_agent_requests_created_total") == value(first, "kms_agent_requests_created_total") + 1
    assert value(second, "kms_agent_audit_chain_length") == ready.service.audit.last_seq()
    # Nothing new: the same numbers.
    assert samples(render_metrics(home)[0]) == second


def test_an_empty_home_scrapes(home: Path) -> None:
    found = samples(render_metrics(home)[0])
    assert value(found, "kms_agent_audit_chain_length") == 0
    assert value(found, "kms_agent_approvals_waiting") == 0
