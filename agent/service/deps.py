"""What every router of the API shares, so routers written in other modules plug in the same way.

A router for ``/v1/...`` is made with :func:`v1_router` (bearer token on TCP, the common error
responses in its OpenAPI), takes the :data:`Context` dependency, runs the synchronous withdrawal
service with :func:`run_sync`, and wraps anything that writes in ``async with ctx.admission.slot()``.
:func:`agent.service.app.create_app` includes such routers through ``extra_routers``.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from agent.service.errors import ApiError
from agent.service.idempotency import IdempotencyStore
from agent.service.limits import Admission
from agent.service.models import ErrorBody
from agent.withdrawals.service import Withdrawals

T = TypeVar("T")

#: The ASGI scope key a listener sets to say how the client connected (``unix`` or ``tcp``).
VIA = "kms_agent.via"


@dataclass
class ServiceContext:
    """One agent's state, shared by every request (``request.app.state.kms``)."""

    home: Path
    #: The bearer token TCP clients must send; None when no listener needs one.
    token: str | None
    admission: Admission
    idempotency: IdempotencyStore = field(init=False)
    _withdrawals: Withdrawals | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.idempotency = IdempotencyStore(self.state)

    @property
    def state(self) -> Path:
        return self.home / "state"

    @property
    def withdrawals(self) -> Withdrawals:
        """The withdrawal service (thread-safe: each call opens its own SQLite connections)."""
        with self._lock:
            if self._withdrawals is None:
                self._withdrawals = Withdrawals(self.home)
            return self._withdrawals


def get_context(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.kms
    return ctx


Context = Annotated[ServiceContext, Depends(get_context)]

_bearer = HTTPBearer(auto_error=False, description="the token in `$KMS_AGENT_HOME/state/api-token` (TCP only)")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Admit Unix-socket clients (file permissions are the control); TCP clients need the bearer token."""
    ctx = get_context(request)
    if ctx.token is None or request.scope.get(VIA) == "unix":
        return
    supplied = credentials.credentials if credentials is not None else ""
    # Constant time: the comparison leaks nothing about how much of a guess was right.
    if not (supplied and hmac.compare_digest(supplied.encode(), ctx.token.encode())):
        raise ApiError(
            401,
            "missing or wrong bearer token" if supplied else "this listener needs `Authorization: Bearer <token>`",
            hint="the token is in $KMS_AGENT_HOME/state/api-token",
            headers={"WWW-Authenticate": "Bearer"},
        )


Authorized = Depends(require_token)

#: Error responses every authenticated route can give (documented in its OpenAPI operation).
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token (TCP)"},
    413: {"model": ErrorBody, "description": "the body is larger than 256 KiB"},
    422: {"model": ErrorBody, "description": "the request does not match the schema, or cannot be acted on"},
    503: {"model": ErrorBody, "description": "the vault, the agent's state or the audit store is unusable"},
}


def v1_router(**kwargs: Any) -> APIRouter:
    """A router under ``/v1``: bearer token on TCP, the common error responses."""
    return APIRouter(prefix="/v1", dependencies=[Authorized], responses=COMMON_ERRORS, **kwargs)


async def run_sync(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (the withdrawal service takes file locks and fsyncs) in a worker thread."""
    return await run_in_threadpool(func, *args, **kwargs)
