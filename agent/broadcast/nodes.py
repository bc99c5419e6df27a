"""What a node said, as typed records shared by every node client (EVM JSON-RPC, Esplora, Bitcoin Core RPC).

A client never raises for what a node answers: an unreachable node, a rejection and an acceptance
are all :class:`NodeAnswer` values, so the caller records each one verbatim in the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

#: A node's answer is kept verbatim in the audit log, up to this many characters.
ANSWER_LIMIT = 16_384


class NodeKind(StrEnum):
    EVM_RPC = "evm-rpc"
    ESPLORA = "esplora"
    BITCOIN_RPC = "bitcoin-rpc"
    #: Tatum's API (``/v3/<chain>/broadcast``), used by ``kms-agent daemon``.
    TATUM = "tatum"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    #: The node refused the transaction; retrying the same bytes will not help.
    REJECTED = "rejected"
    #: No answer (connection refused, timeout, 5xx): retry with backoff.
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class NodeAnswer:
    outcome: Outcome
    #: HTTP status, None when no HTTP answer came.
    http_status: int | None
    #: The node's answer verbatim (body text, or the transport error), cut to ANSWER_LIMIT.
    answer: str
    #: The node's own reason for a rejection (``nonce too low``, ``bad-txns-inputs-missingorspent``).
    reason: str | None = None
    #: The txid the node reports, when it reports one.
    txid: str | None = None


class OnChainState(StrEnum):
    #: Known to the node, not yet in a block.
    PENDING = "pending"
    CONFIRMED = "confirmed"
    #: Mined but failed (an EVM revert), or rejected by the node.
    FAILED = "failed"
    #: Gone from the node's mempool and not in a block.
    DROPPED = "dropped"
    #: Another transaction with the same sender and nonce was mined instead (EVM).
    REPLACED = "replaced"
    #: The node does not know the transaction (yet).
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class TxStatus:
    state: OnChainState
    #: Confirmations: 1 when in the tip block.
    depth: int | None = None
    block_hash: str | None = None
    block_height: int | None = None
    reason: str | None = None
    #: The node's answer verbatim (cut to ANSWER_LIMIT).
    answer: str = ""
    replaced_by: str | None = None


class NodeClient(Protocol):
    """One node for one chain and network, over httpx."""

    kind: NodeKind
    url: str

    def send(self, raw_hex: str) -> NodeAnswer:
        """Submit signed bytes once (the caller retries)."""
        ...

    def status(self, txid: str, *, sender: str | None = None, nonce: int | None = None) -> TxStatus:
        """Where ``txid`` is; ``sender`` and ``nonce`` (EVM) let a replacement by the same nonce be recognised."""
        ...

    def close(self) -> None: ...


class NodeUnreachable(Exception):
    """A status question got no answer (connection refused, timeout, 5xx): ask again later.

    Only :meth:`NodeClient.status` raises it; nothing is recorded for a question nobody answered.
    """


def clip(text: str) -> str:
    return text if len(text) <= ANSWER_LIMIT else text[:ANSWER_LIMIT] + f"... [{len(text) - ANSWER_LIMIT} more]"
