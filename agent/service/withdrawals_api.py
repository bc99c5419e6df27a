"""``/v1/withdrawals``: submit (unsigned bytes or an intent, idempotent), read, list, cancel.

Every route runs the synchronous :class:`~agent.withdrawals.service.Withdrawals` in a worker thread;
the service takes the data directory's locks itself and writes only audit rows, and only once a
request is accepted for decoding (a request refused for its input leaves nothing behind).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import Body, Header, Path, Query, Response

from agent.errors import PolicyDenied, UsageError
from agent.service.cancel import cancel as cancel_request
from agent.service.deps import Context, ServiceContext, run_sync, v1_router
from agent.service.errors import ApiError
from agent.service.idempotency import Entry
from agent.service.models import (
    CancelBody,
    ErrorBody,
    IntentSubmit,
    RequestId,
    Status,
    Submit,
    TxSubmit,
    Unreadable,
    Withdrawal,
    WithdrawalList,
)
from agent.withdrawals.ledger import RequestState
from agent.withdrawals.service import Withdrawals, tx_bytes

router = v1_router(tags=["withdrawals"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="any printable ASCII up to 255 characters: a retry with the same key and body returns "
        "the same withdrawal (200), the same key with another body is a 409",
    ),
]
IdPath = Annotated[RequestId, Path(description="the request id (32 hex digits)")]


@router.post(
    "/withdrawals",
    status_code=201,
    response_model=Withdrawal,
    summary="submit a withdrawal: unsigned bytes or an intent",
    responses={
        200: {"model": Withdrawal, "description": "a retry: the withdrawal this Idempotency-Key created"},
        201: {"description": "queued for approvals, or denied by policy (status `denied`, with `reasons`)"},
        409: {"model": ErrorBody, "description": "the Idempotency-Key was used with another body"},
        429: {"model": ErrorBody, "description": "too many submits waiting; retry after Retry-After seconds"},
    },
)
async def submit(
    ctx: Context,
    response: Response,
    body: Annotated[Submit, Body()],
    idempotency_key: IdempotencyKey = None,
) -> Withdrawal:
    async with ctx.admission.slot():
        state, created = await run_sync(_submit, ctx, body, idempotency_key)
    response.status_code = 201 if created else 200
    if created and state.pending:
        from agent.service.notify import notify_waiting

        # The operators hear about it (desktop notifier, the approval-waiting alert channel); never blocks.
        notify_waiting(ctx.home, state.request_id, _waiting_text(state))
    return Withdrawal.from_record(state.to_record())


def _waiting_text(state: RequestState) -> str:
    paid = ", ".join(
        f"{o.get('amountHuman', o['amount'])} to {o['address']}"
        for o in state.summary.get("outputs", [])
        if not o.get("isChange")
    )
    return f"{state.chain} {'testnet' if state.testnet else 'MAINNET'} withdrawal from {state.signature_id}: {paid}"


@router.get("/withdrawals/{request_id}", response_model=Withdrawal, responses={404: {"model": ErrorBody}})
async def get_withdrawal(ctx: Context, request_id: IdPath) -> Withdrawal:
    """Status, the decoded summary, approvals so far, the signed transaction once there is one."""
    state = await run_sync(_load, ctx.withdrawals, request_id)
    return Withdrawal.from_record(state.to_record())


@router.get("/withdrawals", response_model=WithdrawalList)
async def list_withdrawals(
    ctx: Context,
    status: Annotated[Status | None, Query(description="only requests in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, lt=2**31)] = 0,
) -> WithdrawalList:
    """Requests from the queue index, oldest first (brought level with the audit log first)."""
    records = await run_sync(_list, ctx.withdrawals, status.value if status else None)
    readable = [r for r in records if r.get("status") != "unreadable"]
    return WithdrawalList(
        withdrawals=[Withdrawal.from_record(r) for r in readable[offset : offset + limit]],
        total=len(readable),
        unreadable=[Unreadable(id=r["id"], error=str(r.get("error", ""))) for r in records if r not in readable],
    )


@router.post(
    "/withdrawals/{request_id}/cancel",
    response_model=Withdrawal,
    responses={
        403: {"model": ErrorBody, "description": "not the request's initiator"},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "no longer pending (signed, denied, rejected, expired)"},
        429: {"model": ErrorBody},
    },
)
async def cancel(ctx: Context, request_id: IdPath, body: CancelBody) -> Withdrawal:
    """Cancel a pending withdrawal, by the initiator it was created with; it can no longer be signed."""
    async with ctx.admission.slot():
        state = await run_sync(_cancel, ctx.withdrawals, request_id, body.initiator)
    return Withdrawal.from_record(state.to_record())


# --- the synchronous work, in a worker thread -------------------------------------------------------
def _load(service: Withdrawals, request_id: str) -> RequestState:
    try:
        return service.request(request_id)
    except UsageError as exc:  # the id is the only input: an unknown or non-withdrawal id
        raise ApiError(404, exc.message, request_id=request_id.lower()) from None


def _list(service: Withdrawals, status: str | None) -> list[dict[str, Any]]:
    service.sync()
    return service.queue.list(status)


def _cancel(service: Withdrawals, request_id: str, initiator: str) -> RequestState:
    _load(service, request_id)
    return cancel_request(service, request_id, initiator=initiator)


def _submit(ctx: ServiceContext, body: TxSubmit | IntentSubmit, key: str | None) -> tuple[RequestState, bool]:
    """Create the request, or with ``key`` return the one that key created. True when created now."""
    service = ctx.withdrawals
    tx = _unsigned_tx(service, body)
    if key is None:
        return _create(service, body, tx), True
    digest = _body_sha256(body)
    store = ctx.idempotency
    with store.held(key):
        entry = store.get(key)
        if entry is not None:
            if entry.body_sha256 != digest:
                raise ApiError(
                    409,
                    "this Idempotency-Key was already used with a different request body",
                    code="idempotency-conflict",
                    request_id=entry.request_id,
                )
            found = entry.request_id or _created_after_claim(service, entry, body, tx)
            if found is not None:
                store.complete(key, found)
                return service.request(found), False
        store.claim(key, digest, service.audit.last_seq())
        try:
            state = _create(service, body, tx)
        except BaseException:
            store.forget(key)  # nothing was created: the key may be used again
            raise
        store.complete(key, state.request_id)
        return state, True


def _create(service: Withdrawals, body: TxSubmit | IntentSubmit, tx: str) -> RequestState:
    try:
        return service.create(
            chain=body.chain, signature_id=body.signatureId, index=body.index, tx=tx, initiator=body.initiator
        )
    except PolicyDenied as exc:
        if exc.request_id is None:
            raise
        return service.request(exc.request_id)  # recorded as denied: answered, with its reasons


def _body_sha256(body: TxSubmit | IntentSubmit) -> str:
    canonical = {"kind": "tx" if isinstance(body, TxSubmit) else "intent", **body.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _created_after_claim(service: Withdrawals, entry: Entry, body: TxSubmit | IntentSubmit, tx: str) -> str | None:
    """The request an interrupted submit of this key created after claiming it, if it got that far."""
    from agent.chains import get_chain

    raw = tx_bytes(tx).hex()
    chain = get_chain(body.chain).name
    for row in service.audit.rows(kinds=["request"], since=entry.created_at - 300):
        p = row.payload or {}
        if (
            row.seq > entry.audit_seq
            and p.get("tx") == raw
            and p.get("chain") == chain
            and p.get("signature_id") == body.signatureId
            and p.get("index") == body.index
            and p.get("initiator") == body.initiator
        ):
            return str(row.request_id)
    return None


def _unsigned_tx(service: Withdrawals, body: TxSubmit | IntentSubmit) -> str:
    """The unsigned transaction: as given, or built from the intent and the wallet's public index."""
    if isinstance(body, TxSubmit):
        tx_bytes(body.tx)  # hex or base64, or a UsageError before anything else
        return body.tx
    from agent.chains import get_chain
    from agent.chains.utxo import Utxo
    from agent.withdrawals.intent import Intent, build

    wallet = service.vault().wallet(body.signatureId)
    impl = get_chain(body.chain)
    try:
        coins: list[Any] = []
        change = None
        if body.utxos is not None:
            for coin in body.utxos:
                address = coin.address
                if address is None:
                    if coin.index is None or wallet.xpub is None:
                        raise UsageError("each coin needs its address (or, for an xpub wallet, its index)")
                    address = impl.address_from_xpub(wallet.xpub, coin.index, testnet=wallet.testnet)
                prev = bytes.fromhex(coin.prev_tx) if coin.prev_tx else None
                coins.append(Utxo(coin.txid, coin.vout, int(coin.amount), address, prev))
            change = (
                impl.address_from_xpub(wallet.xpub, body.changeIndex, testnet=wallet.testnet)
                if wallet.xpub
                else wallet.address
            )
        intent = Intent(
            body.chain,
            body.to,
            int(body.amount),
            token=body.asset,
            nonce=body.nonce,
            max_fee_per_gas=int(body.maxFeePerGas) if body.maxFeePerGas is not None else None,
            utxos=coins,
            fee_rate=body.feeRate,
            change_address=change,
        )
        return build(intent, testnet=wallet.testnet)
    except (ValueError, TypeError, KeyError, OverflowError, AttributeError) as exc:
        # What the chain libraries raise for an address or amount they cannot encode.
        raise UsageError(f"cannot build the transaction from this intent: {type(exc).__name__}: {exc}") from None
