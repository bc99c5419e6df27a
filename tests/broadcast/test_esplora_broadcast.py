"""Bitcoin-family broadcast over an Esplora API whose accept or reject is Bitcoin Core's consensus code.

The server (tests/broadcast/esplora_server.py) runs on loopback over a regtest chain judged by
libbitcoinkernel (tests/broadcast/regtest.py; automine: an accepted transaction is mined at once).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.broadcast.esplora import EsploraClient
from agent.broadcast.nodes import NodeUnreachable, OnChainState, Outcome
from tests.broadcast.esplora_server import EsploraServer
from tests.broadcast.regtest import MATURITY, Mined, Regtest
from tests.broadcast.test_regtest import KEY, p2wpkh, spend
from tests.conftest import Cli, init_args

NO_SUCH_COIN = "ab" * 32


@pytest.fixture
def esplora() -> Iterator[EsploraServer]:
    with Regtest() as chain, EsploraServer(chain) as server:
        yield server


@pytest.fixture
def client(esplora: EsploraServer) -> Iterator[EsploraClient]:
    c = EsploraClient(esplora.url + "/")
    yield c
    c.close()


def _mature_coin(chain: Regtest) -> tuple[str, int]:
    [coin] = chain.mine(1, p2wpkh(KEY))
    chain.mine(MATURITY)
    return coin.coinbase_txid, coin.amount


def test_client_accepts_confirms_and_reports_depth(esplora: EsploraServer, client: EsploraClient) -> None:
    txid, amount = _mature_coin(esplora.chain)
    raw = spend(KEY, txid, 0, amount, [(p2wpkh(b"\x22" * 32), amount - 1000)])
    answer = client.send(raw.hex())
    assert answer.outcome is Outcome.ACCEPTED and answer.http_status == 200
    assert answer.txid is not None and answer.answer == answer.txid  # the body verbatim: the txid
    assert esplora.seen[-1].method == "POST" and esplora.seen[-1].path == "/tx" and esplora.seen[-1].body == raw.hex()
    status = client.status(answer.txid)
    assert status.state is OnChainState.CONFIRMED and status.depth == 1
    assert status.block_height == MATURITY + 2 and status.block_hash == esplora.chain.tip_hash()
    assert json.loads(status.answer)["block_hash"] == status.block_hash
    assert len(httpx.post(esplora.url + "/mine/3").json()) == 3
    assert client.status(answer.txid).depth == 4
    # The same bytes again: bitcoind says -27 "already in utxo set", which is an acceptance of the same txid.
    again = client.send(raw.hex())
    assert again.outcome is Outcome.ACCEPTED and again.http_status == 400 and again.txid == answer.txid
    assert again.reason == "Transaction outputs already in utxo set" and '"code":-27' in again.answer
    assert esplora.chain.tip_height() == MATURITY + 5  # nothing was mined twice


def test_client_reports_the_kernels_reason_verbatim(esplora: EsploraServer, client: EsploraClient) -> None:
    [other] = esplora.chain.mine(1, p2wpkh(KEY))
    txid, amount = _mature_coin(esplora.chain)
    first = spend(KEY, txid, 0, amount, [(p2wpkh(b"\x22" * 32), amount - 1000)])
    assert client.send(first.hex()).outcome is Outcome.ACCEPTED
    double = spend(KEY, txid, 0, amount, [(p2wpkh(b"\x33" * 32), amount - 5000)])
    answer = client.send(double.hex())
    assert answer.outcome is Outcome.REJECTED and answer.http_status == 400
    assert answer.reason is not None and answer.reason.startswith("bad-txns-inputs-missingorspent, CheckTxInputs")
    assert answer.answer.startswith(
        'sendrawtransaction RPC error: {"code":-25,"message":"bad-txns-inputs-missingorspent'
    )
    assert json.loads(answer.answer.split("error: ", 1)[1])["message"] == answer.reason
    made_up = client.send(spend(KEY, NO_SUCH_COIN, 0, 10_000, [(p2wpkh(b"\x33" * 32), 9_000)]).hex())
    assert made_up.outcome is Outcome.REJECTED and made_up.reason is not None
    assert made_up.reason.startswith("bad-txns-inputs-missingorspent")
    over = client.send(
        spend(KEY, other.coinbase_txid, 0, other.amount, [(p2wpkh(b"\x33" * 32), other.amount + 1)]).hex()
    )
    assert (
        over.outcome is Outcome.REJECTED and over.reason is not None and over.reason.startswith("bad-txns-in-belowout")
    )
    assert '"code":-26' in over.answer
    garbage = client.send("zz")
    assert garbage.outcome is Outcome.REJECTED and garbage.reason == "TX decode failed"


def test_client_unknown_transaction_and_unreachable_node(esplora: EsploraServer, client: EsploraClient) -> None:
    unknown = client.status("cd" * 32)
    assert unknown.state is OnChainState.UNKNOWN and unknown.answer == "Transaction not found"
    esplora.fail_next(503, "upstream down", count=2)
    answer = client.send("00")
    assert answer.outcome is Outcome.UNREACHABLE and answer.http_status == 503 and answer.answer == "upstream down"
    with pytest.raises(NodeUnreachable, match="503"):
        client.status("cd" * 32)
    esplora.fail_next(404, "Not Found")  # a wrong base URL: the node never judged the transaction
    assert client.send("00").outcome is Outcome.UNREACHABLE
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = EsploraClient(f"http://127.0.0.1:{port}", timeout=2)
    try:
        answer = down.send("00")
        assert answer.outcome is Outcome.UNREACHABLE and answer.http_status is None
        assert "ConnectError" in answer.answer
        with pytest.raises(NodeUnreachable, match="ConnectError"):
            down.status("cd" * 32)
    finally:
        down.close()


# -- end to end, through the real CLI ---------------------------------------------------------------

COLD = "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"


@pytest.fixture
def btc_home(cli: Cli, home: Path) -> dict[str, str]:
    """A 2-of-3 vault with a BTC testnet wallet, and a policy that lets BTC go to COLD."""
    from agent.policy import AssetLimits, Policy, Rule, UnknownDestination

    cli.json(*init_args())
    wallet = cli.json("wallet", "generate", "BTC", "--testnet")["wallets"][0]
    policy = Policy(
        generation=2,
        default=Rule(
            approvals_required=2,
            allowlist=frozenset([COLD]),
            assets={"BTC": AssetLimits(per_tx=100 * 10**8, per_hour=None, per_day=None)},
            unknown_destination=UnknownDestination.DENY,
        ),
        admin_approvals=2,
    )
    (home / "policy.json").write_text(json.dumps(policy.to_dict()))
    cli.json("policy", "set", str(home / "policy.json"), "--operator", "alice", "--operator", "bob")
    return {
        "sig": wallet["signatureId"],
        "address": cli.json("wallet", "address", wallet["signatureId"], "0")["address"],
    }


def _signed_spend(cli: Cli, home: Path, sig: str, coin: Mined, amount: int, name: str) -> dict[str, Any]:
    """A request paying ``amount`` of ``coin`` to COLD (change to index 1), approved by alice and bob: signed."""
    coins = home / f"{name}.json"
    coins.write_text(json.dumps([{"txid": coin.coinbase_txid, "vout": 0, "amount": coin.amount, "index": 0}]))
    args = ["request", "create", "BTC", sig, "0", "--to", COLD, "--amount", str(amount)]
    req = cli.json(*args, "--utxos", str(coins), "--fee-rate", "2")
    assert req["status"] == "pending", req
    signed = cli.json("approve", req["id"], "--operator", "alice", "--operator", "bob")
    assert signed["status"] == "signed", signed
    return cli.json("request", "show", req["id"])


def _rows(cli: Cli, request_id: str, kind: str) -> list[dict[str, Any]]:
    out = cli.json("audit", "show", "--kind", kind, "--request", request_id)
    rows: list[dict[str, Any]] = out["rows"] if isinstance(out, dict) else out
    return rows


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = row.get("payload", row)
    return payload


def test_a_signedp2wpkh_spend_is_accepted_confirmed_and_a_double_spend_rejected(
    cli: Cli, home: Path, btc_home: dict[str, str]
) -> None:
    from agent.chains import get_chain

    btc = get_chain("BTC")
    spk = btc.script_from_address(btc_home["address"], btc.net(True))  # type: ignore[attr-defined]
    with Regtest() as chain, EsploraServer(chain) as esplora:
        [coin] = chain.mine(1, spk)  # testnet addresses, regtest chain: consensus never sees a prefix
        chain.mine(MATURITY)
        first = _signed_spend(cli, home, btc_home["sig"], coin, 30_000_000, "first")
        # Three confirmations before "confirmed", so the watcher records the depth growing.
        node = ["node", "set", "BTC", "--testnet", "--kind", "esplora", "--url", esplora.url, "--confirmations", "3"]
        cli.json(*node)

        esplora.fail_next(503, "upstream down")  # a proxy in front of the node: retried, then accepted
        sent = cli.json("broadcast", first["id"])
        txid = first["signed"]["txid"]
        assert chain.depth(txid) == 1  # in a block the kernel accepted (automine)
        assert (sent["txid"], sent["outcome"], sent["attempts"], sent["ok"]) == (txid, "accepted", 2, True)
        [down, row] = _rows(cli, first["id"], "broadcast")
        assert (_payload(down)["outcome"], _payload(down)["http_status"], _payload(down)["answer"]) == (
            "unreachable",
            503,
            "upstream down",
        )
        assert _payload(row)["outcome"] == "accepted" and _payload(row)["node_txid"] == txid
        assert _payload(row)["attempt"] == 2
        assert _payload(row)["answer"] == txid and _payload(row)["via"] == "esplora"
        assert _payload(row)["url"] == esplora.url and _payload(row)["http_status"] == 200

        [event] = cli.json("watch", "--once")["events"]
        assert (event["event"], event["depth"], event["txid"]) == ("pending", 1, txid)
        onchain = cli.json("request", "show", first["id"])["onchain"]
        assert (onchain["state"], onchain["depth"], onchain["txid"]) == ("pending", 1, txid)
        chain.mine(2)
        cli.json("watch", "--once")
        onchain = cli.json("request", "show", first["id"])["onchain"]
        assert (onchain["state"], onchain["depth"]) == ("confirmed", 3)
        location = chain.tx_status(txid)
        assert location is not None and onchain["block_hash"] == location.block_hash
        confirmations = [_payload(r) for r in _rows(cli, first["id"], "confirmation")]
        assert [(c["state"], c["depth"]) for c in confirmations] == [("pending", 1), ("confirmed", 3)]
        assert confirmations[-1]["block_height"] == location.height == MATURITY + 2

        # The same coin again, in a second request signed after the first was mined: Core refuses it.
        second = _signed_spend(cli, home, btc_home["sig"], coin, 20_000_000, "second")
        assert second["signed"]["txid"] != txid
        height = chain.tip_height()
        refused = cli("broadcast", second["id"], "--json")
        assert refused.returncode == 8 and "bad-txns-inputs-missingorspent" in refused.stderr
        result, end = json.JSONDecoder().raw_decode(refused.stdout)  # the result, then the error document
        assert "bad-txns-inputs-missingorspent" in json.loads(refused.stdout[end:])["error"]["message"]
        assert (result["outcome"], result["ok"]) == ("rejected", False)
        assert result["reason"].startswith("bad-txns-inputs-missingorspent")
        assert chain.tip_height() == height and chain.tx_status(second["signed"]["txid"]) is None
        [attempt] = [_payload(r) for r in _rows(cli, second["id"], "broadcast")]
        assert attempt["outcome"] == "rejected" and attempt["http_status"] == 400
        assert attempt["reason"].startswith("bad-txns-inputs-missingorspent, CheckTxInputs: inputs missing/spent")
        assert attempt["answer"].startswith('sendrawtransaction RPC error: {"code":-25')
        [failed] = [_payload(r) for r in _rows(cli, second["id"], "confirmation")]
        assert failed["state"] == "failed" and failed["reason"] == attempt["reason"]
        onchain = cli.json("request", "show", second["id"])["onchain"]
        assert onchain["state"] == "failed" and onchain["reason"].startswith("bad-txns-inputs-missingorspent")
        # The first request is untouched by the second's failure.
        assert cli.json("request", "show", first["id"])["onchain"]["state"] == "confirmed"
        assert cli("audit", "verify").returncode == 0
