"""docs/approvals.md §8/§9 vectors: veto and reinstatement bytes, checked against the product and the reference."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agent.approvals import ApprovalPayload
from agent.approvals.statements import ReinstatementStatement, RejectionPayload, reinstatement_payload
from agent.errors import ApprovalInvalid
from tests.approvals import make_statement_vectors, reference

VECTORS = json.loads((Path(__file__).parent / "vectors" / "statements-v1.json").read_text())
h = bytes.fromhex


def test_the_file_is_what_the_reference_generates() -> None:
    assert make_statement_vectors.build() == VECTORS


@pytest.mark.parametrize("name", sorted(VECTORS["rejections"]))
def test_rejection_vectors(name: str) -> None:
    vector: dict[str, Any] = VECTORS["rejections"][name]
    f = vector["fields"]
    product = RejectionPayload(h(f["vault_id"]), h(f["request_id"]), h(f["payload_sha256"]), f["reason"])
    assert product.canonical_bytes().hex() == vector["canonical_cbor"]
    assert product.digest().hex() == vector["digest"]
    data, digest = reference.rejection_digest(f)
    assert (data.hex(), digest.hex()) == (vector["canonical_cbor"], vector["digest"])
    assert RejectionPayload.from_cbor(h(vector["canonical_cbor"])) == product


@pytest.mark.parametrize("name", sorted(VECTORS["invalid_rejections"]))
def test_invalid_rejection_payloads_are_format_failures(name: str) -> None:
    with pytest.raises(ApprovalInvalid):
        RejectionPayload.from_cbor(h(VECTORS["invalid_rejections"][name]["cbor"]))


def test_a_rejection_is_bound_to_its_request_payload() -> None:
    cbor = h(VECTORS["reinstatements"]["lift-suspension"]["approval_payload_cbor"])
    payload = ApprovalPayload.from_cbor(cbor)
    veto = RejectionPayload.for_request(payload, "why")
    assert veto.payload_sha256 == hashlib.sha256(cbor).digest()
    assert veto.digest() != payload.digest()  # a veto is never valid as the approval of the same request
    assert veto.digest() != RejectionPayload.for_request(payload, "another reason").digest()


def test_reinstatement_vector() -> None:
    vector = VECTORS["reinstatements"]["lift-suspension"]
    f = vector["fields"]
    statement = ReinstatementStatement(h(f["vault_id"]), h(f["operator_id"]), f["suspension_seq"])
    assert statement.canonical_bytes().hex() == vector["canonical_cbor"]
    assert statement.sha256().hex() == vector["sha256"]
    assert ReinstatementStatement.from_cbor(statement.canonical_bytes()) == statement
    a = vector["approval_payload"]
    payload = reinstatement_payload(
        statement, request_id=h(a["request_id"]), expires_at=a["expires_at"], policy_generation=a["policy_generation"]
    )
    assert payload.canonical_bytes().hex() == vector["approval_payload_cbor"]
    assert payload.digest().hex() == vector["approval_digest"]
    assert ApprovalPayload.from_cbor(payload.canonical_bytes()) == payload
    with pytest.raises(ApprovalInvalid):
        ReinstatementStatement.from_cbor(statement.canonical_bytes() + b"\x00")
