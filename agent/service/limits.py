"""Two bounds that keep a busy or hostile client from hurting the agent.

* :class:`BodyLimit`: an ASGI middleware that reads the whole body (``Content-Length`` or chunked)
  before any route parses it, and answers 413 as soon as it passes the limit.
* :class:`Admission`: requests that change state wait on the data directory's single writer. At most
  ``inflight`` of them run at once and at most ``queue`` wait; past that the agent answers 429 with
  ``Retry-After`` at once, instead of letting a client time out half-way through a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.service.errors import ApiError, error_response

#: The largest request body the agent reads (a PSBT with many inputs is well under this).
MAX_BODY = 256 * 1024
#: How much of an oversized body is read and dropped before the 413 (see ``BodyLimit._too_large``).
DRAIN_LIMIT = 4 * 1024 * 1024


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413, before parsing; replay the body to the app otherwise."""

    def __init__(self, app: ASGIApp, *, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Read (and drop) what the client is still sending, up to a bound, so that it gets to read the
        # 413 instead of a connection reset mid-upload; past the bound, answer and close anyway.
        drained = 0
        more = True
        while more and drained < DRAIN_LIMIT:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            drained += len(message.get("body", b""))
            more = bool(message.get("more_body", False))
        response = error_response(
            413,
            "too-large",
            f"the request body is larger than {self.limit} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server (h11) refuses a malformed length before we see it
    return None


class Admission:
    """At most ``inflight`` state-changing requests at once and ``queue`` waiting; 429 beyond."""

    def __init__(self, *, inflight: int = 2, queue: int = 256) -> None:
        if inflight < 1 or queue < 0:
            raise ValueError("inflight must be >= 1 and queue >= 0")
        self.inflight = inflight
        self.queue = queue
        self._semaphore: asyncio.Semaphore | None = None
        self._admitted = 0

    @property
    def waiting(self) -> int:
        return max(self._admitted - self.inflight, 0)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Run the block as one of the ``inflight`` writers, or raise a 429 :class:`ApiError` when full."""
        if self._semaphore is None:  # created on the server's loop
            self._semaphore = asyncio.Semaphore(self.inflight)
        if self._admitted >= self.inflight + self.queue:
            raise ApiError(
                429,
                f"the agent is busy: {self.inflight} requests are being decided and {self.queue} are waiting",
                hint="retry after a second, with the same Idempotency-Key",
                headers={"Retry-After": "1"},
            )
        self._admitted += 1
        try:
            async with self._semaphore:
                yield
        finally:
            self._admitted -= 1

    def to_json(self) -> dict[str, Any]:
        return {"inflight": self.inflight, "queue": self.queue, "admitted": self._admitted}
