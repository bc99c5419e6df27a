"""The Bitcoin Core and EVM clients against scripted JSON-RPC servers on loopback (no bitcoind here).

Core's answers follow its RPC docs: ``sendrawtransaction`` returns the txid or an error with code
-26 (RPC_VERIFY_REJECTED), -25 (RPC_VERIFY_ERROR: missing or spent inputs) or -27 (already in the
chain); ``getrawtransaction txid true`` has ``confirmations`` once mined, -5 when unknown. Older
Core answers errors with HTTP 500, newer with 200: both are covered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agent.broadcast.bitcoin_rpc import BitcoinRpcClient
from agent.broadcast.evm_rpc import EvmRpcClient
from agent.broadcast.nodes import NodeKind, NodeUnreachable, OnChainState, Outcome
from agent.broadcast.rows import broadcast_row
from tests.broadcast.fake_rpc import FakeRpc

TXID = "ab" * 32
MINED = "cd" * 32
BLOCK = "ef" * 32
USER, PASSWORD = "rpcuser", "s3cret p@ss"


def core(method: str, params: list[Any]) -> tuple[int, Any]:
    def error(code: int, message: str, status: int = 500) -> tuple[int, Any]:
        return status, {"result": None, "error": {"code": code, "message": message}}

    if method == "sendrawtransaction":
        raw = params[0]
        return {
            "01": (200, {"result": TXID, "error": None}),
            "02": error(-26, "mandatory-script-verify-flag-failed (Signature must be zero for failed CHECK(MULTI)SIG)"),
            "03": error(-25, "bad-txns-inputs-missingorspent", status=200),
            "04": error(-27, "Transaction already in block chain"),
            "05": error(-28, "Loading block index..."),
        }[raw[:2]]
    if method == "getrawtransaction":
        if params[0] == TXID:
            return 200, {"result": {"txid": TXID, "hex": "01"}, "error": None}
        if params[0] == MINED:
            return 200, {"result": {"txid": MINED, "confirmations": 3, "blockhash": BLOCK}, "error": None}
        return error(-5, "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.")
    if method == "gettransaction":
        return error(-5, "Invalid or non-wallet transaction id")
    if method == "getblockcount":
        return 200, {"result": 120, "error": None}
    return error(-32601, "Method not found", status=404)


@pytest.fixture
def bitcoind() -> Iterator[FakeRpc]:
    fake = FakeRpc(core, auth=(USER, PASSWORD))
    yield fake
    fake.close()


def test_bitcoin_core_send_outcomes(bitcoind: FakeRpc) -> None:
    url = f"http://{USER}:s3cret%20p%40ss@127.0.0.1:{bitcoind.port}/"
    client = BitcoinRpcClient(url)
    try:
        ok = client.send("0100")
        assert (ok.outcome, ok.txid, ok.http_status) == (Outcome.ACCEPTED, TXID, 200)
        rejected = client.send("0200")
        assert rejected.outcome is Outcome.REJECTED and rejected.reason is not None
        assert rejected.reason.startswith("mandatory-script-verify-flag-failed") and '"code": -26' in rejected.answer
        spent = client.send("0300")
        assert (spent.outcome, spent.reason) == (Outcome.REJECTED, "bad-txns-inputs-missingorspent")
        assert client.send("0400").outcome is Outcome.ACCEPTED  # -27: these very bytes are mined
        assert client.send("0500").outcome is Outcome.UNREACHABLE  # -28: warming up, try later
        assert {c[2] for c in bitcoind.calls} == {"Basic cnBjdXNlcjpzM2NyZXQgcEBzcw=="}
        row = broadcast_row(TXID, via=client.kind, url=client.url, attempt=1, answer=rejected)
        assert row["url"] == f"http://127.0.0.1:{bitcoind.port}/" and PASSWORD not in str(row)
        assert "s3cret" not in str(row) and row["via"] == NodeKind.BITCOIN_RPC.value
    finally:
        client.close()
    wrong = BitcoinRpcClient(f"http://{USER}:nope@127.0.0.1:{bitcoind.port}/")
    try:
        answer = wrong.send("0100")
        assert (answer.outcome, answer.http_status) == (Outcome.UNREACHABLE, 401)
        assert "nope" not in answer.answer
    finally:
        wrong.close()


def test_bitcoin_core_status(bitcoind: FakeRpc) -> None:
    client = BitcoinRpcClient(f"http://{USER}:s3cret%20p%40ss@127.0.0.1:{bitcoind.port}")
    try:
        assert client.status(TXID).state is OnChainState.PENDING
        mined = client.status(MINED)
        assert (mined.state, mined.depth, mined.block_height, mined.block_hash) == (
            OnChainState.CONFIRMED,
            3,
            118,
            BLOCK,
        )
        assert client.status("99" * 32).state is OnChainState.UNKNOWN
    finally:
        client.close()
    closed = BitcoinRpcClient("http://127.0.0.1:9/")
    with pytest.raises(NodeUnreachable):
        closed.status(TXID)
    closed.close()


def test_evm_client_classifies_node_answers() -> None:
    answers = {
        "0x01": (200, {"jsonrpc": "2.0", "result": "0x" + TXID}),
        "0x02": (200, {"jsonrpc": "2.0", "error": {"code": -32000, "message": "already known"}}),
        "0x03": (200, {"jsonrpc": "2.0", "error": {"code": -32000, "message": "insufficient funds for gas * price"}}),
        "0x04": (503, "<html>upstream down</html>"),
        "0x05": (429, {"jsonrpc": "2.0", "error": {"code": -32005, "message": "rate limited"}}),
        "0x06": (200, "not json"),
    }
    fake = FakeRpc(lambda method, params: answers[params[0]])
    client = EvmRpcClient(f"http://127.0.0.1:{fake.port}")
    try:
        got = {raw: client.send(raw) for raw in answers}
        assert (got["0x01"].outcome, got["0x01"].txid) == (Outcome.ACCEPTED, "0x" + TXID)
        assert got["0x02"].outcome is Outcome.ACCEPTED and got["0x02"].reason == "already known"
        assert (got["0x03"].outcome, got["0x03"].reason) == (Outcome.REJECTED, "insufficient funds for gas * price")
        assert (got["0x04"].outcome, got["0x04"].http_status) == (Outcome.UNREACHABLE, 503)
        assert "upstream down" in got["0x04"].answer
        assert got["0x05"].outcome is Outcome.UNREACHABLE and got["0x06"].outcome is Outcome.UNREACHABLE
    finally:
        client.close()
        fake.close()
