"""Regenerate tests/approvals/vectors/statements-v1.json (docs/approvals.md §8, §9) from the reference.

    .venv/bin/python -m tests.approvals.make_statement_vectors

Everything here is deterministic: regenerating MUST NOT change the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.approvals import reference

OUT = Path(__file__).parent / "vectors" / "statements-v1.json"
VAULT = "000102030405060708090a0b0c0d0e0f"
REQUEST = "101112131415161718191a1b1c1d1e1f"
OPERATOR = "202122232425262728292a2b2c2d2e2f"
#: Stands in for the SHA-256 of a request's canonical approval payload (any 32 bytes do for the encoding).
PAYLOAD_SHA256 = hashlib.sha256(b"kms-agent test vector: approval payload").hexdigest()


def build() -> dict[str, Any]:
    rejections: dict[str, Any] = {}
    for name, reason in (("no-reason", ""), ("with-reason", "not expected today — call the CFO")):
        fields: dict[str, Any] = {
            "vault_id": VAULT,
            "request_id": REQUEST,
            "payload_sha256": PAYLOAD_SHA256,
            "reason": reason,
        }
        data, digest = reference.rejection_digest(fields)
        rejections[name] = {"fields": fields, "canonical_cbor": data.hex(), "digest": digest.hex(), "expect": "success"}
    base = reference.rejection_map(rejections["no-reason"]["fields"])
    invalid = {
        "unknown-key": {**base, "note": "x"},
        "missing-key": {k: v for k, v in base.items() if k != "reason"},
        "wrong-action": {**base, "action": "approve"},
        "version-2": {**base, "v": 2},
        "short-payload-hash": {**base, "payload_sha256": bytes(31)},
        "reason-not-text": {**base, "reason": b"bytes"},
    }
    invalid_rejections = {
        name: {"cbor": reference.encode(value).hex(), "expect": "format failure"} for name, value in invalid.items()
    }
    invalid_rejections["trailing-bytes"] = {
        "cbor": (reference.encode(base) + b"\x00").hex(),
        "expect": "format failure",
    }
    fields = {"vault_id": VAULT, "operator_id": OPERATOR, "suspension_seq": 4242}
    data, sha = reference.reinstatement_sha256(fields)
    approval_fields = {
        "vault_id": VAULT,
        "request_id": REQUEST,
        "chain": "",
        "network": "",
        "signature_id": "",
        "derivation_index": 0,
        "unsigned_tx_sha256": sha.hex(),
        "outputs": [],
        "fee": "0",
        "nonce": None,
        "expires_at": 1767225600,
        "policy_generation": 3,
        "action": "reinstatement",
        "initiator": OPERATOR,
    }
    payload_cbor, payload_digest = reference.digest(approval_fields)
    return {
        "spec": "docs/approvals.md §8 (rejection payload, digest) and §9 (reinstatement statement)",
        "rejections": rejections,
        "invalid_rejections": invalid_rejections,
        "reinstatements": {
            "lift-suspension": {
                "fields": fields,
                "canonical_cbor": data.hex(),
                "sha256": sha.hex(),
                "approval_payload": approval_fields,
                "approval_payload_cbor": payload_cbor.hex(),
                "approval_digest": payload_digest.hex(),
                "expect": "success",
            }
        },
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
