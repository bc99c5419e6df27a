"""The audit row's canonical form and hash chain: pure functions, no SQLite (docs/audit-log.md §2-3).

::

    row_bytes = canonical_json({"v": 1, "seq", "ts", "kind", "request_id", "actor", "payload"})
    hash      = SHA-256("kms-agent/v1/audit" || 0x00 || prev_hash || row_bytes)

``prev_hash`` is the previous row's hash (32 zero bytes for seq 1). Canonical JSON here means:
UTF-8 of ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)`` over values that
are text, booleans, null, integers of magnitude below 2^53, lists and maps with text keys. Floats
are refused (their text form differs between implementations) and so are bigger integers (put
amounts in decimal strings, as everywhere else), so any JSON library can recompute the bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from agent.errors import ProgrammingError

VERSION = 1
DOMAIN = b"kms-agent/v1/audit\0"
GENESIS = bytes(32)
MAX_SAFE_INT = (1 << 53) - 1
#: Keys that must never appear in an audit payload, at any depth: the log is for evidence, not secrets.
FORBIDDEN_KEYS = frozenset(
    {
        "mnemonic",
        "seed",
        "private_key",
        "privkey",
        "xprv",
        "secret",
        "pin",
        "puk",
        "password",
        "passphrase",
        "ikm",
        "dek",
        "kek",
        "share",
        "shares",
        "hmac_secret",
        "recovery_secret",
        "management_key",
        "pin_token",
    }
)


def check_json_value(value: Any, path: str = "payload") -> None:
    """Refuse what canonical JSON cannot carry exactly, and secret-looking keys.

    :raises ProgrammingError: the caller tried to log something it must not (or cannot) log.
    """
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise ProgrammingError(f"{path}: integer {value} is too large for JSON; log it as a decimal string")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_value(item, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProgrammingError(f"{path}: map keys must be text, not {type(key).__name__}")
            if key.lower().replace("-", "_") in FORBIDDEN_KEYS:
                raise ProgrammingError(f"{path}.{key}: secrets never go into the audit log")
            check_json_value(item, f"{path}.{key}")
        return
    raise ProgrammingError(f"{path}: {type(value).__name__} is not loggable (hex bytes, use decimal strings)")


def canonical_json(value: Any) -> str:
    """The one text form of a JSON value (see module docstring)."""
    check_json_value(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def row_bytes(seq: int, ts: int, kind: str, request_id: str | None, actor: str | None, payload: Any) -> bytes:
    """Canonical bytes of one row; ``payload`` is the parsed JSON value, not its text."""
    row = {
        "v": VERSION,
        "seq": seq,
        "ts": ts,
        "kind": kind,
        "request_id": request_id,
        "actor": actor,
        "payload": payload,
    }
    return canonical_json(row).encode("ascii")


def row_hash(prev_hash: bytes, data: bytes) -> bytes:
    if len(prev_hash) != 32:
        raise ProgrammingError("prev_hash is 32 bytes")
    return hashlib.sha256(DOMAIN + prev_hash + data).digest()
