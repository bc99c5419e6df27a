"""The confirmation watcher: ask each followed transaction's node where it is, record what changed.

One pass (:func:`watch_once`) looks at every signed request whose on-chain view is not final
(``broadcast``, ``pending``, ``unknown``); the queue index only chooses whom to ask, and what is
recorded comes from the node's answer and the request's rows as the audit log proves them. There
is no position file: a pass after a crash or a restart asks the same questions again, and a row is
written only when the state or the depth changed, so nothing is recorded twice. Rules (docs/broadcast.md §7):

* mined at depth >= the node's ``confirmations``: ``confirmed`` (final); below it: ``pending`` with
  the depth, recorded each time the depth changes;
* mined and reverted: ``failed`` "reverted" (final);
* another transaction took the nonce: ``replaced`` with ``replaced_by`` (final);
* unknown to the node: nothing, until ``drop_after`` seconds after the broadcast was accepted; then
  ``dropped`` (final for the watcher; broadcasting the same bytes again follows them again);
* still not confirmed ``stuck_after`` seconds after acceptance: one ``alert`` row, rule ``tx-stuck``.

All rows of a pass are committed in one audit transaction; then each change is POSTed to the
optional callback (which can fail without undoing anything).
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.audit import AuditKind
from agent.broadcast import config as node_config
from agent.broadcast.broadcaster import sender_and_nonce
from agent.broadcast.chainstate import FOLLOWED, STUCK_RULE, OnChain
from agent.broadcast.nodes import NodeClient, NodeUnreachable, OnChainState, TxStatus
from agent.broadcast.rows import confirmation_row
from agent.withdrawals.ledger import RequestState, Status
from agent.withdrawals.service import Withdrawals

#: Seconds a transaction may be unknown to the node after it was accepted before it counts as dropped.
DROP_AFTER = 600


@dataclass
class ChainEvent:
    """What one pass found for one request: a recorded change, a stuck alert, or why nothing was asked."""

    request_id: str
    chain: str
    testnet: bool
    txid: str
    #: A :class:`Phase` value, ``stuck``, or ``unreachable`` / ``no-node`` (nothing recorded).
    event: str
    depth: int | None = None
    reason: str | None = None
    replaced_by: str | None = None
    #: The audit row written for it (None: nothing recorded).
    audit_seq: int | None = None
    external: str | None = None
    block_height: int | None = None
    block_hash: str | None = None
    ts: int = 0
    callback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def recorded(self) -> bool:
        return self.audit_seq is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "request_id": self.request_id,
            "external": self.external,
            "chain": self.chain,
            "testnet": self.testnet,
            "txid": self.txid,
            "depth": self.depth,
            "block_height": self.block_height,
            "block_hash": self.block_hash,
            "reason": self.reason,
            "replaced_by": self.replaced_by,
            "audit_seq": self.audit_seq,
            "ts": self.ts,
            "callback": self.callback,
        }

    def callback_body(self) -> dict[str, Any]:
        """The JSON the application's callback receives (docs/broadcast.md §8)."""
        body = self.to_json()
        body.pop("callback")
        return {"v": 1, **body}


def _decide(
    status: TxStatus, onchain: OnChain, node: node_config.NodeConfig, now: int, drop_after: int
) -> TxStatus | None:
    """The confirmation row to record for ``status``, or None when nothing changed."""
    if status.state is OnChainState.CONFIRMED:
        depth = status.depth or 1
        if depth < node.confirmations:
            status = TxStatus(OnChainState.PENDING, depth, status.block_hash, status.block_height, None, status.answer)
    elif status.state is OnChainState.UNKNOWN:
        since = onchain.accepted_at if onchain.accepted_at is not None else onchain.updated_at
        if now - since < drop_after:
            return None
        status = TxStatus(
            OnChainState.DROPPED,
            reason=f"unknown to the node {now - since} s after it accepted the transaction",
            answer=status.answer,
        )
    if onchain.phase.value == status.state.value and onchain.depth == status.depth:
        return None
    return status


