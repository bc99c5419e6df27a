"""Withdrawals through the real stack: chain decode, policy, touch approvals on simulated tokens, signing, audit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from eth_account import Account

from agent.audit import AuditLog
from agent.chains import get_chain
from agent.errors import ApprovalError, ApprovalInvalid, PolicyDenied, QuorumNotMet, StateError, UsageError
from agent.policy import AssetLimits, Policy, Rule, UnknownDestination, policy_of
from agent.tokens.discovery import find_token
from agent.withdrawals.ledger import RequestState
from agent.withdrawals.service import Withdrawals
from tests.conftest import AutoPrompts
from tests.vault.helpers import make_vault, unlock
from tests.withdrawals.helpers import add_eth_wallet

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
COLD = "0x00000000000000000000000000000000000c01d0"
ELSEWHERE = "0x000000000000000000000000000000000000bad0"
SEPOLIA = 11155111


@pytest.fixture
def env(home: Path, prompts: AutoPrompts):  # type: ignore[no-untyped-def]
    make_vault(home, prompts)
    eth = get_chain("ETH")
    entry = add_eth_wallet(home, prompts)
    service = Withdrawals(home)
    finder = lambda slot: find_token(slot, home)  # noqa: E731
    policy = Policy(
        generation=2,
        default=Rule(
            approvals_required=2,
            allowlist=frozenset([eth.normalize_address(COLD, testnet=True)]),
            assets={"ETH": AssetLimits(per_tx=10**18, per_hour=None, per_day=3 * 10**18)},
            unknown_destination=UnknownDestination.DENY,
        ),
        admin_approvals=2,
    )
    service.change_policy(policy, finder=finder, prompts=prompts, operators=["alice", "bob"])
    return service, finder, entry.signature_id, eth


def _raw(state: RequestState) -> str:
    assert state.signed is not None, state.status
    return state.signed.raw


def _tx(eth, to: str, value: int, nonce: int = 0) -> str:  # type: ignore[no-untyped-def]
    return eth.build_transfer(to=to, value=value, nonce=nonce, chain_id=SEPOLIA, max_fee_per_gas=30 * 10**9)


def test_two_of_three_approve_and_sign_an_eth_withdrawal(env, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    req = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**17), initiator="app:exchange")
    assert req.status == "pending"
    one = service.approve(req.request_id, finder=finder, prompts=prompts, operators=["alice"])
    assert one.status == "pending"  # one approval is not enough
    # bob's touch completes the quorum; alice touches again only to open the vault (one-shot CLI mode)
    done = service.approve(req.request_id, finder=finder, prompts=prompts, operators=["bob", "alice"])
    assert done.status == "signed"
    sender = Account.recover_transaction(_raw(done))
    assert sender == eth.address_from_xpub(eth.xpub_from_mnemonic(MNEMONIC, testnet=True), 0, testnet=True)
    kinds = [r.kind for r in service.audit.rows(request_id=req.request_id)]
    assert kinds[:2] == ["request", "decision"] and kinds[-1] == "signature"
    # alice's second touch (to open the vault) is recorded as evidence too; she still counts once
    assert {r.actor for r in service.audit.rows(kinds=["approval"], request_id=req.request_id)} == {"alice", "bob"}
    assert service.audit.verify().ok
    with pytest.raises(ApprovalError, match="signed"):
        service.approve(req.request_id, finder=finder, prompts=prompts)


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
    rec = service.approve(req.request_id, finder=finder, prompts=prompts, operators=["alice", "bob"])
    assert rec.status == "pending"
    assert prompts.touched[-1] == "sim:bob"  # alice was never asked
    rec = service.approve(req.request_id, finder=finder, prompts=prompts, operators=["carol", "bob"])
    assert rec.status == "signed"


def test_a_veto_stops_the_request(env, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    req = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**16))
    service.reject(req.request_id, operator="carol", reason="not expected today")
    with pytest.raises(ApprovalError, match="rejected"):
        service.approve(req.request_id, finder=finder, prompts=prompts)


def test_policy_change_without_quorum_is_refused(env, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    service, finder, _, _ = env
    current = policy_of(service.vault().header)
    looser = dataclasses.replace(
        current,
        generation=current.generation + 1,
        default=dataclasses.replace(current.default, unknown_destination=UnknownDestination.ALLOW),
    )
    with pytest.raises(QuorumNotMet):
        service.change_policy(looser, finder=finder, prompts=prompts, operators=["alice"])
    assert policy_of(service.vault().header).generation == current.generation


def test_nothing_is_signed_when_the_audit_log_cannot_be_written(env, prompts: AutoPrompts, home: Path) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    req = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**16))
    service.approve(req.request_id, finder=finder, prompts=prompts, operators=["alice"])
    db = home / "state" / "audit.sqlite"
    import subprocess

    subprocess.run(["chattr", "+i", str(db)], check=True)
    try:
        with pytest.raises(StateError) as exc:
            service.approve(req.request_id, finder=finder, prompts=prompts, operators=["bob"])
        assert "audit" in str(exc.value).lower()
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    queued = service.queue.get(req.request_id)
    assert queued is not None and queued["status"] == "pending" and queued["signed"] is None
    assert AuditLog(home / "state").verify().ok


def test_btc_psbt_withdrawal_is_signed_and_valid_for_bitcoin_core(home: Path, prompts: AutoPrompts) -> None:
    from agent.chains.utxo import AddressKind
    from tests.chains.utxo_helpers import kernel_verify, make_coins

    btc = get_chain("BTC")
    paths, _ = make_vault(home, prompts)
    with unlock(paths, prompts, operators=["alice", "bob"]) as v:
        entry = v.add_wallet(
            wallet_type="MNEMONIC",
            chain="BTC",
            testnet=True,
            secret=bytearray(MNEMONIC.encode()),
            xpub=btc.xpub_from_mnemonic(MNEMONIC, testnet=True),
        )
        v.save()
    service, finder = Withdrawals(home), (lambda slot: find_token(slot, home))
    cold = "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"
    assert entry.xpub is not None
    change = btc.address_from_xpub(entry.xpub, 1, testnet=True)
    policy = Policy(
        generation=2,
        default=Rule(
            approvals_required=2,
            allowlist=frozenset([cold]),
            assets={"BTC": AssetLimits(per_tx=10**8, per_hour=None, per_day=None)},
            unknown_destination=UnknownDestination.DENY,
        ),
        admin_approvals=2,
    )
    service.change_policy(policy, finder=finder, prompts=prompts, operators=["bob", "carol"])
    coins = make_coins(btc, [(0, AddressKind.P2WPKH, 50_000)], testnet=True)  # type: ignore[arg-type]
    psbt = btc.build_psbt([c.utxo for c in coins], [(cold, 30_000), (change, 19_000)], testnet=True)  # type: ignore[attr-defined]
    req = service.create(chain="BTC", signature_id=entry.signature_id, index=0, tx=psbt, initiator="app:exchange")
    assert [o["isChange"] for o in req.summary["outputs"]] == [False, True]
    assert req.summary["fee"] == "1000"
    rec = service.approve(req.request_id, finder=finder, prompts=prompts, operators=["alice", "carol"])
    assert rec.status == "signed"
    assert kernel_verify(bytes.fromhex(_raw(rec)), [(coins[0].spk, 50_000)]) == [True]


def test_an_edited_queue_steers_nothing_and_is_reported(env, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    req = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**16))
    rec = service.queue.get(req.request_id)
    assert rec is not None
    rec["tx"] = _tx(eth, ELSEWHERE, 10**16).removeprefix("0x")  # an attacker swaps the bytes after policy
    rec["signature_id"] = "00000000-0000-4000-8000-000000000000"  # ...and the wallet they come from
    service.queue.put(rec)
    done = service.approve(req.request_id, finder=finder, prompts=prompts, operators=["alice", "bob"])
    assert done.status == "signed"
    assert Account.recover_transaction(_raw(done))  # a real signature...
    from eth_account.typed_transactions import TypedTransaction
    from hexbytes import HexBytes

    signed = TypedTransaction.from_bytes(HexBytes(_raw(done)))
    assert "0x" + bytes(signed.as_dict()["to"]).hex() == COLD  # ...of the bytes the audit log holds, not the queue's
    alerts = [r.payload["rule"] for r in service.audit.rows(kinds=["alert"], request_id=req.request_id)]
    assert alerts == ["queue-tampered"]


def test_expired_request_cannot_be_approved(env, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    req = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**16))
    later = Withdrawals(service.home, clock=lambda: req.created_at + 7201)
    touched = len(prompts.touched)
    with pytest.raises(ApprovalError, match="expired"):
        later.approve(req.request_id, finder=finder, prompts=prompts, operators=["alice", "bob"])
    assert later.queue.get(req.request_id)["status"] == "expired"
    assert len(prompts.touched) == touched  # nobody was asked to touch for a dead request


def test_cloned_token_is_refused_and_its_operator_suspended(env, prompts: AutoPrompts, home: Path) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    snapshot = (home / "sim" / "alice.fido2.json").read_bytes()  # a clone made today...
    first = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**16, nonce=0))
    service.approve(first.request_id, finder=finder, prompts=prompts, operators=["alice", "bob"])
    (home / "sim" / "alice.fido2.json").write_bytes(snapshot)  # ...used later: its signCount is behind
    second = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 10**16, nonce=1))
    with pytest.raises(ApprovalInvalid, match="signCount"):
        service.approve(second.request_id, finder=finder, prompts=prompts, operators=["alice"])
    assert service.request(second.request_id).approvals == ()
    assert service.ledger.suspended() == {service.vault().header.operators[0].operator_id}
    alerts = [r for r in service.audit.rows(kinds=["alert"])]
    assert alerts and "sign" in alerts[0].payload_text.lower()


def test_daily_velocity_counts_signed_withdrawals(env, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    service, finder, sig_id, eth = env
    for nonce in range(3):
        req = service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 9 * 10**17, nonce=nonce))
        assert (
            service.approve(req.request_id, finder=finder, prompts=prompts, operators=["alice", "bob"]).status
            == "signed"
        )
    with pytest.raises(PolicyDenied, match="velocity-day"):
        service.create(chain="ETH", signature_id=sig_id, index=0, tx=_tx(eth, COLD, 9 * 10**17, nonce=3))


def test_simulated_vault_refuses_mainnet_unless_told(
    home: Path, prompts: AutoPrompts, monkeypatch: pytest.MonkeyPatch
) -> None:
    eth = get_chain("ETH")
    paths, _ = make_vault(home, prompts)
    with unlock(paths, prompts, operators=["alice", "bob"]) as v:
        sig = v.add_wallet(
            wallet_type="MNEMONIC",
            chain="ETH",
            testnet=False,
            secret=bytearray(MNEMONIC.encode()),
            xpub=eth.xpub_from_mnemonic(MNEMONIC, testnet=False),
        ).signature_id
        v.save()
    service = Withdrawals(home)
    tx = eth.build_transfer(to=COLD, value=1, nonce=0, chain_id=1, max_fee_per_gas=10**10)
    with pytest.raises(UsageError, match="SIMULATED tokens: refusing a mainnet withdrawal"):
        service.create(chain="ETH", signature_id=sig, index=0, tx=tx)
    assert service.queue.list() == [] and service.audit.rows() == []
    monkeypatch.setenv("KMS_AGENT_ALLOW_SIMULATED_MAINNET", "1")
    with pytest.raises(PolicyDenied):  # now it reaches policy, whose fresh default lets nothing leave
        service.create(chain="ETH", signature_id=sig, index=0, tx=tx)
