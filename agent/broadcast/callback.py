"""The application callback: each on-chain change the watcher records, POSTed as JSON signed with HMAC-SHA256.

The signature is the alert webhooks' (agent/service/alerts.py): ``X-KMS-Timestamp: <unix seconds>``
and ``X-KMS-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``, so a receiver
verifies both with the same code (``alerts.verify_signature``). ``X-KMS-Event-Id`` is stable across
retries (the audit row's seq and the request), so a receiver can drop a repeat. A callback that
fails is retried a few times and then given up: the audit rows are already committed, and the
status endpoint still answers (docs/broadcast.md §8).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from agent.broadcast.config import Callback
from agent.service.alerts import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

EVENT_ID_HEADER = "X-KMS-Event-Id"
ATTEMPTS = 3
TIMEOUT = 5.0


def body_bytes(event: Mapping[str, Any]) -> bytes:
    """The exact bytes signed and sent: compact JSON with sorted keys."""
    return json.dumps(dict(event), sort_keys=True, separators=(",", ":")).encode()


def event_id(event: Mapping[str, Any]) -> str:
    key = f"{event.get('request_id')}:{event.get('audit_seq')}:{event.get('event')}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def headers_for(secret: bytes, timestamp: int, body: bytes, eid: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        EVENT_ID_HEADER: eid,
    }


@dataclass(frozen=True)
class Delivery:
    ok: bool
    attempts: int
    detail: str


def post(
    callback: Callback,
    event: Mapping[str, Any],
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    delay: float = 0.2,
) -> Delivery:
    """POST one event; a 2xx is delivered, anything else is retried ``ATTEMPTS`` times in all."""
    try:
        secret = callback.secret()
    except Exception as exc:
        return Delivery(False, 0, getattr(exc, "message", str(exc)))
    body = body_bytes(event)
    eid = event_id(event)
    detail = ""
    for attempt in range(1, ATTEMPTS + 1):
        headers = headers_for(secret, int(clock()), body, eid)
        try:
            response = httpx.post(callback.url, content=body, headers=headers, timeout=TIMEOUT, follow_redirects=False)
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= response.status_code < 300:
                return Delivery(True, attempt, f"HTTP {response.status_code}")
            detail = f"HTTP {response.status_code}"
        if attempt < ATTEMPTS:
            sleep(delay * 2 ** (attempt - 1))
    return Delivery(False, ATTEMPTS, detail)
