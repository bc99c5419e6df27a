"""An Esplora REST API (Blockstream's explorer backend, mempool.space, electrs), with httpx (docs/broadcast.md).

The endpoints, as Blockstream's API.md documents them:

* ``POST /tx`` with the raw transaction in hex as the body: ``200`` and the txid as text;
* ``GET /tx/:txid/status``: ``{"confirmed": bool, "block_height": int, "block_hash": str, ...}``,
  ``404`` when the backend does not know the txid;
* ``GET /blocks/tip/height``: the tip height as text, for the depth of a confirmed transaction.

Esplora relays a refused transaction as HTTP 400 with bitcoind's error in the body, e.g.
``sendrawtransaction RPC error: {"code":-26,"message":"min relay fee not met"}``. Classification of a send:

* 200: ACCEPTED;
* 400 whose bitcoind code is -27 (already in the chain) or whose message says the transaction is already
  in the mempool: ACCEPTED, these exact bytes are there already (a re-broadcast);
* any other 400: REJECTED, with bitcoind's message (or the body, when it has no JSON part) as the reason;
* no HTTP answer, a timeout, or any other status (429, 5xx, and a 404 or 405 that means a wrong base URL,
  where the node never judged the transaction): UNREACHABLE, so it is retried and never marked failed.

The body of every answer is kept verbatim (:func:`agent.broadcast.nodes.clip`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from agent.broadcast.nodes import NodeAnswer, NodeKind, NodeUnreachable, OnChainState, Outcome, TxStatus, clip

#: bitcoind's RPC_VERIFY_ALREADY_IN_CHAIN (src/rpc/protocol.h).
RPC_VERIFY_ALREADY_IN_CHAIN = -27
#: Messages that mean "I already have these bytes" (bitcoind's mempool reject reasons).
_ALREADY_KNOWN = ("txn-already-in-mempool", "txn-already-known", "already in block chain", "already in utxo set")
_RPC_ERROR = re.compile(r"RPC error:?\s*(\{.*\})\s*$", re.DOTALL)
_TXID = re.compile(r"^[0-9a-f]{64}$")


def _rpc_error(body: str) -> tuple[int | None, str | None]:
    """bitcoind's ``(code, message)`` inside an Esplora error body, when it has one."""
    found = _RPC_ERROR.search(body)
    if found is None:
        return None, None
    try:
        doc = json.loads(found.group(1))
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    code = doc.get("code")
    message = doc.get("message")
    return (code if isinstance(code, int) else None), (str(message) if message is not None else None)


def txid_of_hex(raw_hex: str) -> str | None:
    """The txid of a serialized transaction (witness stripped), to name what an "already known" answer refers to."""
    try:
        from embit.transaction import Transaction

        return bytes(Transaction.parse(bytes.fromhex(raw_hex)).txid()).hex()
    except Exception:  # not a transaction: the node's answer says why; there is no txid to report
        return None


class EsploraClient:
    """:class:`agent.broadcast.nodes.NodeClient` for an Esplora base URL (e.g. ``https://blockstream.info/testnet/api``)."""

    kind = NodeKind.ESPLORA

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self._base = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)

    def send(self, raw_hex: str) -> NodeAnswer:
        raw = raw_hex[2:] if raw_hex.startswith("0x") else raw_hex
        try:
            response = self._http.post(f"{self._base}/tx", content=raw.encode(), headers={"Content-Type": "text/plain"})
        except httpx.HTTPError as exc:
            return NodeAnswer(Outcome.UNREACHABLE, None, clip(f"{type(exc).__name__}: {exc}"))
        body = response.text
        status = response.status_code
        if status == 200:
            txid = body.strip().lower()
            return NodeAnswer(Outcome.ACCEPTED, status, clip(body), txid=txid if _TXID.match(txid) else None)
        if status != 400:
            return NodeAnswer(Outcome.UNREACHABLE, status, clip(body), reason=f"HTTP {status}")
        code, message = _rpc_error(body)
        reason = message if message is not None else body.strip()
        if code == RPC_VERIFY_ALREADY_IN_CHAIN or any(k in reason.lower() for k in _ALREADY_KNOWN):
            return NodeAnswer(Outcome.ACCEPTED, status, clip(body), reason=clip(reason), txid=txid_of_hex(raw))
        return NodeAnswer(Outcome.REJECTED, status, clip(body), reason=clip(reason))

    def status(self, txid: str, *, sender: str | None = None, nonce: int | None = None) -> TxStatus:
        """Confirmed (with depth from the tip height), pending in the mempool, or unknown (404).

        ``sender`` and ``nonce`` are EVM notions and are ignored: a Bitcoin transaction is replaced only
        by spending its inputs elsewhere, which the node reports as the transaction being unknown.

        :raises NodeUnreachable: the backend did not answer (no HTTP answer, 429, 5xx, a body that is
            not the documented JSON).
        """
        txid = txid.lower().removeprefix("0x")
        status, body = self._get(f"/tx/{txid}/status")
        if status == 404:
            return TxStatus(OnChainState.UNKNOWN, answer=clip(body))
        if status != 200:
            raise NodeUnreachable(f"HTTP {status} from GET /tx/{txid}/status: {clip(body)}")
        doc = _json_object(body, f"/tx/{txid}/status")
        if not doc.get("confirmed"):
            return TxStatus(OnChainState.PENDING, 0, answer=clip(body))
        height = doc.get("block_height")
        if not isinstance(height, int):
            raise NodeUnreachable(f"GET /tx/{txid}/status: confirmed without a block_height: {clip(body)}")
        tip_status, tip_body = self._get("/blocks/tip/height")
        try:
            tip = int(tip_body.strip())
        except ValueError:
            tip = None
        if tip_status != 200 or tip is None:
            raise NodeUnreachable(f"HTTP {tip_status} from GET /blocks/tip/height: {clip(tip_body)}")
        block_hash = doc.get("block_hash")
        return TxStatus(
            OnChainState.CONFIRMED,
            depth=max(tip - height + 1, 1),
            block_hash=str(block_hash) if block_hash is not None else None,
            block_height=height,
            answer=clip(body),
        )

    def _get(self, path: str) -> tuple[int, str]:
        try:
            response = self._http.get(self._base + path)
        except httpx.HTTPError as exc:
            raise NodeUnreachable(f"{type(exc).__name__}: {exc}") from None
        return response.status_code, response.text

    def close(self) -> None:
        self._http.close()


def _json_object(body: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise NodeUnreachable(f"GET {what}: not JSON: {clip(body)}") from None
    if not isinstance(doc, dict):
        raise NodeUnreachable(f"GET {what}: not a JSON object: {clip(body)}")
    return doc
