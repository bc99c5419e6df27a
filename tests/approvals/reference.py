"""An independent re-implementation of docs/approvals.md §2, written from the text, for the vectors.

It shares no code with ``agent.approvals``: a 30-line RFC 8949 §4.2.1 deterministic CBOR encoder
(shortest heads, definite lengths, map keys sorted by their encoded bytes) and ``hashlib``.
"""

from __future__ import annotations

import hashlib
from typing import Any

DOMAIN = b"kms-agent/v1/approval\x00"


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError("integer too large for this reference encoder")


def encode(value: Any) -> bytes:
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, bytes):
        return _head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(3, len(raw)) + raw
    if isinstance(value, list):
        return _head(4, len(value)) + b"".join(encode(v) for v in value)
    if isinstance(value, dict):
        items = sorted((encode(k), encode(v)) for k, v in value.items())
        return _head(5, len(items)) + b"".join(k + v for k, v in items)
    raise TypeError(type(value).__name__)


def payload_map(fields: dict[str, Any]) -> dict[str, Any]:
    """The payload map from a vector's JSON fields (hex for bytes, as in the vector files).

    Version 2 (§2.1) is version 1 plus ``initiator``: a vector with that field is a version 2 payload.
    """
    version2 = "initiator" in fields
    extra: dict[str, Any] = {}
    if version2:
        extra["initiator"] = None if fields["initiator"] is None else bytes.fromhex(fields["initiator"])
    return extra | {
        "v": 2 if version2 else 1,
        "vault_id": bytes.fromhex(fields["vault_id"]),
        "request_id": bytes.fromhex(fields["request_id"]),
        "chain": fields["chain"],
        "network": fields["network"],
        "signature_id": fields["signature_id"],
        "derivation_index": fields["derivation_index"],
        "unsigned_tx_sha256": bytes.fromhex(fields["unsigned_tx_sha256"]),
        "outputs": [{"address": o["address"], "amount": o["amount"], "asset": o["asset"]} for o in fields["outputs"]],
        "fee": fields["fee"],
        "nonce": fields["nonce"],
        "expires_at": fields["expires_at"],
        "policy_generation": fields["policy_generation"],
        "action": fields["action"],
    }


def digest(fields: dict[str, Any]) -> tuple[bytes, bytes]:
    data = encode(payload_map(fields))
    return data, hashlib.sha256(DOMAIN + data).digest()


# --- docs/approvals.md §8 (vetoes) and §9 (reinstatements) -------------------------------------
REJECTION_DOMAIN = b"kms-agent/v1/rejection\x00"


def rejection_map(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "v": 1,
        "action": "reject",
        "vault_id": bytes.fromhex(fields["vault_id"]),
        "request_id": bytes.fromhex(fields["request_id"]),
        "payload_sha256": bytes.fromhex(fields["payload_sha256"]),
        "reason": fields["reason"],
    }


def rejection_digest(fields: dict[str, Any]) -> tuple[bytes, bytes]:
    data = encode(rejection_map(fields))
    return data, hashlib.sha256(REJECTION_DOMAIN + data).digest()


def reinstatement_map(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "v": 1,
        "action": "reinstate",
        "vault_id": bytes.fromhex(fields["vault_id"]),
        "operator_id": bytes.fromhex(fields["operator_id"]),
        "suspension_seq": fields["suspension_seq"],
    }


def reinstatement_sha256(fields: dict[str, Any]) -> tuple[bytes, bytes]:
    data = encode(reinstatement_map(fields))
    return data, hashlib.sha256(data).digest()
