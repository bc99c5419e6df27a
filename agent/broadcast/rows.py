"""The payloads of ``broadcast`` and ``confirmation`` audit rows (docs/broadcast.md §3; docs/audit-log.md).

One builder per row kind so every writer (the broadcaster, the watcher, the Tatum daemon) records
the same fields, and the request's on-chain state can be derived from the log alone.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent.broadcast.nodes import NodeAnswer, NodeKind, TxStatus, clip


def public_url(url: str) -> str:
    """``url`` without user, password, query or fragment: an API key in a URL never reaches the log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def broadcast_row(txid: str, *, via: NodeKind, url: str, attempt: int, answer: NodeAnswer) -> dict[str, Any]:
    """One attempt to hand signed bytes to a node, and what the node said, verbatim."""
    return {
        "txid": txid,
        "via": via.value,
        "url": public_url(url),
        "attempt": attempt,
        "outcome": answer.outcome.value,
        "http_status": answer.http_status,
        "answer": clip(answer.answer),
        "reason": answer.reason,
        "node_txid": answer.txid,
    }


def confirmation_row(txid: str, status: TxStatus) -> dict[str, Any]:
    """A change in where the transaction is: confirmed (with depth), failed, dropped, replaced or stuck."""
    return {
        "txid": txid,
        "state": status.state.value,
        "depth": status.depth,
        "block_hash": status.block_hash,
        "block_height": status.block_height,
        "reason": status.reason,
        "replaced_by": status.replaced_by,
        "answer": clip(status.answer),
    }
