"""Hand a signed request's exact bytes to its node, and record every attempt (docs/broadcast.md §6).

The bytes come only from the request's ``signature`` row: nothing here signs, builds or edits a
transaction. That is the whole idempotency argument. A second broadcast sends the identical bytes
(the same txid), which a node either already has, or refuses because their nonce (EVM) or inputs
(UTXO) are spent; a transaction cannot be included twice. So a retry is always safe, and a
request already confirmed is not sent again at all.

Every attempt becomes a ``broadcast`` row with the node's answer verbatim; a rejection also
becomes a ``confirmation`` row with state ``failed`` and the node's reason. Rows are written after
the node answered (one audit transaction per round of attempts): a crash in between loses the
record of an attempt, never a withdrawal, and the next broadcast sends the same bytes again.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.audit import AuditKind, AuditRow
from agent.broadcast import config as node_config
from agent.broadcast.chainstate import Phase, fold
from agent.broadcast.nodes import NodeAnswer, NodeClient, NodeUnreachable, OnChainState, Outcome, TxStatus
from agent.broadcast.rows import broadcast_row, confirmation_row
from agent.errors import ApprovalError, ChainError
from agent.withdrawals.ledger import RequestState, Status
from agent.withdrawals.service import Withdrawals


class BroadcastFailed(ChainError):
    """No node accepted the signed transaction (rejected, or unreachable after every retry); exit 8."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter between attempts while the node is unreachable."""

    attempts: int = 5
    #: Seconds before the second attempt; doubled each time, up to ``cap``.
    base: float = 0.5
    cap: float = 8.0
    #: The share of each delay that is random (0: none; 1: anywhere from 0 to the full delay).
    jitter: float = 0.5

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        full = min(self.cap, self.base * 2.0 ** (attempt - 1))
        return float(full * (1 - self.jitter * rng()))


@dataclass(frozen=True)
class BroadcastResult:
    request_id: str
    txid: str
    #: The last answer's outcome in this call; None when nothing was sent (``skipped`` says why).
    outcome: Outcome | None
    #: Attempts made by this call.
    attempts: int
    reason: str | None
    #: The request's on-chain view after this call, as the audit log now says.
    onchain: dict[str, Any] | None
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        """The node has the bytes (accepted now or before, or already in a block)."""
        if self.outcome is Outcome.ACCEPTED:
            return True
        state = (self.onchain or {}).get("state")
        return state in (Phase.BROADCAST, Phase.PENDING, Phase.CONFIRMED) and self.outcome is not Outcome.UNREACHABLE

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "txid": self.txid,
            "outcome": self.outcome.value if self.outcome else None,
            "attempts": self.attempts,
            "reason": self.reason,
            "skipped": self.skipped,
            "ok": self.ok,
            "onchain": self.onchain,
        }


def sender_and_nonce(state: RequestState) -> tuple[str | None, int | None]:
    """The EVM sender (from the signature row) and nonce (from the request's own bytes); None for UTXO chains."""
    if state.signed is None:
        return None, None
    try:
        from agent.chains import get_chain

        nonce = get_chain(state.chain).decode(state.tx, testnet=state.testnet).nonce
    except Exception:
        nonce = None
    return state.signed.sender, nonce


def _settled(state: RequestState) -> str | None:
    """Why a signed request must not be sent again, or None."""
    onchain = state.onchain
    if onchain is None:
        return None
    if onchain.phase is Phase.CONFIRMED:
        return f"already confirmed (depth {onchain.depth}); not sent again"
    if onchain.phase is Phase.REPLACED:
        return f"its nonce was used by {onchain.replaced_by or 'another transaction'}; not sent again"
    if onchain.phase is Phase.FAILED and onchain.block_hash is not None:
        return f"already mined and failed ({onchain.reason}); not sent again"
    return None


def _signed_state(service: Withdrawals, request_id: str) -> RequestState:
    state = service.request(request_id)
    if state.signed is None or state.status is not Status.SIGNED:
        raise ApprovalError(
            f"request {state.request_id} is {state.status.value}: only a signed request can be broadcast",
            hint="approve it first (`kms-agent approve`)" if state.status is Status.PENDING else None,
            request_id=state.request_id,
        )
    return state


