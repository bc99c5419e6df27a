"""Where a signed request is on its chain, derived from its audit rows alone (docs/broadcast.md §5).

The request's ``status`` stays what the approvals made it (``signed``); this is a second, separate
view folded from its ``broadcast`` rows (each attempt and the node's answer), its ``confirmation``
rows (each change the watcher saw) and its ``tx-stuck`` alert row. Nothing else is kept anywhere:
deleting every index still leaves the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agent.broadcast.nodes import OnChainState, Outcome

if TYPE_CHECKING:
    from agent.audit import AuditRow

#: The alert rule the watcher records once for a transaction not confirmed ``stuck_after`` s after its broadcast.
STUCK_RULE = "tx-stuck"
#: What the request's JSON shows of the node's last answer (the whole answer is in its audit row).
ANSWER_SHOWN = 1000


class Phase(StrEnum):
    """The on-chain view of a signed request: :class:`OnChainState` plus the two steps before a node has it."""

    #: Broadcast attempts were made and no node answered.
    UNREACHABLE = "unreachable"
    #: A node accepted the bytes; the watcher has not seen them since.
    BROADCAST = "broadcast"
    PENDING = "pending"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    DROPPED = "dropped"
    REPLACED = "replaced"
    UNKNOWN = "unknown"


#: Phases the watcher stops asking about. DROPPED is final for the watcher; a new accepted
#: broadcast of the same bytes starts following them again.
FINAL = frozenset({Phase.CONFIRMED, Phase.FAILED, Phase.DROPPED, Phase.REPLACED})
#: Phases the watcher asks the node about.
FOLLOWED = frozenset({Phase.BROADCAST, Phase.PENDING, Phase.UNKNOWN})


@dataclass(frozen=True)
class OnChain:
    phase: Phase
    txid: str
    #: Broadcast attempts recorded (every one, whatever the node said).
    attempts: int
    #: Whether any node ever accepted these bytes.
    accepted: bool
    depth: int | None
    block_height: int | None
    block_hash: str | None
    reason: str | None
    replaced_by: str | None
    #: The node URL (credentials stripped), outcome and verbatim answer of the last broadcast row.
    node: str | None
    last_outcome: str | None
    last_answer: str | None
    #: When a node first accepted the bytes (since the last ``dropped``): the stuck clock starts here.
    accepted_at: int | None
    stuck_alerted: bool
    updated_at: int
    #: The newest row folded in.
    seq: int

    @property
    def final(self) -> bool:
        return self.phase in FINAL

    def to_json(self) -> dict[str, Any]:
        answer = self.last_answer
        if answer is not None and len(answer) > ANSWER_SHOWN:
            answer = answer[:ANSWER_SHOWN] + "..."
        return {
            "state": self.phase.value,
            "txid": self.txid,
            "attempts": self.attempts,
            "accepted": self.accepted,
            "depth": self.depth,
            "block_height": self.block_height,
            "block_hash": self.block_hash,
            "reason": self.reason,
            "replaced_by": self.replaced_by,
            "node": self.node,
            "last_outcome": self.last_outcome,
            "last_answer": answer,
            "accepted_at": self.accepted_at,
            "stuck_alerted": self.stuck_alerted,
            "updated_at": self.updated_at,
            "audit_seq": self.seq,
        }


def is_chain_row(row: AuditRow) -> bool:
    """A row :func:`fold` reads: a broadcast, a confirmation, or a stuck alert of the request."""
    if row.kind in ("broadcast", "confirmation"):
        return True
    return row.kind == "alert" and isinstance(row.payload, dict) and row.payload.get("rule") == STUCK_RULE


def fold(rows: Iterable[AuditRow], start: OnChain | None = None) -> OnChain | None:
    """The request's on-chain view after ``rows`` (oldest first; other kinds are skipped); None if none.

    :param start: the view before ``rows`` (a writer that just appended rows folds only those).
    """
    state = start
    for row in rows:
        if not is_chain_row(row):
            continue
        body: dict[str, Any] = row.payload if isinstance(row.payload, dict) else {}
        if state is None:
            state = OnChain(
                Phase.UNREACHABLE, str(body.get("txid", "")), 0, False, None, None, None, None, None, None, None, None,
                None, False, row.ts, row.seq,
            )  # fmt: skip
        state = replace(state, updated_at=row.ts, seq=row.seq)
        if row.kind == "broadcast":
            state = _broadcast(state, body, row.ts)
        elif row.kind == "confirmation":
            state = _confirmation(state, body)
        else:
            state = replace(state, stuck_alerted=True)
    return state


def _broadcast(state: OnChain, body: dict[str, Any], ts: int) -> OnChain:
    state = replace(
        state,
        attempts=state.attempts + 1,
        txid=str(body.get("txid") or state.txid),
        node=body.get("url"),
        last_outcome=body.get("outcome"),
        last_answer=body.get("answer"),
    )
    if body.get("outcome") == Outcome.ACCEPTED:
        mined_failure = state.phase is Phase.FAILED and state.block_hash is not None
        if state.phase in (Phase.UNREACHABLE, Phase.DROPPED, Phase.UNKNOWN) or (
            state.phase is Phase.FAILED and not mined_failure
        ):
            # Accepted again after nothing, a drop or a rejection: follow the bytes from here.
            state = replace(state, phase=Phase.BROADCAST, reason=None, depth=None)
        state = replace(state, accepted=True, accepted_at=state.accepted_at if state.accepted_at is not None else ts)
    elif body.get("outcome") == Outcome.UNREACHABLE and state.phase is Phase.UNREACHABLE:
        state = replace(state, reason=f"node unreachable: {str(body.get('answer', ''))[:200]}")
    return state


def _confirmation(state: OnChain, body: dict[str, Any]) -> OnChain:
    try:
        phase = Phase(OnChainState(str(body.get("state"))).value)
    except ValueError:
        return state  # a state this kms-agent does not know proves nothing
    state = replace(
        state,
        phase=phase,
        depth=body.get("depth"),
        block_height=body.get("block_height"),
        block_hash=body.get("block_hash"),
        reason=body.get("reason"),
        replaced_by=body.get("replaced_by"),
    )
    if phase is Phase.DROPPED:
        state = replace(state, accepted_at=None, stuck_alerted=False)
    return state
