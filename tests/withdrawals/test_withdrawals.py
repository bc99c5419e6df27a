"""Withdrawals through the real stack: chain decode, policy, touch approvals on simulated tokens, signing, audit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from eth_account import Account

from agent.audit import AuditLog
from agent.chains import get_chain
from agent.errors import ApprovalError, PolicyDenied, QuorumNotMet, StateError
from agent.policy import AssetLimits, Policy, Rule, UnknownDestination
from agent.tokens.discovery import find_token
from agent.withdrawals.service import Withdrawals
from tests.conftest import AutoPrompts
from tests.vault.helpers import make_vault, unlock

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
COLD = "0x00000000000000000000000000000000000c01d0"
ELSEWHERE = "0x000000000000000000000000000000000000bad0"
SEPOLIA = 11155111


@pytest.fixture
def env(home: Path, prompts: AutoPrompts):  # type: ignore[no-untyped-def]
    paths, _ = make_vault(home, prompts)
    eth = get_chain("ETH")
    with unlock(paths, prompts, operators=["alice", "bob"]) as v:
        entry = v.add_wallet(wallet_type="MNEMONIC", chain="ETH", testnet=True, secret=bytearray(MNEMONIC.encode()),
                             xpub=eth.xpub_from_mnemonic(MNEMONIC, testnet=True))
        v.save()
    service = Withdrawals(home)
    finder = lambda slot: find_token(slot, home)  # noqa: E731
    policy = Policy(generation=2, default=Rule(approvals_required=2, allowlist=(eth.normalize_address(COLD, testnet=True),),
                                               assets={"ETH": AssetLimits(per_tx=10**18, per_hour=None, per_day=3 * 10**18)},
                                               unknown_destination=UnknownDestination.DENY), admin_approvals=2)
    service.change_policy(policy, finder=finder, prompts=prompts, operators=["alice", "bob"])
    return service, finder, entry["signatureId"], eth


def _tx(eth, to: str, value: int, nonce: int = 0) -> str:  # type: ignore[no-untyped-def]
    return eth.build_transfer(to=to, value=value, nonce=nonce, chain_id=SEPOLIA, max_fee_per_gas=30 * 10**9)


def test_two_of_three_approve_and_sign_an_eth_withdrawal(env, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    req = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**17), initiator="app:exchange")
    assert req["status"] == "pending"
    one = service.approve(req["id"], finder=finder, prompts=prompts, operators=["alice"])
    assert one["status"] == "pending"  # one approval is not enough
    done = service.approve(req["id"], finder=finder, prompts=prompts, operators=["bob"])
    assert done["status"] == "signed"
    sender = Account.recover_transaction(done["signed"]["raw"])
    assert sender == eth.address_from_xpub(eth.xpub_from_mnemonic(MNEMONIC, testnet=True), 0, testnet=True)
    kinds = [r.kind for r in service.audit.rows(request_id=req["id"])]
    assert kinds[:2] == ["request", "decision"] and kinds.count("approval") == 2 and kinds[-1] == "signature"
    assert service.audit.verify().ok
    with pytest.raises(ApprovalError, match="signed"):
        service.approve(req["id"], finder=finder, prompts=prompts)


def test_policy_denies_unknown_destination_and_over_limit(env) -> None:  # type: ignore[no-untyped-def]
    service, _, sig_id, eth = env
    with pytest.raises(PolicyDenied, match="denied by policy"):
        service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, ELSEWHERE, 10**15))
    with pytest.raises(PolicyDenied):
        service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 2 * 10**18))
    assert [r["status"] for r in service.queue.list()] == ["denied", "denied"]


def test_initiator_cannot_approve_own_request(env, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    req = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**16), initiator="alice")
    rec = service.approve(req["id"], finder=finder, prompts=prompts, operators=["alice", "bob"])
    assert rec["status"] == "pending"
    assert prompts.touched[-1] == "sim:bob"  # alice was never asked
    rec = service.approve(req["id"], finder=finder, prompts=prompts, operators=["carol"])
    assert rec["status"] == "signed"


def test_a_veto_stops_the_request(env, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    req = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**16))
    service.reject(req["id"], operator="carol", reason="not expected today")
    with pytest.raises(ApprovalError, match="rejected"):
        service.approve(req["id"], finder=finder, prompts=prompts)


def test_policy_change_without_quorum_is_refused(env, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    service, finder, _, _ = env
    current = service._vault().policy()
    looser = dataclasses.replace(current, generation=current.generation + 1, default=dataclasses.replace(current.default, unknown_destination=UnknownDestination.ALLOW))
    with pytest.raises(QuorumNotMet):
        service.change_policy(looser, finder=finder, prompts=prompts, operators=["alice"])
    assert service._vault().policy().generation == current.generation


def test_nothing_is_signed_when_the_audit_log_cannot_be_written(env, prompts: AutoPrompts, home: Path) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    req = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**16))
    service.approve(req["id"], finder=finder, prompts=prompts, operators=["alice"])
    db = home / "state" / "audit.sqlite"
    import subprocess

    subprocess.run(["chattr", "+i", str(db)], check=True)
    try:
        with pytest.raises(StateError) as exc:
            service.approve(req["id"], finder=finder, prompts=prompts, operators=["bob"])
        assert "audit" in str(exc.value).lower()
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    rec = service.queue.get(req["id"])
    assert rec["status"] == "pending" and rec["signed"] is None
    assert AuditLog(home / "state").verify().ok
