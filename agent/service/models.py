"""The API's request and response bodies. The OpenAPI schema (docs/openapi.json) is generated from these.

Requests are strict: unknown fields are refused (``extra="forbid"``), JSON types are not coerced
(``strict``: ``"5"`` is not an index) and every string has a length bound. Amounts are decimal
strings in base units (satoshi, wei), since they can exceed what a JSON number carries exactly.
Responses mirror what ``kms-agent request show --json`` prints, with ``signatureId`` named as Tatum does.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag

_REQUEST = ConfigDict(extra="forbid", strict=True)

Chain = Annotated[
    str, StringConstraints(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9_]+$"), Field(examples=["ETH"])
]
SignatureId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$"),
    Field(description="the paying wallet (`kms-agent wallet list`)"),
]
Index = Annotated[int, Field(ge=0, lt=2**31, description="derivation index of the paying address")]
BaseUnits = Annotated[
    str,
    StringConstraints(pattern=r"^[1-9][0-9]{0,77}$"),
    Field(description="a positive whole number of base units (satoshi, wei), as a decimal string"),
]
Initiator = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128),
    Field(description="who asks: `app:NAME` for an application, or an operator's name"),
]
RequestId = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{32}$")]


class TxSubmit(BaseModel):
    """A withdrawal as exact unsigned bytes: a PSBT (UTXO chains) or an unsigned EVM transaction."""

    model_config = _REQUEST

    chain: Chain
    signatureId: SignatureId
    index: Index = 0
    tx: Annotated[
        str,
        StringConstraints(min_length=2, max_length=200_000),
        Field(description="hex (EVM transaction, raw PSBT; `0x` allowed) or base64 (PSBT)"),
    ]
    initiator: Initiator | None = None


class Coin(BaseModel):
    """A coin the paying wallet owns (the agent talks to no node): its address, or the wallet index deriving it."""

    model_config = _REQUEST

    txid: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
    vout: Annotated[int, Field(ge=0, lt=2**32)]
    amount: BaseUnits
    address: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    index: Index | None = None
    prev_tx: Annotated[str, StringConstraints(max_length=200_000, pattern=r"^([0-9a-fA-F]{2})+$")] | None = None


class IntentSubmit(BaseModel):
    """A withdrawal as an intent: pay ``amount`` to ``to``; the agent builds the unsigned bytes.

    EVM chains need ``nonce`` and ``maxFeePerGas``; UTXO chains need ``utxos`` and ``feeRate`` (change
    goes to the wallet's ``changeIndex`` address). The bytes then take the same path as a ``tx``.
    """

    model_config = _REQUEST

    chain: Chain
    signatureId: SignatureId
    index: Index = 0
    to: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    amount: BaseUnits
    asset: (
        Annotated[str, StringConstraints(min_length=1, max_length=128), Field(description="EVM: an ERC-20 contract")]
        | None
    ) = None
    nonce: Annotated[int, Field(ge=0, lt=2**64)] | None = None
    maxFeePerGas: BaseUnits | None = None
    utxos: Annotated[list[Coin], Field(max_length=1000)] | None = None
    feeRate: Annotated[float, Field(gt=0, le=100_000, description="sat/vbyte")] | None = None
    changeIndex: Index = 1
    initiator: Initiator | None = None


def _submit_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "tx" if "tx" in value else "intent"
    return "tx" if hasattr(value, "tx") else "intent"


Submit = Annotated[
    Annotated[TxSubmit, Tag("tx")] | Annotated[IntentSubmit, Tag("intent")],
    Discriminator(_submit_kind),
]


class CancelBody(BaseModel):
    model_config = _REQUEST

    initiator: Initiator


class Status(StrEnum):
    pending = "pending"
    denied = "denied"
    signed = "signed"
    rejected = "rejected"
    expired = "expired"
    stale = "stale"


# --- responses -----------------------------------------------------------------------------------
class Reason(BaseModel):
    rule: str
    detail: str
    effect: str | None = None


class ApprovalView(BaseModel):
    operator_id: str
    slot_id: str
    sign_count: int
    approved_at: int


class SignedView(BaseModel):
    txid: str
    raw: str = Field(description="the signed transaction, hex")
    sender: str | None
    signed_at: int


class OnChainView(BaseModel):
    """Where the signed transaction is on its chain, from its broadcast and confirmation rows (docs/broadcast.md §5)."""

    state: str = Field(description="unreachable, broadcast, pending, confirmed, failed, dropped, replaced or unknown")
    txid: str
    attempts: int = Field(description="broadcast attempts recorded")
    accepted: bool = Field(description="whether a node ever accepted the signed bytes")
    depth: int | None = Field(default=None, description="confirmations (1: in the tip block)")
    block_height: int | None = None
    block_hash: str | None = None
    reason: str | None = Field(default=None, description="the node's reason for a rejection, 'reverted', ...")
    replaced_by: str | None = Field(default=None, description="the transaction that took the nonce (EVM)")
    node: str | None = Field(default=None, description="the node's URL, without credentials")
    last_outcome: str | None = None
    last_answer: str | None = Field(
        default=None, description="the node's last answer (its start; whole in the audit log)"
    )
    accepted_at: int | None = None
    stuck_alerted: bool = False
    updated_at: int
    audit_seq: int


class Withdrawal(BaseModel):
    """A withdrawal request as the audit log proves it."""

    id: str
    status: Status
    created_at: int
    expires_at: int
    chain: str
    testnet: bool
    signatureId: str
    index: int
    initiator: str | None
    summary: dict[str, Any] = Field(
        description="the chain's decode of the exact bytes: outputs and fee in base units and in coins "
        "(amountHuman, feeHuman)"
    )
    decision: dict[str, Any] = Field(description="the newest policy decision (outcome, reasons, approvals required)")
    rule: dict[str, Any]
    reasons: list[Reason] = Field(description="why the policy decided as it did (a denial's reasons)")
    approvals_required: int | None
    approvals: list[ApprovalView] = Field(description="one per operator who approved so far")
    rejections: list[dict[str, Any]]
    signed: SignedView | None = Field(description="the signed transaction, once there is one")
    onchain: OnChainView | None = Field(
        default=None, description="broadcast and confirmations of the signed transaction (docs/broadcast.md)"
    )

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Withdrawal:
        """From :meth:`agent.withdrawals.ledger.RequestState.to_record` (the CLI's ``_public`` view, and more)."""
        decision = rec.get("decision") or {}
        rule = rec.get("rule") or {}
        reasons = [
            Reason(rule=str(r.get("rule", "")), detail=str(r.get("detail", "")), effect=r.get("effect"))
            if isinstance(r, dict)
            else Reason(rule="reason", detail=str(r))
            for r in decision.get("reasons", [])
        ]
        required = rule.get("approvals_required", decision.get("approvals_required"))
        return cls(
            id=rec["id"],
            status=Status(rec["status"]),
            created_at=rec["created_at"],
            expires_at=rec.get("expires_at", 0),
            chain=rec["chain"],
            testnet=rec["testnet"],
            signatureId=rec["signature_id"],
            index=rec["index"],
            initiator=rec.get("initiator"),
            summary=rec.get("summary") or {},
            decision=decision,
            rule=rule,
            reasons=reasons,
            approvals_required=required if isinstance(required, int) else None,
            approvals=[
                ApprovalView(
                    operator_id=a["operator_id"],
                    slot_id=a["slot_id"],
                    sign_count=a["sign_count"],
                    approved_at=a["approved_at"],
                )
                for a in rec.get("approvals", [])
            ],
            rejections=rec.get("rejections", []),
            signed=SignedView(**rec["signed"]) if rec.get("signed") else None,
            onchain=OnChainView(**rec["onchain"]) if rec.get("onchain") else None,
        )


class Unreadable(BaseModel):
    id: str
    error: str


class WithdrawalList(BaseModel):
    withdrawals: list[Withdrawal]
    total: int = Field(description="how many requests match, before limit and offset")
    unreadable: list[Unreadable] = Field(description="requests whose audit rows cannot be read (never signable)")


class Wallet(BaseModel):
    signatureId: str
    type: str
    chain: str
    testnet: bool
    created_at: int
    xpub: str | None = None
    address: str | None = None


class WalletList(BaseModel):
    wallets: list[Wallet]


class DepositAddress(BaseModel):
    signatureId: str
    chain: str
    testnet: bool
    index: int
    address: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    vault: Literal["ok", "not-found", "unusable"]


class ErrorDetail(BaseModel):
    code: str = Field(description="`usage`, `approval`, `state`, ... (as the CLI's --json), or an HTTP-level code")
    message: str
    hint: str | None = None
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
