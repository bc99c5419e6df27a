"""The one contract every chain module implements, and the records it returns.

A chain module turns *(wallet, index)* into keys and addresses, decodes an unsigned transaction into a
:class:`TxSummary` that policy can judge, signs it, and serialises the result for broadcast. It never
touches the network: chain state (UTXOs, balances, nonces, fee rates) comes from the caller.

Libraries are imported lazily inside the chain modules' functions so that ``import agent.chains``
stays cheap; the CLI must answer in well under 0.3 s.

Amounts are integers in the chain's smallest unit (satoshi, wei). ``to_json()`` renders them as
decimal *strings*, because wei amounts do not fit a JSON number that JavaScript reads exactly, and
beside each one the same amount in the coin's (or a known token's) units (``amountHuman``,
``feeHuman``), so nobody has to count eighteen zeros.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: A fee above this share (percent) of the value it moves is "high": flagged in the summary's
#: warnings, and a consolidation with such a fee is not called an ordinary move within the wallet.
#: The policy's ``max_fee_percent`` (same default) decides escalation (docs/policy.md §3).
HIGH_FEE_PERCENT = 10
#: Every high-fee warning starts with this, so a renderer that applies the policy's own threshold
#: can replace it.
HIGH_FEE_WARNING = "high fee:"


class Family(StrEnum):
    UTXO = "utxo"
    EVM = "evm"


class TxKind(StrEnum):
    """What a transaction does, as far as the decoder can tell."""

    #: Native coin moves only (UTXO payments, EVM value transfers with empty calldata).
    TRANSFER = "transfer"
    #: ERC-20 ``transfer(address,uint256)``: the real recipient is in the calldata.
    TOKEN_TRANSFER = "token_transfer"
    #: ERC-20 ``approve(address,uint256)``: grants a spender an allowance.
    TOKEN_APPROVE = "token_approve"
    #: ERC-20 ``transferFrom(address,address,uint256)``.
    TOKEN_TRANSFER_FROM = "token_transfer_from"
    #: Calldata we do not understand: policy must treat the call as opaque.
    CONTRACT_CALL = "contract_call"
    CONTRACT_CREATION = "contract_creation"


@dataclass(frozen=True)
class TxInput:
    """A coin being spent. ``amount`` is known for every input we accept (we refuse otherwise)."""

    txid: str
    vout: int
    amount: int
    address: str | None
    #: Script type: ``p2wpkh``, ``p2sh-p2wpkh``, ``p2pkh`` or ``unknown``.
    script_type: str

    def to_json(self, decimals: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "txid": self.txid,
            "vout": self.vout,
            "amount": str(self.amount),
            "address": self.address,
            "scriptType": self.script_type,
        }
        if decimals is not None:
            out["amountHuman"] = _units(self.amount, decimals)
        return out


@dataclass(frozen=True)
class TxOutput:
    """Where value goes. ``is_change`` is True only when the output provably pays one of our addresses."""

    address: str | None
    amount: int
    is_change: bool = False
    #: Hex scriptPubKey for UTXO outputs (an address cannot express every script); None for EVM.
    script: str | None = None

    def to_json(self, decimals: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "amount": str(self.amount), "isChange": self.is_change}
        if self.script is not None:
            out["script"] = self.script
        if decimals is not None:
            out["amountHuman"] = _units(self.amount, decimals)
        return out


@dataclass(frozen=True)
class TokenCall:
    """A decoded ERC-20 call: which token contract, and who really receives or may spend."""

    method: str
    token: str
    #: The recipient (``transfer``/``transferFrom``) or the spender (``approve``).
    recipient: str
    amount: int
    #: The owner being debited, for ``transferFrom`` only.
    sender: str | None = None
    #: Symbol and decimals from the bundled list of known tokens (:mod:`agent.chains.tokens`);
    #: None for any other contract, whose amount can only be shown in raw base units.
    symbol: str | None = None
    decimals: int | None = None

    @property
    def known(self) -> bool:
        return self.symbol is not None and self.decimals is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "token": self.token,
            "recipient": self.recipient,
            "amount": str(self.amount),
        }
        if self.sender is not None:
            out["sender"] = self.sender
        out["known"] = self.known
        out["symbol"] = self.symbol
        out["decimals"] = self.decimals
        out["amountHuman"] = _units(self.amount, self.decimals) if self.decimals is not None else None
        return out


@dataclass(frozen=True)
class TxSummary:
    """Everything policy needs to judge a transaction, decoded from the bytes that will be signed.

    ``outputs`` are the native-coin movements. For an ERC-20 call the native output is the token
    contract (usually with amount 0) and ``token`` names the real recipient and amount.
    """

    chain: str
    network: str
    kind: TxKind
    inputs: tuple[TxInput, ...]
    outputs: tuple[TxOutput, ...]
    #: Exact fee (UTXO) or the most the transaction can pay (EVM: gas limit x max fee per gas).
    fee: int
    #: ``"BTC"``, ``"ETH"``, ... for native transfers; the token contract address for ERC-20 calls.
    asset: str
    nonce: int | None = None
    chain_id: int | None = None
    token: TokenCall | None = None
    #: Unsigned transaction id (UTXO: txid, stable under segwit signing) or None.
    txid: str | None = None
    #: Virtual size in vbytes (UTXO) or the gas limit (EVM).
    size: int | None = None
    #: Transaction type: ``psbt-v0``, ``psbt-v2`` (UTXO); ``legacy``, ``eip1559`` (EVM).
    tx_type: str = ""
    #: Hex calldata for EVM calls we could not decode (``kind == CONTRACT_CALL``), else None.
    data: str | None = None
    warnings: tuple[str, ...] = ()
    #: The native coin: ticker, decimals and the name of its base unit (``BTC``, 8, ``sat``;
    #: ``ETH``, 18, ``wei``). Outputs, inputs and the fee are always in this coin.
    symbol: str = ""
    decimals: int | None = None
    base_unit: str = ""

    @property
    def total_out(self) -> int:
        return sum(o.amount for o in self.outputs)

    @property
    def total_in(self) -> int:
        return sum(i.amount for i in self.inputs)

    @property
    def spent(self) -> tuple[TxOutput, ...]:
        """Outputs that leave the wallet (everything but change)."""
        return tuple(o for o in self.outputs if not o.is_change)

    @property
    def fee_base(self) -> int | None:
        """The native value the fee is judged against (see :func:`fee_is_high`).

        What leaves the wallet; when nothing does (every output is change), what moves within it.
        None when the value moved is not in the native coin (token calls: there is no price to
        compare a fee in ETH with an amount in USDT) or cannot be read (contract calls, creations).
        """
        if self.token is not None or self.kind in (TxKind.CONTRACT_CALL, TxKind.CONTRACT_CREATION):
            return None
        sent = sum(o.amount for o in self.spent)
        return sent if sent else self.total_out

    @property
    def high_fee(self) -> bool:
        """True when the fee exceeds :data:`HIGH_FEE_PERCENT` of :attr:`fee_base`."""
        base = self.fee_base
        return base is not None and fee_is_high(self.fee, base, HIGH_FEE_PERCENT)

    def to_json(self) -> dict[str, Any]:
        d = self.decimals
        base = self.fee_base
        return {
            "chain": self.chain,
            "network": self.network,
            "kind": self.kind.value,
            "txType": self.tx_type,
            "asset": self.asset,
            "inputs": [i.to_json(d) for i in self.inputs],
            "outputs": [o.to_json(d) for o in self.outputs],
            "fee": str(self.fee),
            "nonce": self.nonce,
            "chainId": self.chain_id,
            "token": self.token.to_json() if self.token is not None else None,
            "txid": self.txid,
            "size": self.size,
            "data": self.data,
            "warnings": list(self.warnings),
            "coin": None if d is None else {"symbol": self.symbol, "decimals": d, "baseUnit": self.base_unit},
            "feeHuman": None if d is None else _units(self.fee, d),
            "feeBase": None if base is None else str(base),
            "highFee": self.high_fee,
        }


def _units(amount: int, decimals: int) -> str:
    from agent.text import format_units  # here, not at import: ``import agent.chains`` stays minimal

    return format_units(amount, decimals)


def high_fee_warning(summary: TxSummary) -> str:
    """The ``high fee:`` warning for a summary whose :attr:`TxSummary.high_fee` is True."""
    from agent.text import percent_text

    def coins(amount: int) -> str:
        return f"{_units(amount, summary.decimals or 0)} {summary.symbol} ({amount} {summary.base_unit})"

    base = summary.fee_base or 0
    up_to = "up to " if summary.chain_id is not None else ""  # EVM: gas limit x max fee, the most it costs
    moved = "sent" if summary.spent else "moved within the wallet"
    what = (
        "all the value that moves" if base == 0 else f"{percent_text(summary.fee, base)} of the {coins(base)} {moved}"
    )
    return f"{HIGH_FEE_WARNING} {up_to}{coins(summary.fee)} is {what} (over {HIGH_FEE_PERCENT} %)"


def fee_is_high(fee: int, base: int, percent: int) -> bool:
    """``fee > percent % of base``, in integers. With nothing else moving (``base == 0``) any fee is high."""
    return fee * 100 > percent * base


@dataclass(frozen=True)
class SignedTx:
    """A fully signed transaction, ready for broadcast as ``raw_hex``."""

    chain: str
    raw: bytes
    #: Transaction id as explorers show it (UTXO txid; EVM transaction hash with 0x).
    txid: str
    summary: TxSummary
    #: EVM: the address that signed (checksummed). UTXO: None (inputs may come from many addresses).
    sender: str | None = None

    @property
    def raw_hex(self) -> str:
        return self.raw.hex() if self.summary.chain_id is None else "0x" + self.raw.hex()

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "txid": self.txid,
            "raw": self.raw_hex,
            "sender": self.sender,
            "summary": self.summary.to_json(),
        }


@dataclass(frozen=True)
class FeeEstimate:
    """A fee computed from caller-supplied parameters (no network access)."""

    fee: int
    #: vbytes (UTXO) or gas (EVM).
    size: int
    #: sat/vbyte (UTXO) or wei per gas (EVM): the rate that was applied.
    rate: int

    def to_json(self) -> dict[str, Any]:
        return {"fee": str(self.fee), "size": self.size, "rate": str(self.rate)}


@dataclass(frozen=True)
class Owned:
    """What the decoder may treat as ours when it looks for change.

    An output counts as change only if it pays one of ``addresses``, or (PSBT) carries a BIP-32
    derivation that re-derives from ``xpub`` to exactly the output's script.
    """

    addresses: frozenset[str] = field(default_factory=frozenset)
    xpub: str | None = None


class Chain(abc.ABC):
    """One chain (or one family parameterised per chain): keys, addresses, decode, sign, fees."""

    #: Canonical upper-case name as Tatum spells it (``BTC``, ``MATIC``, ...).
    name: str
    family: Family
    #: Ticker of the native coin (``asset`` in summaries).
    symbol: str
    #: Decimals of the native coin and the name of its base unit (8 and ``sat``; 18 and ``wei``).
    decimals: int
    base_unit: str

    # --- keys and addresses ----------------------------------------------------------------------
    @abc.abstractmethod
    def xpub_from_mnemonic(self, mnemonic: str, *, testnet: bool) -> str:
        """The extended public key Tatum stores for a mnemonic wallet (at Tatum's path for this chain).

        :raises UsageError: the mnemonic is not valid BIP-39 English (the message never quotes it).
        """

    @abc.abstractmethod
    def address_from_xpub(self, xpub: str, index: int, *, testnet: bool) -> str:
        """Address ``index`` of a wallet, derived publicly (non-hardened) from its stored xpub.

        :raises UsageError: not an xpub of this chain and network, or a bad index.
        """

    @abc.abstractmethod
    def private_key_from_mnemonic(self, mnemonic: str, index: int, *, testnet: bool) -> bytearray:
        """The 32-byte private key of address ``index``. The caller wipes the returned bytearray."""

    @abc.abstractmethod
    def address_from_private_key(self, key: bytes, *, testnet: bool) -> str:
        """The address Tatum shows for a private-key wallet."""

    @abc.abstractmethod
    def parse_private_key(self, text: str, *, testnet: bool) -> bytearray:
        """Parse a pasted private key (WIF for UTXO chains, hex for EVM) into 32 bytes.

        :raises UsageError: malformed key; the message never contains the input.
        """

    @abc.abstractmethod
    def normalize_address(self, address: str, *, testnet: bool) -> str:
        """Validate ``address`` for this chain and network and return its canonical spelling.

        :raises UsageError: not an address of this chain and network.
        """

    # --- transactions ----------------------------------------------------------------------------
    @abc.abstractmethod
    def decode(self, tx: bytes | str, *, testnet: bool, owned: Owned | None = None) -> TxSummary:
        """Decode an unsigned transaction into a summary; nothing is signed.

        :raises ChainError: malformed, wrong network, missing amounts, absurd fee, unknown chain id.
        """

    @abc.abstractmethod
    def sign(self, tx: bytes | str, keys: Sequence[bytes], *, testnet: bool, owned: Owned | None = None) -> SignedTx:
        """Decode, check, sign with ``keys`` and serialise for broadcast.

        Every input (UTXO) or the transaction (EVM) must be signable by one of ``keys``; a
        transaction that would go out partly signed is refused.

        :raises ChainError: anything :meth:`decode` refuses, a key that matches nothing, or an
            unusable signing backend.
        """
