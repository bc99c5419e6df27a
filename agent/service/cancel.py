"""A withdrawal cancelled by whoever initiated it, before it is signed.

An application is not an operator: it cannot veto (``Withdrawals.reject`` takes an operator and writes
a token-free ``rejection`` row in an operator's name). A cancel is instead a ``decision`` row with
outcome ``rejected``, stage ``cancel`` and the reason ``cancelled``: the ledger derives status
``rejected`` from it (``agent.withdrawals.ledger.derive``), and every later decision on the request,
taken under the writer lock, re-derives that status and refuses to sign. The row is written under
the writer lock after re-reading the request, so a cancel racing a signature is either committed
before it (nothing signs) or refused ("already signed").

What proves the caller is the initiator is only the text the request recorded: the API's bearer
token (or the socket's file permissions) is what admits the caller at all.
"""

from __future__ import annotations

from agent.audit import AuditKind
from agent.errors import ApprovalError
from agent.locks import writer_lock
from agent.service.errors import ApiError
from agent.withdrawals.ledger import RequestState, Status
from agent.withdrawals.service import Withdrawals


def cancel(service: Withdrawals, request_id: str, *, initiator: str) -> RequestState:
    """Cancel a pending request on behalf of its initiator.

    :raises ApiError: 403 when ``initiator`` is not the text the request recorded.
    :raises ApprovalError: the request is no longer pending (signed, denied, rejected, expired).
    """
    with writer_lock(service.state):
        state = service.request(request_id)
        rid = state.request_id
        if state.initiator is None or state.initiator != initiator:
            raise ApiError(
                403,
                f"request {rid} can be cancelled only by its initiator",
                hint="give the initiator the request was created with",
                request_id=rid,
            )
        if state.status is Status.SIGNED:
            raise ApprovalError(f"request {rid} is already signed; too late to cancel", request_id=rid)
        if not state.pending:
            raise ApprovalError(f"request {rid} is {state.status.value}; nothing to cancel", request_id=rid)
        service.audit.append(
            AuditKind.DECISION,
            {
                "stage": "cancel",
                "outcome": "rejected",
                "reasons": [{"rule": "cancelled", "detail": f"cancelled by its initiator {initiator}"}],
            },
            request_id=rid,
            actor=initiator,
        )
        service.sync()
        return service.request(rid)