def _client_for(book: node_config.NodeBook, state: RequestState) -> NodeClient:
    from agent.broadcast.clients import client_for

    node = book.node(state.chain, state.testnet)
    if node is None:
        flag = " --testnet" if state.testnet else ""
        raise node_config.NodeConfigError(
            f"no node configured for {state.chain} {'testnet' if state.testnet else 'mainnet'}",
            hint=f"kms-agent node set {state.chain}{flag} --kind evm-rpc|esplora|bitcoin-rpc --url URL",
            request_id=state.request_id,
        )
    return client_for(node)


def broadcast_request(
    home: Path,
    request_id: str,
    *,
    client: NodeClient | None = None,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> BroadcastResult:
    """Send one signed request's bytes to its node (``client``, or the one nodes.json names).

    :raises UsageError: no such request, or no node configured (nothing recorded).
    :raises ApprovalError: the request is not signed (nothing recorded).
    """
    service = Withdrawals(home)
    state = _signed_state(service, request_id)
    own = client is None
    if _settled(state) is None and client is None:
        client = _client_for(node_config.load(home), state)
    try:
        (result,) = broadcast_states(service, [state], lambda _s: client, retry=retry, sleep=sleep)
    finally:
        if own and client is not None:
            client.close()
    return result


def broadcast_signed(
    home: Path,
    *,
    chain: str | None = None,
    request_ids: Sequence[str] | None = None,
    clients: Mapping[tuple[str, bool], NodeClient] | None = None,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> list[BroadcastResult]:
    """Broadcast every signed request that no node has accepted yet (``kms-agent broadcast --all``, the daemon).

    :param request_ids: only these requests (the daemon passes the ones it just signed: no listing);
        default every signed request in the queue index.
    :param clients: a client per (chain, testnet); missing ones come from nodes.json. Requests of a
        chain with no node are left alone (reported with ``skipped``), never failed.
    """
    service = Withdrawals(home)
    wanted = chain.upper() if chain else None
    if request_ids is None:
        request_ids = [
            str(r["id"])
            for r in service.queue.records(Status.SIGNED.value)
            if not (r.get("onchain") or {}).get("accepted") and (not chain or r.get("chain") == chain.upper())
        ]
    states: list[RequestState] = []
    for rid in request_ids:
        state = service.ledger.request(rid)
        onchain = state.onchain
        if state.signed is None or (wanted and state.chain != wanted) or (onchain and onchain.accepted):
            continue
        if onchain is not None and onchain.phase in (Phase.FAILED, Phase.REPLACED, Phase.CONFIRMED):
            continue  # rejected: sending the same bytes again is an operator's decision (`broadcast ID`)
        states.append(state)
    if not states:
        return []
    book = node_config.load(home) if clients is None or len(clients) == 0 else None
    own: dict[tuple[str, bool], NodeClient] = {}

    def pick(state: RequestState) -> NodeClient | None:
        key = (state.chain, state.testnet)
        if clients is not None and key in clients:
            return clients[key]
        if key not in own:
            loaded = book or node_config.load(home)
            if loaded.node(*key) is None:
                return None
            own[key] = _client_for(loaded, state)
        return own[key]

    try:
        return broadcast_states(service, states, pick, retry=retry, sleep=sleep)
    finally:
        for c in own.values():
            c.close()


@dataclass
class _Job:
    state: RequestState
    client: NodeClient | None
    attempts: int = 0
    answer: NodeAnswer | None = None
    confirmed: TxStatus | None = None
    rows: list[AuditRow] = field(default_factory=list)


def broadcast_states(
    service: Withdrawals,
    states: Sequence[RequestState],
    pick: Callable[[RequestState], NodeClient | None],
    *,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> list[BroadcastResult]:
    """The rounds of attempts for signed ``states``: one audit transaction per round.

    Round n sends every job still unreachable; after it, the rows of that round are committed,
    then the policy's delay passes before the next round.
    """
    jobs = [_Job(s, None if _settled(s) else pick(s)) for s in states]
    pending = [j for j in jobs if j.client is not None]
    for round_no in range(1, max(retry.attempts, 1) + 1):
        rows: list[tuple[_Job, AuditKind, dict[str, Any]]] = []
        for job in pending:
            assert job.client is not None and job.state.signed is not None
            job.attempts += 1
            job.answer = job.client.send(job.state.signed.raw)
            previous = job.state.onchain.attempts if job.state.onchain else 0
            rows.append(
                (
                    job,
                    AuditKind.BROADCAST,
                    broadcast_row(
                        job.state.signed.txid,
                        via=job.client.kind,
                        url=job.client.url,
                        attempt=previous + job.attempts,
                        answer=job.answer,
                    ),
                )
            )
            if job.answer.outcome is Outcome.REJECTED:
                rows.append((job, AuditKind.CONFIRMATION, _after_rejection(job)))
        for job, row in _commit(service, rows):
            job.rows.append(row)
        pending = [j for j in pending if j.answer is not None and j.answer.outcome is Outcome.UNREACHABLE]
        if not pending or round_no >= retry.attempts:
            break
        sleep(retry.delay(round_no))
    # Each request's view after its new rows, folded from its view before them (no re-derivation),
    # and handed to the queue index as it now is.
    after_states = {}
    for job in jobs:
        after = job.state
        if job.rows:
            after = dataclasses.replace(job.state, onchain=fold(job.rows, job.state.onchain), last_seq=job.rows[-1].seq)
        after_states[job.state.request_id] = after
    service.sync(list(after_states.values()))
    out = []
    for job in jobs:
        after = after_states[job.state.request_id]
        assert after.signed is not None
        answer = job.answer
        skipped = _settled(job.state) or (None if job.client is not None else "no node configured for its chain")
        reason = None if answer is None else answer.reason
        if answer is not None and answer.outcome is Outcome.UNREACHABLE:
            reason = f"node unreachable after {job.attempts} attempt(s): {answer.answer[:300]}"
        out.append(
            BroadcastResult(
                after.request_id,
                after.signed.txid,
                None if answer is None else answer.outcome,
                job.attempts,
                reason,
                after.onchain.to_json() if after.onchain else None,
                skipped if answer is None else None,
            )
        )
    return out


def _after_rejection(job: _Job) -> dict[str, Any]:
    """The confirmation row after a rejection: ``failed`` with the node's reason, unless the node has the bytes.

    A node refuses bytes it already mined ("nonce too low" for our own transaction), so it is asked
    about the txid first: a transaction it knows is recorded where it is, not as failed.
    """
    assert job.client is not None and job.state.signed is not None and job.answer is not None
    txid = job.state.signed.txid
    sender, nonce = sender_and_nonce(job.state)
    try:
        status = job.client.status(txid, sender=sender, nonce=nonce)
    except (NodeUnreachable, Exception):
        status = None
    if status is not None and status.state in (OnChainState.PENDING, OnChainState.CONFIRMED):
        # Mined already: recorded as pending at its depth; the watcher confirms it at the configured depth.
        job.confirmed = dataclasses.replace(status, state=OnChainState.PENDING, depth=status.depth or 0)
        return confirmation_row(txid, job.confirmed)
    reason = job.answer.reason or job.answer.answer[:300]
    return confirmation_row(txid, TxStatus(OnChainState.FAILED, reason=reason, answer=job.answer.answer))


def _commit(
    service: Withdrawals, rows: Sequence[tuple[_Job, AuditKind, dict[str, Any]]]
) -> list[tuple[_Job, AuditRow]]:
    """Append ``rows`` in one audit transaction; returns each job with its committed row."""
    if not rows:
        return []
    out = []
    with service.audit.transaction() as tx:
        for job, kind, payload in rows:
            out.append((job, tx.append(kind, payload, request_id=job.state.request_id, actor="broadcast")))
    return out
