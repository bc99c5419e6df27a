"""Bitcoin Core's JSON-RPC (``sendrawtransaction``, ``getrawtransaction``), with httpx (docs/broadcast.md §4).

Credentials come from the URL (``http://user:password@host:8332``) and are sent as HTTP basic auth;
the URL kept in the audit log has them stripped (:func:`agent.broadcast.rows.public_url`), and no
message here repeats them. Core's error codes (src/rpc/protocol.h) decide the outcome of a send:

* -26 ``RPC_VERIFY_REJECTED`` and -25 ``RPC_VERIFY_ERROR`` (missing or spent inputs): REJECTED, with
  Core's message as the reason;
* -27 ``RPC_VERIFY_ALREADY_IN_CHAIN``: ACCEPTED (these exact bytes are already mined);
* -28 ``RPC_IN_WARMUP``, no answer, 401/403, 5xx without a JSON-RPC error: UNREACHABLE.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

from agent.broadcast.evm_rpc import JsonRpc, _RpcError, _status_of
from agent.broadcast.nodes import NodeAnswer, NodeKind, NodeUnreachable, OnChainState, Outcome, TxStatus, clip

RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_IN_WARMUP = -28
RPC_INVALID_ADDRESS_OR_KEY = -5


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
    return bare, (unquote(parts.username), unquote(parts.password or ""))


def _code(body: str) -> int | None:
    import json

    try:
        error = json.loads(body).get("error")
        return int(error["code"]) if isinstance(error, dict) else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


class BitcoinRpcClient:
    """:class:`agent.broadcast.nodes.NodeClient` for Bitcoin Core (and forks that keep its RPC)."""

    kind = NodeKind.BITCOIN_RPC

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        bare, auth = _split_credentials(url)
        self._rpc = JsonRpc(bare, timeout=timeout, auth=auth)

    def send(self, raw_hex: str) -> NodeAnswer:
        raw = raw_hex[2:] if raw_hex.startswith("0x") else raw_hex
        try:
            result, status, body = self._rpc.call("sendrawtransaction", [raw])
        except NodeUnreachable as exc:
            return NodeAnswer(Outcome.UNREACHABLE, _status_of(str(exc)), clip(str(exc)))
        except _RpcError as exc:
            code = _code(exc.body)
            if code == RPC_VERIFY_ALREADY_IN_CHAIN:
                return NodeAnswer(Outcome.ACCEPTED, exc.http_status, clip(exc.body), reason=exc.message)
            if code == RPC_IN_WARMUP:
                return NodeAnswer(Outcome.UNREACHABLE, exc.http_status, clip(exc.body), reason=exc.message)
            return NodeAnswer(Outcome.REJECTED, exc.http_status, clip(exc.body), reason=exc.message)
        return NodeAnswer(Outcome.ACCEPTED, status, clip(body), txid=str(result) if result else None)

    def status(self, txid: str, *, sender: str | None = None, nonce: int | None = None) -> TxStatus:
        """From the mempool or the chain (``getrawtransaction``), else the node's wallet (``gettransaction``).

        :raises NodeUnreachable: the node did not answer.
        """
        txid = txid.lower().removeprefix("0x")
        try:
            try:
                tx, _, body = self._rpc.call("getrawtransaction", [txid, True])
            except _RpcError as exc:
                if _code(exc.body) != RPC_INVALID_ADDRESS_OR_KEY:
                    raise
                return self._from_wallet(txid, exc.body)
            return self._with_depth(tx, body)
        except _RpcError as exc:
            raise NodeUnreachable(f"the node refused a status question: {exc.message}") from None

    def _from_wallet(self, txid: str, unknown_body: str) -> TxStatus:
        try:
            tx, _, body = self._rpc.call("gettransaction", [txid])
        except _RpcError:
            return TxStatus(OnChainState.UNKNOWN, answer=clip(unknown_body))
        confirmations = int(tx.get("confirmations", 0)) if isinstance(tx, dict) else 0
        if confirmations < 0:  # Core: conflicted with a transaction that was mined
            conflicts = tx.get("walletconflicts") or [] if isinstance(tx, dict) else []
            return TxStatus(
                OnChainState.REPLACED,
                reason="a conflicting transaction was mined",
                answer=clip(body),
                replaced_by=str(conflicts[0]) if conflicts else None,
            )
        return self._with_depth(tx, body)

    def _with_depth(self, tx: object, body: str) -> TxStatus:
        if not isinstance(tx, dict):
            return TxStatus(OnChainState.UNKNOWN, answer=clip(body))
        confirmations = int(tx.get("confirmations") or 0)
        if confirmations <= 0:
            return TxStatus(OnChainState.PENDING, 0, answer=clip(body))
        height = tx.get("blockheight")
        if height is None:
            tip = int(self._rpc.call("getblockcount", [])[0])
            height = tip - confirmations + 1
        return TxStatus(OnChainState.CONFIRMED, confirmations, tx.get("blockhash"), int(height), None, clip(body))

    def close(self) -> None:
        self._rpc.close()
