"""Signed requests to a real EVM node (anvil): broadcast, confirmations, failures, all in the audit log.

Each test uses its own address index of the vault's ETH wallet, so its nonces are its own; the
module shares one vault (tests/broadcast/conftest.py) and one anvil.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from agent.broadcast.broadcaster import RetryPolicy, broadcast_request
from agent.broadcast.watcher import DROP_AFTER, watch_once
from agent.service.watch import _row_alerts
from tests.broadcast.helpers import GWEI, World
from tests.withdrawals.helpers import COLD, ETHER


@contextmanager
def no_mining(world: World) -> Iterator[None]:
    world.node.rpc("evm_setAutomine", False)
    try:
        yield
    finally:
        world.node.rpc("evm_setAutomine", True)


def test_eth_transfer_is_accepted_and_confirmed_through_the_cli(world: World) -> None:
    world.fund(1)
    before = world.balance(COLD)
    state = world.transfer(1, ETHER // 10)
    assert state.signed is not None
    rid, txid = state.request_id, state.signed.txid
    set_out = world.cli_json("node", "set", "ETH", "--testnet", "--kind", "evm-rpc", "--url", world.node.url,
                             "--confirmations", "3")  # fmt: skip
    assert set_out["confirmations"] == 3 and set_out["kind"] == "evm-rpc"

    out = world.cli_json("broadcast", rid)
    assert (out["outcome"], out["txid"], out["ok"]) == ("accepted", txid, True)
    assert world.node.rpc("eth_getTransactionReceipt", txid)["status"] == "0x1"  # anvil mines at once

    # Broadcast again before the watcher saw it: a new attempt, the same bytes, the same txid; it moves once.
    again = world.cli_json("broadcast", rid)
    assert again["txid"] == txid and again["ok"] and again["onchain"]["attempts"] == 2
    assert world.balance(COLD) == before + ETHER // 10

    # The node refused the bytes it had already mined ("nonce too low"): asked about the txid, it
    # says mined, so that is recorded (pending at depth 1 of 3), not a failure.
    assert (again["outcome"], again["onchain"]["state"], again["onchain"]["depth"]) == ("rejected", "pending", 1)
    assert world.cli_json("watch", "--once")["events"] == []  # nothing changed since
    world.node.rpc("anvil_mine", "0x2")
    second = world.cli_json("watch", "--once")["events"]
    assert [(e["request_id"], e["event"], e["depth"]) for e in second] == [(rid, "confirmed", 3)]
    assert world.cli_json("watch", "--once")["events"] == []  # final: not asked again

    shown = world.cli_json("request", "show", rid)
    assert shown["status"] == "signed"  # the approvals' status is unchanged; the chain's is beside it
    assert (shown["onchain"]["state"], shown["onchain"]["depth"], shown["onchain"]["txid"]) == ("confirmed", 3, txid)
    rows = world.cli_json("audit", "show", "--request", rid)["rows"]
    kinds = [r["kind"] for r in rows]
    assert kinds[-4:] == ["broadcast", "broadcast", "confirmation", "confirmation"]
    sent = [r["payload"] for r in rows if r["kind"] == "broadcast"]
    assert [b["outcome"] for b in sent] == ["accepted", "rejected"] and all(b["txid"] == txid for b in sent)
    assert txid in sent[0]["answer"]  # the node's answer, verbatim

    # The service's status endpoint shows the same view.
    import asyncio

    import httpx

    from agent.service.app import create_app

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(world.home, require_token="t0ken"))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as api:
            return await api.get(f"/v1/withdrawals/{rid}", headers={"Authorization": "Bearer t0ken"})

    got = asyncio.run(ask())
    assert got.status_code == 200, got.text
    assert (got.json()["onchain"]["state"], got.json()["onchain"]["depth"]) == ("confirmed", 3)

    # Confirmed: not sent again at all.
    skipped = world.cli_json("broadcast", rid)
    assert skipped["skipped"].startswith("already confirmed") and skipped["attempts"] == 0
    assert len(world.rows(rid, "broadcast")) == 2


def test_erc20_transfer_is_confirmed_and_an_overdraft_fails_reverted(world: World) -> None:
    holder = world.fund(2)
    world.give_tokens(2, 5_000)
    world.set_node()
    state = world.token_transfer(2, 1_234)
    assert state.summary["outputs"][0]["address"] is not None
    result = broadcast_request(world.home, state.request_id)
    assert result.ok and result.outcome is not None and result.outcome.value == "accepted"
    (event,) = [e for e in watch_once(world.home) if e.request_id == state.request_id]
    assert (event.event, event.depth) == ("confirmed", 1)
    assert world.token_balance(COLD) >= 1_234 and world.token_balance(holder) == 5_000 - 1_234

    # More than the balance, with an explicit gas limit so the node takes it: mined, reverted.
    over = world.token_transfer(2, 10**6, gas=100_000)
    assert broadcast_request(world.home, over.request_id).ok
    (event,) = [e for e in watch_once(world.home) if e.request_id == over.request_id]
    assert (event.event, event.reason) == ("failed", "reverted")
    onchain = world.ready.service.request(over.request_id).onchain
    assert onchain is not None and onchain.phase.value == "failed" and onchain.block_hash is not None
    assert world.token_balance(holder) == 5_000 - 1_234
    skipped = broadcast_request(world.home, over.request_id)
    assert skipped.skipped is not None and "failed" in skipped.skipped and skipped.attempts == 0


def test_a_node_that_is_down_is_retried_with_backoff_then_fails_clearly(world: World) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world.fund(3)
    state = world.transfer(3, ETHER // 10)
    world.set_node(f"http://127.0.0.1:{port}")
    try:
        slept: list[float] = []
        retry = RetryPolicy(attempts=4, base=0.01, cap=0.03, jitter=0.0)
        result = broadcast_request(world.home, state.request_id, retry=retry, sleep=slept.append)
        assert not result.ok and result.outcome is not None and result.outcome.value == "unreachable"
        assert slept == [0.01, 0.02, 0.03]  # doubling, capped
        rows = world.rows(state.request_id, "broadcast")
        assert [(r["attempt"], r["outcome"], r["http_status"]) for r in rows] == [
            (n, "unreachable", None) for n in (1, 2, 3, 4)
        ]
        assert "ConnectError" in rows[0]["answer"]

        seq = world.ready.service.audit.last_seq()
        proc = world.cli("broadcast", state.request_id, "--attempts", "2")
        assert proc.returncode == 8, proc.stderr
        assert "kms-agent: error: request" in proc.stderr and "not accepted" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert world.ready.service.audit.last_seq() == seq + 2  # both attempts recorded
        shown = world.cli_json("request", "show", state.request_id)["onchain"]
        assert (shown["state"], shown["attempts"], shown["accepted"]) == ("unreachable", 6, False)
        assert "unreachable" in shown["reason"]
    finally:
        world.set_node()
    # The node is back: the same bytes go through.
    assert broadcast_request(world.home, state.request_id).ok


def test_nonce_too_low_is_recorded_as_rejected_with_the_nodes_reason(world: World) -> None:
    world.fund(4)
    world.set_node()
    nonce = world.nonce(4)
    first = world.transfer(4, ETHER // 10, nonce=nonce)
    second = world.transfer(4, ETHER // 5, nonce=nonce)  # other bytes, the same nonce
    assert first.signed and second.signed and first.signed.txid != second.signed.txid
    assert broadcast_request(world.home, first.request_id).ok

    proc = world.cli("broadcast", second.request_id, "--json")
    assert proc.returncode == 8 and "nonce too low" in proc.stderr
    confirmations = world.rows(second.request_id, "confirmation")
    assert [(c["state"], c["reason"]) for c in confirmations] == [("failed", "nonce too low")]
    (attempt,) = world.rows(second.request_id, "broadcast")
    assert attempt["outcome"] == "rejected" and "nonce too low" in attempt["answer"]
    shown = world.cli_json("request", "show", second.request_id)["onchain"]
    assert (shown["state"], shown["reason"], shown["accepted"]) == ("failed", "nonce too low", False)
    # Not followed by the watcher, and --all leaves a rejected request to the operator.
    assert all(e.request_id != second.request_id for e in watch_once(world.home))
    assert world.cli_json("broadcast", "--all")["results"] == []


def test_replaced_dropped_and_stuck_while_the_node_does_not_mine(world: World) -> None:
    world.fund(5)
    world.fund(6)
    world.set_node(stuck_after=60)
    nonce = world.nonce(5)
    slow = world.transfer(5, ETHER // 10, nonce=nonce, fee=30 * GWEI)
    fast = world.transfer(5, ETHER // 10 + 1, nonce=nonce, fee=90 * GWEI)
    gone = world.transfer(6, ETHER // 10)
    assert slow.signed and fast.signed and gone.signed
    with no_mining(world):
        assert broadcast_request(world.home, slow.request_id).ok
        assert broadcast_request(world.home, gone.request_id).ok
        now = int(time.time())
        events = {e.request_id: e for e in watch_once(world.home, now=now)}
        assert (events[slow.request_id].event, events[slow.request_id].depth) == ("pending", 0)

        # Not confirmed stuck_after seconds later: one tx-stuck alert row per transaction, once.
        later = {e.request_id: e for e in watch_once(world.home, now=now + 61) if e.event == "stuck"}
        assert set(later) >= {slow.request_id, gone.request_id}
        assert all(e.event != "stuck" for e in watch_once(world.home, now=now + 120))
        (alert,) = world.ready.service.audit.rows(kinds=["alert"], request_id=slow.request_id)
        assert alert.payload["rule"] == "tx-stuck" and alert.payload["txid"] == slow.signed.txid
        (operator_alert,) = list(_row_alerts(alert))
        assert operator_alert.request_id == slow.request_id and "tx-stuck" in operator_alert.title

        # Dropped from the mempool: unknown, and only after the grace period dropped.
        world.node.rpc("anvil_dropTransaction", gone.signed.txid)
        assert all(e.request_id != gone.request_id for e in watch_once(world.home, now=now + 130))
        dropped = [e for e in watch_once(world.home, now=now + DROP_AFTER + 5) if e.request_id == gone.request_id]
        assert [e.event for e in dropped] == ["dropped"]

        # The same nonce, a higher fee, sent straight to the node and mined: the first is replaced.
        world.node.rpc("eth_sendRawTransaction", "0x" + fast.signed.raw.removeprefix("0x"))
        world.node.rpc("evm_mine")
    assert world.node.rpc("eth_getTransactionReceipt", slow.signed.txid) is None
    replaced = [e for e in watch_once(world.home) if e.request_id == slow.request_id]
    assert [(e.event, e.replaced_by) for e in replaced] == [("replaced", fast.signed.txid)]
    onchain = world.ready.service.request(slow.request_id).onchain
    assert onchain is not None and onchain.phase.value == "replaced" and onchain.replaced_by == fast.signed.txid
    assert len(world.rows(slow.request_id, "alert")) == 1
    # Operators hear of it through the alert follower; a pending confirmation raises nothing.
    rows = world.ready.service.audit.rows(kinds=["confirmation"], request_id=slow.request_id)
    assert [r.payload["state"] for r in rows] == ["pending", "replaced"]
    assert list(_row_alerts(rows[0])) == []
    (replaced_alert,) = list(_row_alerts(rows[1]))
    assert "replaced" in replaced_alert.title and fast.signed.txid in replaced_alert.detail

    # A dropped transaction can be broadcast again (the same bytes) and is followed again.
    assert broadcast_request(world.home, gone.request_id).ok
    (event,) = [e for e in watch_once(world.home) if e.request_id == gone.request_id]
    assert event.event == "confirmed"


def test_approve_with_broadcast_signs_and_sends_in_one_command(world: World) -> None:
    world.fund(9)
    world.set_node()
    unsigned = world.ready.eth.build_transfer(
        to=COLD, value=ETHER // 10, nonce=world.nonce(9), chain_id=11155111, max_fee_per_gas=30 * GWEI
    )
    rid = world.request(unsigned, 9)
    out = world.cli_json("approve", rid, "--operator", "alice", "--operator", "bob", "--broadcast")
    assert out["status"] == "signed" and out["broadcast"]["outcome"] == "accepted"
    assert out["broadcast"]["txid"] == out["signed"]["txid"]
    assert world.node.rpc("eth_getTransactionReceipt", out["signed"]["txid"])["status"] == "0x1"
    assert [r["outcome"] for r in world.rows(rid, "broadcast")] == ["accepted"]


def test_broadcast_all_sends_each_signed_request_once_and_the_view_survives_a_rebuild(world: World) -> None:
    world.fund(10)
    world.set_node()
    nonce = world.nonce(10)
    first = world.transfer(10, ETHER // 10, nonce=nonce)
    second = world.transfer(10, ETHER // 10, nonce=nonce + 1)
    results = world.cli_json("broadcast", "--all", "--chain", "ETH")["results"]
    mine = {r["request_id"]: r for r in results if r["request_id"] in (first.request_id, second.request_id)}
    assert {rid: r["outcome"] for rid, r in mine.items()} == {
        first.request_id: "accepted",
        second.request_id: "accepted",
    }
    assert world.nonce(10) == nonce + 2
    again = world.cli_json("broadcast", "--all")["results"]
    assert all(r["request_id"] not in mine for r in again)  # accepted once: not sent again
    assert world.cli_json("broadcast", "--all", "--chain", "BTC")["results"] == []

    # The queue index is rebuilt from the audit log alone: the same on-chain view comes back.
    before = world.cli_json("request", "show", first.request_id)["onchain"]
    world.cli_json("request", "rebuild")
    listed = {r["id"]: r for r in world.cli_json("request", "list")["requests"]}
    assert listed[first.request_id]["onchain"] == before and before["state"] == "broadcast"


def test_watchers_racing_record_each_change_once(world: World) -> None:
    """A `watch` loop may run beside `serve`'s: several at once still write one row per change."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    world.fund(7)
    world.set_node(confirmations=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_AGENT_")}
    env.update({"KMS_AGENT_HOME": str(world.home), "KMS_AGENT_SIM_TOUCH": "auto"})
    for round_ in range(3):
        state = world.transfer(7, ETHER // 100)
        rid = state.request_id
        assert world.cli_json("broadcast", rid)["ok"]
        world.node.rpc("anvil_mine", "0x2")
        watchers = [
            subprocess.Popen(
                [sys.executable, "-m", "agent", "watch", "--once", "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
            for _ in range(4)
        ]
        outs = [w.communicate(timeout=120) for w in watchers]
        assert all(w.returncode == 0 for w in watchers), [err for _, err in outs]
        confirmations = world.rows(rid, "confirmation")
        assert [(c["state"], c["depth"]) for c in confirmations] == [("confirmed", 3)], f"round {round_}"
        events = [e for out, _ in outs for e in json.loads(out)["events"] if e["request_id"] == rid]
        recorded = [e for e in events if e["audit_seq"] is not None]
        assert len(recorded) == 1


def test_the_running_agent_follows_confirmations_for_its_status_endpoint(world: World) -> None:
    from tests.service.agent_proc import start_agent

    world.fund(8)
    world.set_node(confirmations=2)
    state = world.transfer(8, ETHER // 100)
    rid = state.request_id
    assert world.cli_json("broadcast", rid)["ok"]
    agent = start_agent(world.home, "--watch-interval", "0.1", tcp=False)
    try:
        with agent.unix() as api:

            def onchain() -> dict[str, object]:
                got = api.get(f"/v1/withdrawals/{rid}")
                assert got.status_code == 200, got.text
                return dict(got.json()["onchain"])

            deadline = time.monotonic() + 30
            while onchain()["depth"] != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (onchain()["state"], onchain()["depth"]) == ("pending", 1)  # mined, below 2 confirmations
            world.node.rpc("anvil_mine", "0x1")
            while onchain()["state"] != "confirmed" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (onchain()["state"], onchain()["depth"]) == ("confirmed", 2)
    finally:
        assert agent.stop() == 0, agent.stderr
    assert [(c["state"], c["depth"]) for c in world.rows(rid, "confirmation")][-1] == ("confirmed", 2)
