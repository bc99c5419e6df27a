"""docs/approvals.md vectors: fixed payload -> exact canonical CBOR -> exact digest; fixed evidence verifies.

Every stored value is checked against the product code *and* the independent reference
(tests/approvals/reference.py), so a change in either, or in cbor2, is caught.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from agent.approvals import (
    Action,
    ApprovalPayload,
    PayloadOutput,
    RecordedApproval,
    Slot,
    approval_digest,
    canonical_cbor,
    verify_approval,
)
from agent.errors import ApprovalInvalid
from tests.approvals import reference

VECTORS = json.loads((Path(__file__).parent / "vectors" / "approval-v1.json").read_text())
#: Version 2 payloads (docs/approvals.md §2.1): the same fields plus the signed initiator.
VECTORS_V2 = json.loads((Path(__file__).parent / "vectors" / "approval-v2.json").read_text())
ALL_PAYLOADS = {**VECTORS["payloads"], **{f"v2:{k}": v for k, v in VECTORS_V2["payloads"].items()}}
h = bytes.fromhex


def product_payload(fields: dict[str, Any]) -> ApprovalPayload:
    return ApprovalPayload(
        vault_id=h(fields["vault_id"]),
        request_id=h(fields["request_id"]),
        chain=fields["chain"],
        network=fields["network"],
        signature_id=fields["signature_id"],
        derivation_index=fields["derivation_index"],
        unsigned_tx_sha256=h(fields["unsigned_tx_sha256"]),
        outputs=tuple(PayloadOutput(o["address"], int(o["amount"]), o["asset"]) for o in fields["outputs"]),
        fee=int(fields["fee"]),
        nonce=fields["nonce"],
        expires_at=fields["expires_at"],
        policy_generation=fields["policy_generation"],
        action=Action(fields["action"]),
        initiator=None if fields.get("initiator") is None else h(fields["initiator"]),
        version=2 if "initiator" in fields else 1,
    )


@pytest.mark.parametrize("name", sorted(ALL_PAYLOADS))
def test_payload_vector(name: str) -> None:
    vector = ALL_PAYLOADS[name]
    ref_bytes, ref_digest = reference.digest(vector["fields"])
    assert ref_bytes.hex() == vector["canonical_cbor"]
    assert ref_digest.hex() == vector["digest"]
    # The digest is spelled out once more here, from the spec's formula.
    assert hashlib.sha256(b"kms-agent/v1/approval\x00" + ref_bytes).hexdigest() == vector["digest"]
    payload = product_payload(vector["fields"])
    assert canonical_cbor(payload).hex() == vector["canonical_cbor"]
    assert approval_digest(payload).hex() == vector["digest"]
    assert ApprovalPayload.from_cbor(ref_bytes) == payload


INVALID = {**VECTORS["invalid_payloads"], **{f"v2:{k}": v for k, v in VECTORS_V2["invalid_payloads"].items()}}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_payload_vector(name: str) -> None:
    vector = INVALID[name]
    assert vector["expect"] == "format failure"
    with pytest.raises(ApprovalInvalid):
        ApprovalPayload.from_cbor(h(vector["cbor"]))


def _signed_payload() -> ApprovalPayload:
    return product_payload(VECTORS["payloads"][VECTORS["signatures"]["payload"]]["fields"])


def test_fido2_signature_vector() -> None:
    v = VECTORS["signatures"]["fido2"]
    payload = _signed_payload()
    digest = approval_digest(payload)
    # Independent check, straight from the spec: ECDSA-SHA256 over authData || digest.
    key = ec.derive_private_key(int(v["private_scalar"], 16), ec.SECP256R1()).public_key()
    key.verify(h(v["signature"]), h(v["auth_data"]) + digest, ec.ECDSA(hashes.SHA256()))
    slot = Slot(bytes(16), bytes([1]) * 16, "fido2-hmac", "vector", {"rp_id": v["rp_id"], "cose_key": h(v["cose_key"])})
    approval = RecordedApproval(
        payload.request_id,
        slot.operator_id,
        slot.slot_id,
        "fido2-hmac",
        h(v["auth_data"]),
        h(v["signature"]),
        v["sign_count"],
        True,
        True,
        0,
    )
    verify_approval(approval, slot, digest)
    with pytest.raises(ApprovalInvalid):
        verify_approval(approval, slot, hashlib.sha256(digest).digest())


def test_piv_signature_vector() -> None:
    v = VECTORS["signatures"]["piv"]
    payload = _signed_payload()
    digest = approval_digest(payload)
    key = ec.derive_private_key(int(v["private_scalar"], 16), ec.SECP256R1()).public_key()
    key.verify(h(v["signature"]), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    # "The card signs the SHA-256 prehash = digest" is the same as ECDSA-SHA256 over the signed bytes.
    key.verify(h(v["signature"]), reference.DOMAIN + payload.canonical_bytes(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(h(v["signature"]), digest, ec.ECDSA(hashes.SHA256()))
    public = {
        "sign_pub": h(v["sign_pub"]),
        "sign_touch_policy": 2,
        "sign_pin_policy": 3,
        "approval_alg": "ecdsa-p256-prehashed-sha256",
    }
    slot = Slot(bytes(16), bytes([1]) * 16, "piv", "vector", public)
    approval = RecordedApproval(
        payload.request_id, slot.operator_id, slot.slot_id, "piv", b"", h(v["signature"]), 0, True, True, 0
    )
    verify_approval(approval, slot, digest)
    with pytest.raises(ApprovalInvalid):
        verify_approval(approval, slot, bytes(32))
