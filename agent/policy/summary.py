"""What policy judges: the decoded transaction, reduced to value movements (docs/policy.md §2).

Amounts and destinations come from the chain module's decode of the exact bytes to be signed
(:func:`from_tx_summary`), never from request metadata: a compromised upstream can label a request
anything, but it cannot make the decoder see another recipient than the one in the bytes.

These are plain values with no validation on construction, on purpose: :func:`agent.policy.evaluate`
must turn *any* summary, however malformed, into a decision (a deny) instead of an exception.
"""

from __future__ import annotations

import re
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
class AssetUnit:
    """How to write amounts of ``asset`` for people: ``decimals`` and ``symbol``, and the base unit's name.

    Only for display (reasons); every comparison and limit stays in base units.
    """

    asset: str
    symbol: str
    decimals: int
    #: ``sat``, ``wei``, or ``base units`` for a token.
    base_unit: str = "base units"


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
    #: Decimals and symbols of the assets this summary names, for readable reasons (may be empty).
    units: tuple[AssetUnit, ...] = ()

    def spent(self) -> dict[str, int]:
        """Base units leaving the wallet per asset: non-change outputs, plus the fee in its asset."""
        return spent_by_asset(self.outputs, self.fee, self.fee_asset)

    def fee_base(self) -> int | None:
        """The value in ``fee_asset`` that the fee is judged against (docs/policy.md §3, check ``fee``).

        What leaves the wallet in the fee's asset; when nothing does (every output is change), what
        moves within the wallet. None when the fee cannot be compared: an opaque transaction, or
        outputs in another asset (a token transfer; there is no price between a token and the coin).
        """
        if self.opaque:
            return None
        fee_key = canonical_ref(self.fee_asset)
        if any(canonical_ref(o.asset) != fee_key for o in self.outputs):
            return None
        sent = sum(o.amount for o in self.outputs if not o.is_change)
        return sent if sent else sum(o.amount for o in self.outputs)

    def unit_of(self, asset: str) -> AssetUnit | None:
        key = canonical_ref(asset)
        return next((u for u in self.units if isinstance(u, AssetUnit) and canonical_ref(u.asset) == key), None)

    @property
    def destinations(self) -> tuple[str, ...]:
        return tuple(o.address for o in self.outputs if not o.is_change)


@dataclass(frozen=True)
class HistoryEntry:
    """A withdrawal the agent already signed (from the audit log), for rolling velocity limits."""

    signed_at: int
    summary: RequestSummary


#: bech32 human-readable parts of the chains we sign for (BTC main/test/regtest, LTC main/test).
_BECH32_HRPS = frozenset({"bc", "tb", "bcrt", "ltc", "tltc"})
#: CashAddr prefixes (BCH main/test/regtest).
_CASHADDR_PREFIXES = ("bitcoincash:", "bchtest:", "bchreg:")
_BECH32_DATA = re.compile(r"[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{6,}")
_XDC = re.compile(r"xdc[0-9a-f]{40}")


def canonical_ref(value: str) -> str:
    """Spelling used to compare addresses and asset ids, whatever case they were written in.

    Formats whose case carries no meaning are folded to lower case: ``0x`` hex and ``xdc`` hex
    (EIP-55 case is a checksum, not part of the address), bech32/bech32m addresses of our chains
    (BIP-173: one case, upper case for QR codes) and CashAddr. Everything else (base58 addresses,
    coin tickers, ``script:`` references) is case-sensitive and kept exactly. A mixed-case bech32
    string is invalid (BIP-173) and is kept as written, so it can never match a decoded address.
    """
    if value[:2] in ("0x", "0X"):
        return value.lower()
    low = value.lower()
    if _XDC.fullmatch(low):
        return low
    if value not in (low, value.upper()):
        return value
    hrp, sep, data = low.rpartition("1")
    if sep and hrp in _BECH32_HRPS and _BECH32_DATA.fullmatch(data):
        return low
    for prefix in _CASHADDR_PREFIXES:
        if low.startswith(prefix) and _BECH32_DATA.fullmatch(low[len(prefix) :]):
            return low
    return value


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
    units: list[AssetUnit] = []
    if tx.decimals is not None:
        units.append(AssetUnit(native_asset, tx.symbol or native_asset, tx.decimals, tx.base_unit or "base units"))
    if tx.token is not None:
        outputs.append(SummaryOutput(tx.token.recipient, tx.token.amount, tx.token.token, False))
        if tx.token.symbol is not None and tx.token.decimals is not None:
            units.append(AssetUnit(tx.token.token, tx.token.symbol, tx.token.decimals))
    opaque = tx.kind in (TxKind.CONTRACT_CALL, TxKind.CONTRACT_CREATION)
    return RequestSummary(
        tx.chain, tx.network, signature_id, tuple(outputs), tx.fee, native_asset, opaque, tuple(units)
    )
