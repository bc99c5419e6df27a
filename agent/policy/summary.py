"""What policy judges: the decoded transaction, reduced to value movements (docs/policy.md §2).

Amounts and destinations come from the chain module's decode of the exact bytes to be signed
(:func:`from_tx_summary`), never from request metadata: a compromised upstream can label a request
anything, but it cannot make the decoder see another recipient than the one in the bytes.

These are plain values with no validation on construction, on purpose: :func:`agent.policy.evaluate`
must turn *any* summary, however malformed, into a decision (a deny) instead of an exception.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.chains.base import TxSummary


@dataclass(frozen=True)
class SummaryOutput:
    """One value movement: ``amount`` of ``asset`` (base units) to ``address``."""

    address: str
    amount: int
    asset: str
    #: True only when the decoder proved the output pays back to this wallet.
    is_change: bool = False


@dataclass(frozen=True)
class RequestSummary:
    chain: str
    network: str
    #: The wallet (Tatum signatureId) that would sign.
    signature_id: str
    outputs: tuple[SummaryOutput, ...]
    fee: int
    #: The asset the fee is paid in (the chain's native coin).
    fee_asset: str
    #: True when the transaction does something the decoder cannot read (unknown contract call,
    #: contract creation): its real effect is not in ``outputs``.
    opaque: bool = False

    def spent(self) -> dict[str, int]:
        """Base units leaving the wallet per asset: non-change outputs, plus the fee in its asset."""
        return spent_by_asset(self.outputs, self.fee, self.fee_asset)

    @property
    def destinations(self) -> tuple[str, ...]:
        return tuple(o.address for o in self.outputs if not o.is_change)


@dataclass(frozen=True)
class HistoryEntry:
    """A withdrawal the agent already signed (from the audit log), for rolling velocity limits."""

    signed_at: int
    summary: RequestSummary


def canonical_ref(value: str) -> str:
    """Spelling used to compare addresses and asset ids: ``0x`` hex is case-insensitive (EIP-55)."""
    return value.lower() if value[:2] in ("0x", "0X") else value


def spent_by_asset(outputs: Iterable[SummaryOutput], fee: int, fee_asset: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for out in outputs:
        if not out.is_change:
            key = canonical_ref(out.asset)
            totals[key] = totals.get(key, 0) + out.amount
    fee_key = canonical_ref(fee_asset)
    if fee:
        totals[fee_key] = totals.get(fee_key, 0) + fee
    return totals


def from_tx_summary(tx: TxSummary, *, signature_id: str, native_asset: str) -> RequestSummary:
    """Reduce a chain module's decoded transaction to what policy judges.

    * Native outputs keep their address; an output with no address (a non-standard script) gets
      ``script:<hex>`` so it can never match an allowlist entry.
    * ERC-20 ``transfer``/``transferFrom``: the real recipient and amount, in the token's asset id
      (its contract address). ``approve``: the spender and allowance, treated as money out, since
      the spender can take it. The zero-value call to the token contract itself is dropped.
    * Contract calls the decoder cannot read, and contract creations, are marked ``opaque``.
    """
    from agent.chains.base import TxKind

    outputs: list[SummaryOutput] = []
    for out in tx.outputs:
        if tx.token is not None and out.amount == 0:
            continue
        address = out.address if out.address is not None else f"script:{out.script or ''}"
        outputs.append(SummaryOutput(address, out.amount, native_asset, out.is_change))
    if tx.token is not None:
        outputs.append(SummaryOutput(tx.token.recipient, tx.token.amount, tx.token.token, False))
    opaque = tx.kind in (TxKind.CONTRACT_CALL, TxKind.CONTRACT_CREATION)
    return RequestSummary(tx.chain, tx.network, signature_id, tuple(outputs), tx.fee, native_asset, opaque)
