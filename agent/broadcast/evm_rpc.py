"""An EVM node over JSON-RPC (``eth_sendRawTransaction``, receipts), with httpx (docs/broadcast.md §4).

Classification of a send, so the broadcaster knows whether to retry:

* a hash back, or "already known" / "known transaction": ACCEPTED (the node has these exact bytes);
* any other JSON-RPC error ("nonce too low", "insufficient funds"): REJECTED, the node's message
  as the reason (the same bytes will not do better);
* no HTTP answer, a timeout, HTTP 429 or 5xx, or a body that is not JSON-RPC: UNREACHABLE.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from agent.broadcast.nodes import NodeAnswer, NodeKind, NodeUnreachable, OnChainState, Outcome, TxStatus, clip

#: Node messages that mean "I already have this transaction" (geth, anvil, nethermind, erigon spellings).
_ALREADY_KNOWN = ("already known", "known transaction", "already imported", "alreadyknown", "already in mempool")
#: How many recent blocks to search for the transaction that took our nonce (a cheap best effort).
REPLACEMENT_SEARCH_BLOCKS = 32


class _RpcError(Exception):
    def __init__(self, message: str, http_status: int, body: str) -> None:
        super().__init__(message)
        self.message, self.http_status, self.body = message, http_status, body


class JsonRpc:
    """A minimal JSON-RPC 2.0 caller; shared by the EVM and Bitcoin Core clients."""

    def __init__(self, url: str, *, timeout: float = 10.0, auth: tuple[str, str] | None = None) -> None:
        self.url = url
        self._ids = itertools.count(1)
        self._http = httpx.Client(timeout=timeout, auth=auth, follow_redirects=False)

    def call(self, method: str, params: list[Any]) -> tuple[Any, int, str]:
        """``(result, http status, body)``.

        :raises NodeUnreachable: no usable answer. :raises _RpcError: the node answered with an error.
        """
        try:
            response = self._http.post(
                self.url, json={"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
            )
        except httpx.HTTPError as exc:
            raise NodeUnreachable(f"{type(exc).__name__}: {exc}") from None
        body = response.text
        if response.status_code == 429 or (response.status_code >= 500 and not _has_error(body)):
            raise NodeUnreachable(f"HTTP {response.status_code}: {clip(body)}")
        try:
            doc = response.json()
        except ValueError:
            raise NodeUnreachable(f"HTTP {response.status_code}, not JSON: {clip(body)}") from None
        if not isinstance(doc, dict):
            raise NodeUnreachable(f"HTTP {response.status_code}, not a JSON-RPC answer: {clip(body)}")
        error = doc.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise _RpcError(str(message), response.status_code, body)
        if response.status_code >= 400:
            raise NodeUnreachable(f"HTTP {response.status_code}: {clip(body)}")
        return doc.get("result"), response.status_code, body

    def close(self) -> None:
        self._http.close()


def _has_error(body: str) -> bool:
    """A 5xx with a JSON-RPC error object is an answer (Bitcoin Core answers 500 for every RPC error)."""
    import json

    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("error") is not None


def _int(value: Any) -> int:
    return int(str(value), 16)


class EvmRpcClient:
    """:class:`agent.broadcast.nodes.NodeClient` for an EVM node's JSON-RPC endpoint."""

    kind = NodeKind.EVM_RPC

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self._rpc = JsonRpc(url, timeout=timeout)

    def send(self, raw_hex: str) -> NodeAnswer:
        raw = raw_hex if raw_hex.startswith("0x") else "0x" + raw_hex
        try:
            result, status, body = self._rpc.call("eth_sendRawTransaction", [raw])
        except NodeUnreachable as exc:
            return NodeAnswer(Outcome.UNREACHABLE, _status_of(str(exc)), clip(str(exc)))
        except _RpcError as exc:
            if any(k in exc.message.lower() for k in _ALREADY_KNOWN):
                return NodeAnswer(Outcome.ACCEPTED, exc.http_status, clip(exc.body), reason=exc.message)
            return NodeAnswer(Outcome.REJECTED, exc.http_status, clip(exc.body), reason=exc.message)
        txid = result.lower() if isinstance(result, str) else None
        return NodeAnswer(Outcome.ACCEPTED, status, clip(body), txid=txid)

    def status(self, txid: str, *, sender: str | None = None, nonce: int | None = None) -> TxStatus:
        """Mined (with depth, reverted or not), pending, replaced by the same nonce, or unknown.

        :raises NodeUnreachable: the node did not answer.
        """
        txid = txid.lower() if txid.startswith("0x") else "0x" + txid.lower()
        try:
            receipt, _, body = self._rpc.call("eth_getTransactionReceipt", [txid])
            if isinstance(receipt, dict) and receipt.get("blockNumber"):
                tip = _int(self._rpc.call("eth_blockNumber", [])[0])
                height = _int(receipt["blockNumber"])
                depth = max(tip - height + 1, 1)
                block_hash = receipt.get("blockHash")
                if receipt.get("status") == "0x0":
                    return TxStatus(OnChainState.FAILED, depth, block_hash, height, "reverted", clip(body))
                return TxStatus(OnChainState.CONFIRMED, depth, block_hash, height, None, clip(body))
            tx, _, body = self._rpc.call("eth_getTransactionByHash", [txid])
            if isinstance(tx, dict):
                return TxStatus(OnChainState.PENDING, 0, answer=clip(body))
            if sender is None or nonce is None:
                return TxStatus(OnChainState.UNKNOWN, answer=clip(body))
            count, _, count_body = self._rpc.call("eth_getTransactionCount", [sender, "latest"])
            if _int(count) > nonce:
                by = self._replacement(sender, nonce)
                return TxStatus(
                    OnChainState.REPLACED,
                    reason=f"nonce {nonce} of {sender} was used by {by or 'another transaction'}",
                    answer=clip(count_body),
                    replaced_by=by,
                )
            return TxStatus(OnChainState.UNKNOWN, answer=clip(count_body))
        except _RpcError as exc:
            raise NodeUnreachable(f"the node refused a status question: {exc.message}") from None

    def _replacement(self, sender: str, nonce: int) -> str | None:
        """The mined transaction from ``sender`` with ``nonce``, if it is in the last few blocks."""
        try:
            tip = _int(self._rpc.call("eth_blockNumber", [])[0])
            for height in range(tip, max(tip - REPLACEMENT_SEARCH_BLOCKS, -1), -1):
                block, _, _ = self._rpc.call("eth_getBlockByNumber", [hex(height), True])
                for tx in (block or {}).get("transactions", []):
                    if (
                        isinstance(tx, dict)
                        and str(tx.get("from", "")).lower() == sender.lower()
                        and _int(tx.get("nonce", "0x0")) == nonce
                    ):
                        return str(tx["hash"]).lower()
        except (_RpcError, NodeUnreachable, ValueError, TypeError):
            return None
        return None

    def close(self) -> None:
        self._rpc.close()


def _status_of(message: str) -> int | None:
    if message.startswith("HTTP "):
        try:
            return int(message[5:8])
        except ValueError:
            return None
    return None
