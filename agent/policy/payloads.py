"""Approval payloads built from policy objects: withdrawals from the decoded summary, and policy changes.

A withdrawal's payload lists the outputs from the *decoded* summary (change included, in order),
so what the approvers sign is what policy judged (docs/approvals.md §2).

A policy change is itself an approval request (docs/policy.md §5). Changing limits, the
allowlist or the quorum is the most sensitive thing an operator can do, so it goes through the
same touch-approval path as a withdrawal: the approvers sign a payload with
``action = "policy-change"`` whose ``unsigned_tx_sha256`` is the SHA-256 of the *new* policy's
canonical bytes, and whose ``policy_generation`` is the generation being replaced (approvals
given for a change to an older policy go stale the moment any other change lands).
"""

from __future__ import annotations

from agent.approvals.payload import Action, ApprovalPayload, PayloadOutput
from agent.approvals.quorum import QuorumRule
from agent.errors import PolicyFormatError
from agent.policy.rules import POLICY_CHANGE_TTL, Policy
from agent.policy.summary import RequestSummary


def withdrawal_payload(
    summary: RequestSummary,
    *,
    vault_id: bytes,
    request_id: bytes,
    derivation_index: int,
    unsigned_tx_sha256: bytes,
    nonce: int | None,
    expires_at: int,
    policy_generation: int,
) -> ApprovalPayload:
    """The payload approvers sign for a withdrawal that policy judged from ``summary``.

    ``unsigned_tx_sha256`` must be SHA-256 of the exact bytes that will be signed (the PSBT or the
    unsigned EVM transaction), recomputed from those bytes, not taken from the request.

    :raises ProgrammingError: a malformed summary (policy would have denied it first).
    """
    return ApprovalPayload(
        vault_id=vault_id,
        request_id=request_id,
        chain=summary.chain,
        network=summary.network,
        signature_id=summary.signature_id,
        derivation_index=derivation_index,
        unsigned_tx_sha256=unsigned_tx_sha256,
        outputs=tuple(PayloadOutput(o.address, o.amount, o.asset) for o in summary.outputs),
        fee=summary.fee,
        nonce=nonce,
        expires_at=expires_at,
        policy_generation=policy_generation,
        action=Action.WITHDRAWAL,
    )


def policy_change_payload(
    *, vault_id: bytes, request_id: bytes, current: Policy, new: Policy, expires_at: int
) -> ApprovalPayload:
    """The payload approvers sign to replace ``current`` by ``new``.

    :raises PolicyFormatError: ``new`` is not exactly the next generation.
    """
    if new.generation != current.generation + 1:
        raise PolicyFormatError(f"the new policy must be generation {current.generation + 1}, not {new.generation}")
    return ApprovalPayload.for_statement(
        Action.POLICY_CHANGE,
        vault_id=vault_id,
        request_id=request_id,
        statement_sha256=new.sha256(),
        expires_at=expires_at,
        policy_generation=current.generation,
    )


def policy_change_rule(current: Policy) -> QuorumRule:
    """The quorum for changing ``current``: its ``admin_approvals``, never the initiator, 7-day TTL."""
    return QuorumRule(
        current.admin_approvals,
        initiator_may_approve=False,
        approval_ttl=POLICY_CHANGE_TTL,
        policy_generation=current.generation,
    )
