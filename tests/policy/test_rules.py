"""The policy document's strict canonical shape, and policy changes as approval requests."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any

import pytest

from agent.approvals import Action, ApprovalRequest, evaluate_quorum
from agent.errors import PolicyFormatError
from agent.policy import (
    AssetLimits,
    Policy,
    Rule,
    RuleOverride,
    TimeWindow,
    UnknownDestination,
    policy_change_payload,
    policy_change_rule,
)
from tests.approvals.helpers import NOW, Team, oid

FULL = Policy(
    generation=5,
    default=Rule(
        approvals_required=2,
        assets={
            "BTC": AssetLimits(100, 200, None),
            "0xDAC17F958D2EE523A2206206994597C13D831EC7": AssetLimits(per_day=10**30),
        },
        allowlist=frozenset({"bc1qcold", "0xABCDEF0000000000000000000000000000000001"}),
        time_window=TimeWindow(frozenset({0, 1, 2, 3, 4}), 8, 18),
    ),
    chains={"ETH": RuleOverride.of(approvals_required=3, unknown_destination=UnknownDestination.DENY)},
    wallets={"w-1": RuleOverride.of(frozen=True, time_window=None)},
    admin_approvals=3,
)


def test_round_trip_through_dict_json_and_cbor() -> None:
    raw = FULL.to_dict()
    assert Policy.from_dict(raw) == FULL
    assert Policy.from_dict(json.loads(json.dumps(raw))) == FULL
    assert Policy.from_canonical_bytes(FULL.canonical_bytes()) == FULL
    assert raw["default"]["assets"]["0xdac17f958d2ee523a2206206994597c13d831ec7"]["per_day"] == str(10**30)
    assert raw["default"]["allowlist"] == ["0xabcdef0000000000000000000000000000000001", "bc1qcold"]
    assert raw["wallets"] == {"w-1": {"frozen": True, "time_window": None}}
    assert FULL.sha256() == hashlib.sha256(FULL.canonical_bytes()).digest()


def mutate(path: list[Any], value: Any, *, delete: bool = False) -> dict[str, Any]:
    raw = copy.deepcopy(FULL.to_dict())
    node = raw
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "delete"),
    [
        (["extra"], 1, False),
        (["default", "extra"], 1, False),
        (["chains", "ETH", "bogus"], 1, False),
        (["default", "approvals_required"], None, True),
        (["default", "approvals_required"], True, False),
        (["default", "approvals_required"], 0, False),
        (["default", "approvals_required"], "2", False),
        (["generation"], -1, False),
        (["generation"], 1.0, False),
        (["frozen"], 0, False),
        (["v"], 2, False),
        (["default", "assets", "BTC", "per_tx"], 100, False),
        (["default", "assets", "BTC", "per_tx"], "0100", False),
        (["default", "assets", "BTC", "per_tx"], "-1", False),
        (["default", "assets", "BTC", "extra"], None, False),
        (["default", "allowlist"], ["b", "a"], False),
        (["default", "allowlist"], ["a", "a"], False),
        (["default", "allowlist"], ["0xABC"], False),
        (["default", "unknown_destination"], "maybe", False),
        (["default", "time_window", "start_hour"], 24, False),
        (["default", "time_window", "weekdays"], [7], False),
        (["default", "time_window", "weekdays"], [], False),
        (["default", "time_window", "end_hour"], 8, False),
        (["default", "approval_ttl"], 5, False),
        (["wallets"], [], False),
    ],
)
def test_strict_shape(path: list[Any], value: Any, delete: bool) -> None:
    with pytest.raises(PolicyFormatError):
        Policy.from_dict(mutate(path, value, delete=delete))


def test_non_canonical_cbor_is_refused() -> None:
    import cbor2

    data = cbor2.dumps(FULL.to_dict(), canonical=False)
    if data != FULL.canonical_bytes():
        with pytest.raises(PolicyFormatError):
            Policy.from_canonical_bytes(data)
    with pytest.raises(PolicyFormatError):
        Policy.from_canonical_bytes(FULL.canonical_bytes() + b"\x00")


def test_rule_override_checks_names_and_values() -> None:
    with pytest.raises(PolicyFormatError):
        RuleOverride.of(approvals=3)
    with pytest.raises(PolicyFormatError):
        RuleOverride.of(approvals_required=0)


def test_policy_change_is_an_approval_request() -> None:
    team = Team.build()
    new = dataclasses.replace(FULL, generation=6, frozen=True)
    p = policy_change_payload(vault_id=bytes(16), request_id=oid(0x77), current=FULL, new=new, expires_at=NOW + 3600)
    assert p.action is Action.POLICY_CHANGE
    assert p.unsigned_tx_sha256 == hashlib.sha256(new.canonical_bytes()).digest()
    assert p.policy_generation == 5 and p.outputs == ()
    rule = policy_change_rule(FULL)
    assert rule.approvals_required == 3 and not rule.initiator_may_approve
    approvals = [team.approve(p, n, s) for n, s in ((1, 0x11), (2, 0x21), (4, 0x41))]
    assert evaluate_quorum(ApprovalRequest(p, initiator=oid(3)), approvals, [], rule, team.roster, NOW, {}).approved
    assert not evaluate_quorum(
        ApprovalRequest(p, initiator=oid(3)), approvals[:2], [], rule, team.roster, NOW, {}
    ).approved
    with pytest.raises(PolicyFormatError):
        policy_change_payload(vault_id=bytes(16), request_id=oid(0x77), current=FULL, new=FULL, expires_at=NOW)


def test_withdrawal_payload_carries_the_decoded_outputs() -> None:
    from agent.approvals import PayloadOutput, approval_digest
    from agent.policy import RequestSummary, SummaryOutput, withdrawal_payload

    summary = RequestSummary(
        "BTC",
        "testnet",
        "w-1",
        (SummaryOutput("tb1qdest", 1000, "BTC"), SummaryOutput("tb1qchange", 5000, "BTC", is_change=True)),
        141,
        "BTC",
    )
    tx_hash = hashlib.sha256(b"psbt bytes").digest()
    p = withdrawal_payload(
        summary,
        vault_id=bytes(16),
        request_id=oid(5),
        derivation_index=0,
        unsigned_tx_sha256=tx_hash,
        nonce=None,
        expires_at=NOW + 600,
        policy_generation=5,
    )
    assert p.outputs == (PayloadOutput("tb1qdest", 1000, "BTC"), PayloadOutput("tb1qchange", 5000, "BTC"))
    assert p.fee == 141 and p.unsigned_tx_sha256 == tx_hash and p.action is Action.WITHDRAWAL
    assert len(approval_digest(p)) == 32
