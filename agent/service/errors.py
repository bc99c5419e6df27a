"""One JSON error shape for every failed request, and the HTTP status of each kms-agent error.

Every 4xx and 5xx the agent answers carries ``{"error": {"code", "message", "hint", "request_id"}}``:
``code`` is the CLI's ``--json`` code for a :class:`~agent.errors.KmsAgentError` (``usage``,
``approval``, ``state``, ...: ``agent.errors.ERROR_CODES``), or one of the HTTP-level codes below
(``unauthorized``, ``too-large``, ``invalid-request``, ...). A request never gets a traceback: an
unexpected exception is logged on the agent's stderr and answered with a bare ``internal`` 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.errors import (
    KmsAgentError,
    PolicyDenied,
    StateError,
    VaultNotFound,
    error_code,
)

logger = logging.getLogger(__name__)

#: HTTP status per CLI exit code (README "Exit codes"). Usage and chain errors are the caller's
#: request (422: well-formed, but not something the agent can act on); token and approval or policy
#: refusals conflict with the request's state (409); an unusable vault, agent state or audit store
#: is the agent's problem, and may pass (503).
STATUS_BY_EXIT: dict[int, int] = {
    1: 500,
    2: 422,
    3: 409,
    4: 409,
    5: 409,
    6: 503,
    7: 503,
    8: 422,
    9: 503,
    130: 503,
}

#: ``error.code`` for problems found before any kms-agent code ran.
HTTP_CODES: dict[int, str] = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    411: "length-required",
    413: "too-large",
    415: "unsupported-media-type",
    422: "invalid-request",
    429: "overloaded",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """An HTTP-level refusal raised by the service's own code (auth, idempotency, overload, not found)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or HTTP_CODES.get(status, "error")
        self.message = message
        self.hint = hint
        self.request_id = request_id
        self.headers = dict(headers or {})


def error_body(
    code: str, message: str, *, hint: str | None = None, request_id: str | None = None
) -> dict[str, dict[str, Any]]:
    error: dict[str, Any] = {"code": code, "message": message, "hint": hint}
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    hint: str | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, hint=hint, request_id=request_id), status_code=status, headers=dict(headers or {})
    )


def status_for(exc: KmsAgentError) -> int:
    """The HTTP status of a kms-agent error (see :data:`STATUS_BY_EXIT`)."""
    if isinstance(exc, VaultNotFound):
        return 503
    if isinstance(exc, PolicyDenied):
        return 409
    return STATUS_BY_EXIT.get(exc.exit_code, 500)


def kms_error_response(exc: KmsAgentError) -> JSONResponse:
    status = status_for(exc)
    # A writer lock or audit lock held past its deadline, a full disk: worth retrying later.
    headers = {"Retry-After": "1"} if isinstance(exc, StateError) else None
    return error_response(
        status, error_code(exc.exit_code), exc.message, hint=exc.hint, request_id=exc.request_id, headers=headers
    )


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    """400 for a body that is not JSON at all, 422 for JSON that does not fit the schema."""
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the request body is not valid JSON"
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",)) or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "; ".join(parts) + more if parts else "the request does not match the schema"


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the one JSON shape."""

    @app.exception_handler(KmsAgentError)
    async def _kms(request: Request, exc: KmsAgentError) -> JSONResponse:
        return kms_error_response(exc)

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status, exc.code, exc.message, hint=exc.hint, request_id=exc.request_id, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return error_response(status, HTTP_CODES[status], message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return error_response(exc.status_code, HTTP_CODES.get(exc.status_code, "error"), detail, headers=exc.headers)


class CatchAll:
    """The outermost middleware: a bug anywhere below answers a bare JSON 500 (logged here, with its
    traceback, on the agent's stderr) and the connection stays usable. Starlette's own last-resort
    handler would answer, then re-raise into the server, which drops the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            logger.error("unexpected error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            if started:
                raise  # half a response is out: only closing the connection can tell the client
            response = error_response(
                500, "internal", "unexpected error in the agent (see its log); nothing more is known"
            )
            await response(scope, receive, send)
