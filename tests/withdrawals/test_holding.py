"""Shares held between approvals (the running agent's ShareHolder), through the real service and tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.errors import ApprovalError
from agent.policy import Policy, policy_of
from agent.vault.vault import Collected
from agent.withdrawals.holding import ShareHolder
from tests.conftest import AutoPrompts
from tests.withdrawals.helpers import ETHER, Ready, ready_home


@pytest.fixture
def ready(home: Path, prompts: AutoPrompts) -> Ready:
    return ready_home(home, prompts)


def _approve_via(ready: Ready, holder: ShareHolder, rid: str, operator: str) -> tuple[Any, bool]:
    """What `kms-agent approve` does with an agent running: touch here, decide in the agent."""
    outcome: dict[str, Any] = {}

    def submit(request_id: str, collected: Collected) -> Any:
        outcome["state"], outcome["waiting"] = ready.service.decide_held(request_id, collected, holder)
        return outcome["state"]

    ready.service.approve(rid, finder=ready.finder, prompts=ready.prompts, operators=[operator], submit=submit)
    return outcome["state"], outcome["waiting"]


def test_approvals_hours_apart_sign_with_only_the_last_token_present(ready: Ready) -> None:
    holder = ShareHolder()
    rid = ready.create(ETHER // 100)
    state, waiting = _approve_via(ready, holder, rid, "alice")
    assert state.status == "pending" and not waiting and len(holder.held_by(rid)) == 1
    touched = len(ready.prompts.touched)
    state, _ = _approve_via(ready, holder, rid, "bob")  # alice is not asked again
    assert state.status == "signed" and ready.prompts.touched[touched:] == ["sim:bob"]
    assert holder.held_by(rid) == [] and holder.requests() == []  # wiped once signed


def test_after_a_restart_recorded_approvals_count_but_the_vault_needs_fresh_touches(ready: Ready) -> None:
    rid = ready.create(ETHER // 100)
    _approve_via(ready, ShareHolder(), rid, "alice")  # that agent stopped: its shares are gone
    holder = ShareHolder()
    state, waiting = _approve_via(ready, holder, rid, "bob")
    assert state.status == "pending" and waiting  # approved by alice and bob, but one share is held
    assert {a.operator_id for a in state.approvals} == {
        ready.service.vault().header.operators[0].operator_id,
        ready.service.vault().header.operators[1].operator_id,
    }
    state, _ = _approve_via(ready, holder, rid, "alice")  # a fresh touch opens it
    assert state.status == "signed" and len(ready.signature_rows(rid)) == 1


def test_a_veto_or_expiry_wipes_held_shares(ready: Ready) -> None:
    holder = ShareHolder()
    rid = ready.create(ETHER // 100)
    _approve_via(ready, holder, rid, "alice")
    ready.service.reject(rid, operator="carol")
    with pytest.raises(ApprovalError, match="rejected"):
        _approve_via(ready, holder, rid, "bob")
    assert ready.service.forget_dead(holder) == 1  # the agent's sweep: the request is dead
    assert holder.requests() == []
    clock = [1_000.0]
    expiring = ShareHolder(clock=lambda: clock[0])
    expiring.keep("r", b"\x01" * 16, bytearray(b"share words"), until=1_001)
    clock[0] = 1_001
    assert expiring.copies("r") == {} and expiring.sweep() == 1 and expiring.requests() == []


def test_the_policy_can_turn_holding_off(ready: Ready) -> None:
    current = policy_of(ready.service.vault().header)
    doc = {**current.to_dict(), "generation": current.generation + 1, "hold_shares": False}
    ready.service.change_policy(
        Policy.from_dict(doc), finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"]
    )
    holder = ShareHolder()
    rid = ready.create(ETHER // 100)
    _approve_via(ready, holder, rid, "alice")
    assert holder.held_by(rid) == []  # nothing held: a quorum must touch at once
    state, waiting = _approve_via(ready, holder, rid, "bob")
    assert state.status == "pending" and waiting
