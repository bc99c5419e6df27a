"""An independent re-implementation of docs/audit-log.md §2-3 (shares no code with agent.audit)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def row_bytes(row: dict[str, Any]) -> bytes:
    body = {
        "v": 1,
        "seq": row["seq"],
        "ts": row["ts"],
        "kind": row["kind"],
        "request_id": row["request_id"],
        "actor": row["actor"],
        "payload": row["payload"],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def chain(rows: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(row bytes, hash) for each row, starting from 32 zero bytes."""
    prev = bytes(32)
    out = []
    for row in rows:
        data = row_bytes(row)
        digest = hashlib.sha256(b"kms-agent/v1/audit\x00" + prev + data).digest()
        out.append((data, digest))
        prev = digest
    return out
