"""The text an approver reads before touching a token: what the transaction does, in human units.

:func:`render_request` is a pure function of typed values: the chain module's decode of the exact
bytes to be signed, the request's metadata and the policy's reasons. Every amount is written in the
coin's (or a known token's) units with the base units beside it, ``pay 0.1 ETH
(100000000000000000 wei) to 0x…``; a token the bundled list does not know is shown in raw units
and called unknown. Every piece of text that is not a number of ours (initiator, reasons,
addresses, symbols, warnings, even the status) goes through :func:`agent.text.escape_text`, so
nothing in a request can move the cursor, erase a line or reverse an address on the approver's
terminal. The result is plain lines; the caller prints it to stderr before asking for a touch.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.chains.base import HIGH_FEE_WARNING, TxKind, TxSummary, fee_is_high
from agent.policy.evaluate import Reason
from agent.policy.rules import DEFAULT_MAX_FEE_PERCENT
from agent.text import escape_text, format_units, percent_text

__all__ = ["render_request"]

MAX_UINT256 = 2**256 - 1
GWEI_DECIMALS = 9


def render_request(
    summary: TxSummary,
    *,
    chain: str,
    testnet: bool,
    signature_id: str,
    index: int,
    initiator: str | None,
    status: str,
    reasons: Sequence[Reason],
    approvals: int,
    approvals_required: int,
    request_id: str = "",
    max_fee_percent: int | None = DEFAULT_MAX_FEE_PERCENT,
) -> str:
    """The approver's summary of one withdrawal request, one fact per line, every free text escaped.

    :param summary: ``chain_module.decode(raw_bytes, testnet=..., owned=...)`` of the request's bytes
        (decode with the wallet's ``Owned`` so change is recognised; never a stored copy).
    :param reasons: the policy decision's reasons (:meth:`agent.policy.Reason.from_json` for stored ones).
    :param max_fee_percent: the rule's ``max_fee_percent``; a fee above it is flagged ``HIGH FEE``
        (None: no flag of our own, the chain module's warning still shows).
    """
    e = escape_text
    net = "testnet" if testnet else "MAINNET"
    lines = [
        f"request {e(request_id)}  [{e(status)}]" if request_id else f"request [{e(status)}]",
        f"  {e(chain)} {net}  wallet {e(signature_id)}  index {index}  "
        f"initiated by {e(initiator) if initiator else 'unknown'}",
    ]
    lines += _movements(summary)
    fee_lines, flagged = _fee_lines(summary, max_fee_percent)
    lines += fee_lines
    for warning in summary.warnings:
        if flagged and warning.startswith(HIGH_FEE_WARNING):
            continue  # replaced by the line above, which applies the policy's threshold
        lines.append(f"  WARNING: {e(warning)}")
    for reason in reasons:
        effect = f" -> {e(reason.effect.value)}" if reason.effect is not None else ""
        lines.append(f"  policy [{e(reason.rule)}] {e(reason.detail)}{effect}")
    lines.append(f"  approvals: {approvals} of {approvals_required}")
    return "\n".join(lines)


def _coins(s: TxSummary, amount: int) -> str:
    """``0.1 ETH (100000000000000000 wei)``; without known decimals, ``N base units of X``."""
    symbol = escape_text(s.symbol or s.chain)
    if s.decimals is None:
        return f"{amount} {escape_text(s.base_unit or 'base units')} of {symbol}"
    return f"{format_units(amount, s.decimals)} {symbol} ({amount} {escape_text(s.base_unit)})"


def _token_amount(s: TxSummary, amount: int) -> str:
    token = s.token
    assert token is not None
    if token.symbol is None or token.decimals is None:
        return f"{amount} raw units of an UNKNOWN token {escape_text(token.token)} (decimals unknown)"
    symbol = escape_text(token.symbol)
    if token.method == "approve" and amount == MAX_UINT256:
        return f"an UNLIMITED amount of {symbol} ({amount} base units)"
    return f"{format_units(amount, token.decimals)} {symbol} ({amount} base units, {token.decimals} decimals)"


def _address(address: str | None, script: str | None) -> str:
    if address is not None:
        return escape_text(address)
    return f"a non-standard script {escape_text(script or '?')}"


def _movements(s: TxSummary) -> list[str]:
    e = escape_text
    lines: list[str] = []
    if s.inputs:
        n = len(s.inputs)
        lines.append(f"  spend {n} coin{'s' if n != 1 else ''} worth {_coins(s, s.total_in)}")
    token = s.token
    if token is not None:
        contract = e(token.token)
        label = e(token.symbol) if token.symbol is not None else "an UNKNOWN token"
        value = s.outputs[0].amount if s.outputs else 0
        also = f", also sending {_coins(s, value)} to it" if value else ""
        lines.append(f"  call {label} contract {contract}: {e(token.method)}{also}")
        if token.method == "approve":
            lines.append(f"  approve {e(token.recipient)} to spend {_token_amount(s, token.amount)}")
        elif token.sender is not None:
            lines.append(f"  pay {_token_amount(s, token.amount)} from {e(token.sender)} to {e(token.recipient)}")
        else:
            lines.append(f"  pay {_token_amount(s, token.amount)} to {e(token.recipient)}")
        return lines
    if s.kind is TxKind.CONTRACT_CREATION:
        size = (len(s.data or "0x") - 2) // 2
        value = sum(o.amount for o in s.outputs)
        lines.append(f"  deploy a NEW CONTRACT ({size} bytes of code), sending {_coins(s, value)}")
        return lines
    if s.kind is TxKind.CONTRACT_CALL:
        size = (len(s.data or "0x") - 2) // 2
        selector = e((s.data or "")[:10])
        for out in s.outputs:
            lines.append(
                f"  call contract {_address(out.address, out.script)} with calldata the decoder cannot read "
                f"({size} bytes, selector {selector}), sending {_coins(s, out.amount)}"
            )
        return lines
    for out in s.outputs:
        tag = " (change: back to this wallet)" if out.is_change else ""
        lines.append(f"  pay {_coins(s, out.amount)} to {_address(out.address, out.script)}{tag}")
    return lines


def _fee_lines(s: TxSummary, max_fee_percent: int | None) -> tuple[list[str], bool]:
    """The fee line, and a HIGH FEE warning line above ``max_fee_percent`` (True if there is one)."""
    base = s.fee_base
    moved = "sent" if s.spent else "moved within the wallet"
    parts: list[str] = []
    if s.chain_id is not None:  # EVM: gas limit x max fee per gas is the most it can cost
        if s.size:
            parts.append(f"{s.size} gas x {format_units(s.fee // s.size, GWEI_DECIMALS)} gwei")
    elif s.size:
        tenths = s.fee * 10 // s.size
        parts.append(f"{tenths // 10}.{tenths % 10} {escape_text(s.base_unit)}/vB, {s.size} vB")
    if base:
        parts.append(f"{percent_text(s.fee, base)} of the value {moved}")
    detail = f": {', '.join(parts)}" if parts else ""
    if s.chain_id is not None:
        line = f"  fee up to {_coins(s, s.fee)}{detail}  nonce {s.nonce}  type {escape_text(s.tx_type)}"
    else:
        line = f"  fee {_coins(s, s.fee)}{detail}" + (f"  txid {escape_text(s.txid)}" if s.txid else "")
    lines = [line]
    if max_fee_percent is not None and base is not None and s.fee and fee_is_high(s.fee, base, max_fee_percent):
        what = "all the value that moves" if base == 0 else f"{percent_text(s.fee, base)} of the value {moved}"
        if s.inputs:
            what += f", {percent_text(s.fee, s.total_in)} of the coins spent"
        lines.append(f"  WARNING: HIGH FEE: the fee is {what} (threshold {max_fee_percent} %)")
    return lines, len(lines) > 1