def watch_once(
    home: Path,
    *,
    now: int | None = None,
    clients: MutableMapping[tuple[str, bool], NodeClient] | None = None,
    drop_after: int = DROP_AFTER,
    service: Withdrawals | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ChainEvent]:
    """One pass over every followed request; returns what it found (recorded or not).

    :param clients: clients by (chain, testnet), kept across passes by the caller; missing ones are
        made from nodes.json (and added to the mapping when one is given).
    :raises NodeConfigError: nodes.json is invalid (nothing recorded).
    """
    book = node_config.load(home)
    service = service or Withdrawals(home)
    service.sync()
    now = int(time.time()) if now is None else now
    made: MutableMapping[tuple[str, bool], NodeClient] = {} if clients is None else clients
    events: list[ChainEvent] = []
    rows: list[tuple[ChainEvent, AuditKind, dict[str, Any]]] = []
    #: The newest row of each request when it was judged: a change is recorded only on top of it.
    judged_at: dict[str, int] = {}
    try:
        for record in service.queue.records(Status.SIGNED.value):
            if (record.get("onchain") or {}).get("state") not in FOLLOWED:
                continue
            state = service.ledger.request(str(record["id"]))
            judged_at[state.request_id] = state.last_seq
            onchain = state.onchain
            if onchain is None or onchain.phase not in FOLLOWED or state.signed is None:
                continue
            node = book.node(state.chain, state.testnet)
            if node is None:
                events.append(_event(state, onchain, "no-node", now, reason="no node configured for its chain"))
                continue
            if node.key not in made:
                from agent.broadcast.clients import client_for

                made[node.key] = client_for(node)
            sender, nonce = sender_and_nonce(state)
            try:
                status = made[node.key].status(onchain.txid, sender=sender, nonce=nonce)
            except (NodeUnreachable, Exception) as exc:
                events.append(_event(state, onchain, "unreachable", now, reason=str(exc)[:300]))
                continue
            change = _decide(status, onchain, node, now, drop_after)
            if change is not None:
                event = _event(state, onchain, change.state.value, now, status=change)
                events.append(event)
                rows.append((event, AuditKind.CONFIRMATION, confirmation_row(onchain.txid, change)))
            final = change is not None and change.state not in (OnChainState.PENDING, OnChainState.UNKNOWN)
            if (
                not final
                and not onchain.stuck_alerted
                and onchain.accepted_at is not None
                and now - onchain.accepted_at >= node.stuck_after
            ):
                waited = now - onchain.accepted_at
                detail = (
                    f"{state.chain} transaction {onchain.txid} of request {state.request_id} is not confirmed "
                    f"{waited} s after a node accepted it (stuck_after {node.stuck_after} s)"
                )
                event = _event(state, onchain, "stuck", now, reason=detail)
                events.append(event)
                rows.append(
                    (
                        event,
                        AuditKind.ALERT,
                        {
                            "rule": STUCK_RULE,
                            "detail": detail,
                            "txid": onchain.txid,
                            "chain": state.chain,
                            "testnet": state.testnet,
                            "accepted_at": onchain.accepted_at,
                            "waited": waited,
                        },
                    )
                )
    finally:
        if clients is None:
            for c in made.values():
                c.close()
    if rows:
        with service.audit.transaction() as tx:
            for event, kind, payload in rows:
                # Another watcher (a `watch` loop beside `serve`'s) may have recorded this meanwhile:
                # under the log's write lock, only a request whose rows are as judged gets a row.
                if service.audit.last_seq(request_id=event.request_id) != judged_at[event.request_id]:
                    continue
                row = tx.append(kind, payload, request_id=event.request_id, actor="watcher")
                event.audit_seq = row.seq
                judged_at[event.request_id] = row.seq
        service.sync()
    if book.callback is not None:
        from agent.broadcast.callback import post

        for event in events:
            if event.recorded:
                delivery = post(book.callback, event.callback_body())
                event.callback = "delivered" if delivery.ok else f"failed: {delivery.detail}"
                if progress is not None and not delivery.ok:
                    progress(f"callback for {event.request_id} failed: {delivery.detail}")
    return events


def _event(
    state: RequestState,
    onchain: OnChain,
    name: str,
    now: int,
    *,
    status: TxStatus | None = None,
    reason: str | None = None,
) -> ChainEvent:
    return ChainEvent(
        request_id=state.request_id,
        chain=state.chain,
        testnet=state.testnet,
        txid=onchain.txid,
        event=name,
        depth=status.depth if status else None,
        reason=status.reason if status else reason,
        replaced_by=status.replaced_by if status else None,
        external=state.external,
        block_height=status.block_height if status else None,
        block_hash=status.block_hash if status else None,
        ts=now,
    )
