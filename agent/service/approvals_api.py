"""``POST /v1/withdrawals/{id}/approvals`` and ``/reject``: what `kms-agent approve|reject` send to the agent.

Nothing a client sends is trusted for a decision: each approval must verify over the request's
digest against a key enrolled in the signed vault header (``Withdrawals.decide_held`` re-derives
everything from the audit log under the writer lock, as the one-shot CLI does). A share is used
only to open the vault; a wrong one makes opening fail, never a signature.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from agent.approvals import RecordedApproval, Rejection
from agent.errors import UsageError
from agent.service.deps import Context, run_sync, v1_router
from agent.tokens.base import Approval
from agent.vault.vault import Collected, Touch
from agent.withdrawals.holding import ShareHolder
from agent.withdrawals.service import Withdrawals

_HEX16 = r"^[0-9a-f]{32}$"
RequestId = Annotated[str, PathParam(pattern=_HEX16, description="the withdrawal's id (32 hex digits)")]


class VetoTouchIn(BaseModel):
    """The vetoing operator's touch over the request's rejection digest (docs/approvals.md §8).

    Also the token's evidence part of an approving touch (:class:`TouchIn`).
    """

    model_config = ConfigDict(extra="forbid")

    slot_id: str = Field(pattern=_HEX16)
    kind: str = Field(max_length=32)
    auth_data: str = Field(max_length=4096, description="base64")
    signature: str = Field(max_length=1024, description="base64")
    sign_count: int = Field(ge=0, le=2**32 - 1)
    user_present: bool
    user_verified: bool


class TouchIn(VetoTouchIn):
    """One operator's touch: the token's evidence over the request's digest, and the share it unwrapped."""

    operator_id: str = Field(pattern=_HEX16)
    share: str | None = Field(default=None, max_length=1024, description="the operator's SLIP-39 share")


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    touches: list[TouchIn] = Field(min_length=1, max_length=16)


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="", max_length=1024)
    touch: VetoTouchIn | None = Field(
        default=None, description="required: the operator's signed veto (a veto without one is refused)"
    )


def _b64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{name} must be base64") from None


def approvals_router(holder: ShareHolder) -> APIRouter:
    """The approval endpoints of one agent, over its share holder (the data directory is the context's)."""
    router = v1_router(tags=["approvals"])

    def touches_of(service: Withdrawals, body: ApproveIn) -> Collected:
        vault = service.vault()
        collected = Collected(vault)
        for t in body.touches:
            operator_id, slot_id = bytes.fromhex(t.operator_id), bytes.fromhex(t.slot_id)
            slot = next((s for s in vault.header.slots if s.slot_id == slot_id), None)
            if slot is None or slot.operator_id != operator_id:
                raise UsageError(f"slot {t.slot_id} is not a token of operator {t.operator_id} in this vault")
            approval = Approval(
                t.kind,
                _b64(t.auth_data, "auth_data"),
                _b64(t.signature, "signature"),
                t.sign_count,
                t.user_present,
                t.user_verified,
            )
            collected.touches.append(
                Touch(vault.operator_name(operator_id), slot.label, approval, operator_id, slot_id)
            )
            if t.share is not None:
                if not re.fullmatch(r"[a-z]+( [a-z]+){19,}", t.share):
                    raise UsageError("a share must be a SLIP-39 mnemonic (lower-case words)")
                collected.shares[operator_id] = bytearray(t.share.encode())
        return collected

    def veto_of(service: Withdrawals, request_id: str, body: RejectIn) -> Rejection:
        """The signed veto as sent; ``Withdrawals.record_rejection`` verifies it against the header."""
        if body.touch is None:
            raise UsageError(
                "a veto must be signed with the operator's touch", hint="use `kms-agent reject` of this version"
            )
        op = service.vault().header.operator_named(body.operator)
        if op is None:
            raise UsageError(f"no operator named {body.operator!r}")
        rid, t = bytes.fromhex(request_id), body.touch
        return Rejection(
            rid,
            op.operator_id,
            0,
            body.reason,
            RecordedApproval(
                rid,
                op.operator_id,
                bytes.fromhex(t.slot_id),
                t.kind,
                _b64(t.auth_data, "auth_data"),
                _b64(t.signature, "signature"),
                t.sign_count,
                t.user_present,
                t.user_verified,
                0,
            ),
        )

    def status(service: Withdrawals, request_id: str, waiting: bool) -> dict[str, Any]:
        state = service.request(request_id)
        record = state.to_record()
        record["vault_touches"] = {
            "held": len(holder.held_by(request_id)),
            "needed": service.vault().header.quorum,
            "waiting": waiting,
        }
        return record

    @router.post("/withdrawals/{request_id}/approvals", summary="record operators' touches; sign when possible")
    async def approve(request_id: RequestId, body: ApproveIn, ctx: Context) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            service = ctx.withdrawals
            collected = touches_of(service, body)
            _, waiting = service.decide_held(request_id, collected, holder)
            return status(service, request_id, waiting)

        async with ctx.admission.slot():
            return await run_sync(work)

    @router.post("/withdrawals/{request_id}/reject", summary="an operator's veto")
    async def reject(request_id: RequestId, body: RejectIn, ctx: Context) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            service = ctx.withdrawals
            service.reject(
                request_id, operator=body.operator, reason=body.reason, rejection=veto_of(service, request_id, body)
            )
            holder.drop(request_id)
            return status(service, request_id, False)

        async with ctx.admission.slot():
            return await run_sync(work)

    @router.get("/withdrawals/{request_id}/touches", summary="shares held for a request, and how many open the vault")
    async def touches(request_id: RequestId, ctx: Context) -> dict[str, Any]:
        result = await run_sync(lambda: status(ctx.withdrawals, request_id, False))
        touches: dict[str, Any] = result["vault_touches"]
        return touches

    return router
