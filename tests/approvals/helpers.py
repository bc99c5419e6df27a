"""Building *test evidence*: real signatures from software keys shaped exactly like token output.

A FIDO2 approval is an ECDSA P-256 signature over ``authData || digest`` where
``authData = SHA-256(rp_id) || flags || signCount (4 bytes, big-endian)``; its slot carries the COSE
public key (``fido2.cose.ES256.from_cryptography_key``), so the product's
``agent.tokens.fido2_token.verify_assertion`` runs unchanged. A PIV approval is an ECDSA P-256
signature over the digest taken as an already-hashed SHA-256 value (``Prehashed``), as the card
makes it. Nothing here is a token: it is test evidence of the same shape.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fido2 import cbor
from fido2.cose import ES256

from agent.approvals import (
    ApprovalPayload,
    ApprovalRequest,
    Operator,
    PayloadOutput,
    QuorumRule,
    RecordedApproval,
    Slot,
    approval_digest,
)
from agent.tokens.base import Approval

RP_ID = "kms.example"
UP, UV = 0x01, 0x04
NOW = 1_750_000_000


def oid(n: int) -> bytes:
    return bytes([n]) * 16


@dataclass
class SoftFido2:
    """A software stand-in for one FIDO2 credential, for building evidence."""

    label: str
    counter: int = 0
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    cred_id: bytes = field(default_factory=lambda: os.urandom(32))

    def public(self, enrolled_count: int = 0) -> dict[str, Any]:
        return {
            "rp_id": RP_ID,
            "cred_id": self.cred_id,
            "cose_key": cbor.encode(dict(ES256.from_cryptography_key(self.key.public_key()))),
            "uv": True,
            "sign_count": enrolled_count,
        }

    def approve(
        self, digest: bytes, *, counter: int | None = None, flags: int = UP | UV, rp_id: str = RP_ID
    ) -> Approval:
        if counter is None:
            self.counter += 1
            counter = self.counter
        auth_data = hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + counter.to_bytes(4, "big")
        signature = self.key.sign(auth_data + digest, ec.ECDSA(hashes.SHA256()))
        return Approval("fido2-hmac", auth_data, signature, counter, bool(flags & UP), bool(flags & UV))


@dataclass
class SoftPiv:
    label: str
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def public(self, *, touch: int = 2, pin: int = 3) -> dict[str, Any]:
        return {
            "serial": 12345678,
            "sign_slot": 0x83,
            "sign_pub": self.key.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint),
            "sign_pin_policy": pin,
            "sign_touch_policy": touch,
            "approval_alg": "ecdsa-p256-prehashed-sha256",
        }

    def approve(self, digest: bytes) -> Approval:
        signature = self.key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return Approval("piv", b"", signature, 0, True, True)


@dataclass
class Team:
    """alice (two FIDO2 tokens), bob (FIDO2), carol (PIV), dave (FIDO2): ids 1..4, slots 0x11.."""

    tokens: dict[bytes, SoftFido2 | SoftPiv] = field(default_factory=dict)
    roster: dict[bytes, Operator] = field(default_factory=dict)

    @classmethod
    def build(cls, *, suspended: tuple[bytes, ...] = ()) -> Team:
        team = cls()
        layout: list[tuple[str, int, list[tuple[int, SoftFido2 | SoftPiv]]]] = [
            ("alice", 1, [(0x11, SoftFido2("alice-primary")), (0x12, SoftFido2("alice-backup"))]),
            ("bob", 2, [(0x21, SoftFido2("bob-key"))]),
            ("carol", 3, [(0x31, SoftPiv("carol-piv"))]),
            ("dave", 4, [(0x41, SoftFido2("dave-key"))]),
        ]
        for name, n, tokens in layout:
            slots = []
            for sid, token in tokens:
                kind = "piv" if isinstance(token, SoftPiv) else "fido2-hmac"
                slots.append(Slot(oid(sid), oid(n), kind, token.label, token.public()))
                team.tokens[oid(sid)] = token
            team.roster[oid(n)] = Operator(oid(n), name, tuple(slots), oid(n) in suspended)
        return team

    def approve(
        self,
        payload: ApprovalPayload,
        operator: int,
        slot: int,
        *,
        at: int = NOW - 60,
        digest: bytes | None = None,
        **kw: Any,
    ) -> RecordedApproval:
        token = self.tokens[oid(slot)]
        evidence = token.approve(digest if digest is not None else approval_digest(payload), **kw)
        return RecordedApproval.from_token(
            evidence, request_id=payload.request_id, operator_id=oid(operator), slot_id=oid(slot), approved_at=at
        )


def payload(**overrides: Any) -> ApprovalPayload:
    fields: dict[str, Any] = dict(
        vault_id=bytes(range(16)),
        request_id=bytes(range(16, 32)),
        chain="BTC",
        network="testnet",
        signature_id="26d3883e-4e17-48b3-a0ee-09a3e484ac83",
        derivation_index=0,
        unsigned_tx_sha256=hashlib.sha256(b"unsigned tx").digest(),
        outputs=(PayloadOutput("tb1qexampledestination", 150_000, "BTC"),),
        fee=1_410,
        nonce=None,
        expires_at=NOW + 3600,
        policy_generation=7,
    )
    fields.update(overrides)
    return ApprovalPayload(**fields)


def request(p: ApprovalPayload | None = None, **kw: Any) -> ApprovalRequest:
    return ApprovalRequest(p or payload(), **kw)


RULE_2 = QuorumRule(2, initiator_may_approve=False, approval_ttl=7200, policy_generation=7)
