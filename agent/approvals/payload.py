"""The canonical approval payload and its digest: what an operator's touch signs (docs/approvals.md §2).

A token has no screen, so the signature must commit to everything the approver was shown and
everything the agent will do: the exact bytes to be signed (``unsigned_tx_sha256``), where the
value goes, the fee, the nonce, when the approval stops being valid, and which policy generation
judged it. The payload is canonical CBOR with text keys (one payload, one byte string), and the
digest is domain-separated so a signature over it can never be mistaken for any other kms-agent
signature (an unlock, an audit head, a header)::

    D = SHA-256("kms-agent/v1/approval" || 0x00 || canonical_cbor(payload))

Amounts and the fee are decimal *strings* in base units: wei values overflow CBOR's 64-bit
integers (cbor2 would switch to a bignum tag) and JSON numbers alike.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import cbor2

from agent.errors import ApprovalInvalid, ProgrammingError

#: Payload format written today. Version 1 (no ``initiator``) is still read, so old approvals re-verify.
VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
DOMAIN = b"kms-agent/v1/approval\0"
ID_LEN = 16
SHA256_LEN = 32
_UINT64 = (1 << 64) - 1
_UINT32 = (1 << 32) - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_KEYS_V1 = frozenset(
    {
        "v",
        "vault_id",
        "request_id",
        "chain",
        "network",
        "signature_id",
        "derivation_index",
        "unsigned_tx_sha256",
        "outputs",
        "fee",
        "nonce",
        "expires_at",
        "policy_generation",
        "action",
    }
)
#: Version 2 adds who asked for the operation, so initiator exclusion rests on signed bytes.
_KEYS_V2 = _KEYS_V1 | {"initiator"}
_OUTPUT_KEYS = frozenset({"address", "amount", "asset"})


class Action(StrEnum):
    """What the approved operation does; part of the signed bytes, so one can never pass for another."""

    WITHDRAWAL = "withdrawal"
    #: ``unsigned_tx_sha256`` is the SHA-256 of the new policy's canonical bytes (docs/policy.md §5).
    POLICY_CHANGE = "policy-change"
    #: ``unsigned_tx_sha256`` is the SHA-256 of a reinstatement statement (docs/approvals.md §9).
    REINSTATEMENT = "reinstatement"


@dataclass(frozen=True)
class PayloadOutput:
    """One value movement as the approver is shown it; ``amount`` in base units (satoshi, wei)."""

    address: str
    amount: int
    asset: str

    def to_cbor_map(self) -> dict[str, Any]:
        return {"address": self.address, "amount": str(self.amount), "asset": self.asset}


@dataclass(frozen=True)
class ApprovalPayload:
    """Everything one approval commits to. Build it from the *decoded* transaction, never from metadata.

    :raises ProgrammingError: a field of the wrong type or range (the caller built it wrongly).
    """

    vault_id: bytes
    request_id: bytes
    chain: str
    network: str
    signature_id: str
    derivation_index: int
    unsigned_tx_sha256: bytes
    outputs: tuple[PayloadOutput, ...]
    fee: int
    nonce: int | None
    expires_at: int
    policy_generation: int
    action: Action = Action.WITHDRAWAL
    #: Operator id of whoever asked for it; None for an application (which can never approve).
    initiator: bytes | None = None
    version: int = VERSION

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ProgrammingError(f"approval payload: {problem}")

    def to_cbor_map(self) -> dict[str, Any]:
        fields = {
            "v": self.version,
            "vault_id": self.vault_id,
            "request_id": self.request_id,
            "chain": self.chain,
            "network": self.network,
            "signature_id": self.signature_id,
            "derivation_index": self.derivation_index,
            "unsigned_tx_sha256": self.unsigned_tx_sha256,
            "outputs": [o.to_cbor_map() for o in self.outputs],
            "fee": str(self.fee),
            "nonce": self.nonce,
            "expires_at": self.expires_at,
            "policy_generation": self.policy_generation,
            "action": self.action.value,
        }
        if self.version >= 2:
            fields["initiator"] = self.initiator
        return fields

    def canonical_bytes(self) -> bytes:
        return canonical_cbor(self)

    def digest(self) -> bytes:
        return approval_digest(self)

    @classmethod
    def for_statement(
        cls,
        action: Action,
        *,
        vault_id: bytes,
        request_id: bytes,
        statement_sha256: bytes,
        expires_at: int,
        policy_generation: int,
        initiator: bytes | None = None,
    ) -> ApprovalPayload:
        """A payload that moves no coin: approvers sign the SHA-256 of a statement (a policy, a reinstatement)."""
        return cls(
            vault_id=vault_id,
            request_id=request_id,
            chain="",
            network="",
            signature_id="",
            derivation_index=0,
            unsigned_tx_sha256=statement_sha256,
            outputs=(),
            fee=0,
            nonce=None,
            expires_at=expires_at,
            policy_generation=policy_generation,
            action=action,
            initiator=initiator,
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> ApprovalPayload:
        """Strictly decode stored payload bytes (audit rows, a co-signer's input).

        :raises ApprovalInvalid: not canonical CBOR, unknown or missing keys, a wrong type or length.
        """
        try:
            raw = cbor2.loads(data)
        except Exception as exc:  # cbor2 raises several unrelated types for garbage
            raise ApprovalInvalid(f"approval payload is not valid CBOR ({type(exc).__name__})") from None
        try:
            payload = cls._from_map(raw)
        except ProgrammingError as exc:
            raise ApprovalInvalid(str(exc)) from None
        if payload.canonical_bytes() != bytes(data):
            raise ApprovalInvalid("approval payload is not in canonical CBOR form")
        return payload

    @classmethod
    def _from_map(cls, raw: Any) -> ApprovalPayload:
        if not isinstance(raw, dict):
            raise ApprovalInvalid("approval payload must be a CBOR map")
        version = raw.get("v")
        if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
            raise ApprovalInvalid(f"approval payload version {version!r} is not one of {SUPPORTED_VERSIONS}")
        expected = _KEYS_V1 if version == 1 else _KEYS_V2
        keys = set(raw)
        if keys != expected:
            missing, unknown = sorted(expected - keys), sorted(map(str, keys - expected))
            raise ApprovalInvalid(f"approval payload keys differ: missing {missing}, unknown {unknown}")
        outputs = raw["outputs"]
        if not isinstance(outputs, list):
            raise ApprovalInvalid("approval payload field outputs must be an array")
        parsed = []
        for i, out in enumerate(outputs):
            if not isinstance(out, dict) or set(out) != _OUTPUT_KEYS:
                raise ApprovalInvalid(f"approval payload outputs[{i}] must be a map of address, amount, asset")
            parsed.append(PayloadOutput(out["address"], _decimal(out["amount"], f"outputs[{i}].amount"), out["asset"]))
        try:
            action = Action(raw["action"])
        except ValueError:
            raise ApprovalInvalid(f"approval payload action {raw['action']!r} is unknown") from None
        return cls(
            vault_id=raw["vault_id"],
            request_id=raw["request_id"],
            chain=raw["chain"],
            network=raw["network"],
            signature_id=raw["signature_id"],
            derivation_index=raw["derivation_index"],
            unsigned_tx_sha256=raw["unsigned_tx_sha256"],
            outputs=tuple(parsed),
            fee=_decimal(raw["fee"], "fee"),
            nonce=raw["nonce"],
            expires_at=raw["expires_at"],
            policy_generation=raw["policy_generation"],
            action=action,
            initiator=raw.get("initiator"),
            version=version,
        )


def canonical_cbor(payload: ApprovalPayload) -> bytes:
    """RFC 8949 §4.2.1 deterministic CBOR of the payload map (what the digest covers)."""
    return bytes(cbor2.dumps(payload.to_cbor_map(), canonical=True))


def approval_digest(payload: ApprovalPayload) -> bytes:
    """``SHA-256("kms-agent/v1/approval\\0" || canonical_cbor(payload))``: the 32 bytes a token signs."""
    return hashlib.sha256(DOMAIN + canonical_cbor(payload)).digest()


def _decimal(value: Any, name: str) -> int:
    if not isinstance(value, str) or _DECIMAL.fullmatch(value) is None:
        raise ApprovalInvalid(f"approval payload field {name} must be a decimal string without sign or leading zeros")
    return int(value)


def _uint(value: Any, limit: int = _UINT64) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _problem(p: ApprovalPayload) -> str | None:
    """The first thing wrong with a payload, or None. Exact types: a bool is not an integer here."""
    for name, length in (("vault_id", ID_LEN), ("request_id", ID_LEN), ("unsigned_tx_sha256", SHA256_LEN)):
        value = getattr(p, name)
        if not isinstance(value, bytes) or len(value) != length:
            return f"{name} must be {length} bytes"
    for name in ("chain", "network", "signature_id"):
        if not isinstance(getattr(p, name), str):
            return f"{name} must be text"
    if not _uint(p.derivation_index, _UINT32):
        return "derivation_index must be an unsigned 32-bit integer"
    if not isinstance(p.outputs, tuple):
        return "outputs must be a tuple"
    for i, out in enumerate(p.outputs):
        if not isinstance(out, PayloadOutput):
            return f"outputs[{i}] must be a PayloadOutput"
        if not isinstance(out.address, str) or not isinstance(out.asset, str):
            return f"outputs[{i}] address and asset must be text"
        if not _uint(out.amount, 1 << 256):
            return f"outputs[{i}].amount must be a non-negative integer in base units"
    if not _uint(p.fee, 1 << 256):
        return "fee must be a non-negative integer in base units"
    if p.nonce is not None and not _uint(p.nonce):
        return "nonce must be an unsigned 64-bit integer or None"
    if not _uint(p.expires_at):
        return "expires_at must be unsigned Unix seconds"
    if not _uint(p.policy_generation):
        return "policy_generation must be an unsigned integer"
    if not isinstance(p.action, Action):
        return "action must be an Action"
    if isinstance(p.version, bool) or p.version not in SUPPORTED_VERSIONS:
        return f"version must be one of {SUPPORTED_VERSIONS}"
    if p.initiator is not None and (not isinstance(p.initiator, bytes) or len(p.initiator) != ID_LEN):
        return f"initiator must be {ID_LEN} bytes or None"
    if p.version == 1 and p.initiator is not None:
        return "a version 1 payload has no initiator"
    return None


def payload_to_json(payload: ApprovalPayload) -> dict[str, Any]:
    """A JSON view for humans and the audit log (bytes as hex); the signed form is the CBOR."""
    view: Mapping[str, Any] = payload.to_cbor_map()
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in view.items()}
