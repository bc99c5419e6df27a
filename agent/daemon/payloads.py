"""A Tatum pending transaction -> the unsigned bytes, wallet and derivation index of one of our requests.

Payloads (research §1.7):

* EVM chains: ``serializedTransaction`` is a web3 ``TransactionConfig`` as JSON: ``to``, ``value``
  (wei), ``data``, ``gas``/``gasLimit``, ``gasPrice`` or ``maxFeePerGas``/``maxPriorityFeePerGas``,
  ``nonce``, ``chainId``; numbers as JSON integers, decimal strings or ``0x`` hex strings. Tatum KMS
  fills a missing nonce, gas or gas price from Tatum's own RPC; we refuse such a transaction (fail
  closed: policy and approvers judge the exact bytes that get signed, and nobody approved a fee
  or nonce chosen afterwards). The error goes to Tatum's batch endpoint.
* Bitcoin family: bitcore's ``Transaction.toObject()`` JSON (``inputs[].prevTxId``, ``outputIndex``,
  ``sequenceNumber``, ``output{satoshis, script}``; ``outputs[]{satoshis, script}``; ``nLockTime``,
  ``version``, and optionally ``fee``, ``changeScript``, ``changeIndex``) becomes a PSBT whose inputs
  carry ``witness_utxo`` from ``output``. Or a PSBT (base64 or hex) passed as is.

Keys: exactly one wallet signs. ``hashes`` (a private-key wallet, or a mnemonic wallet with ``index``),
``signatures[]{id, index}`` (mnemonic + index); a transaction whose keys span more than one wallet,
or more than one index of a wallet, is refused: a request is signed by one key.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent.chains.evm import TRANSACTION_FIELDS
from agent.daemon.tatum_api import PendingTx
from agent.errors import KmsAgentError, UsageError

#: Largest serializedTransaction we parse (a 100 kvB transaction as bitcore JSON is far smaller).
MAX_SERIALIZED = 2_000_000
MAX_MONEY = 21_000_000 * 10**8
MAX_UINT256 = 2**256 - 1
_UTXO_CHAINS = {"BTC", "LTC", "DOGE", "BCH"}


class PayloadError(UsageError):
    """A pending transaction we cannot turn into a request; its message goes to Tatum's batch endpoint."""


class PayloadKind(StrEnum):
    TRANSACTION_CONFIG = "web3-transaction-config"
    BITCORE = "bitcore-json"
    PSBT = "psbt"


@dataclass(frozen=True)
class Unsigned:
    """What one request is created from."""

    chain: str
    signature_id: str
    index: int
    #: The unsigned transaction: EVM signing bytes as 0x hex, or a base64 PSBT.
    tx: str
    kind: PayloadKind


def to_unsigned(pending: PendingTx) -> Unsigned:
    """:raises PayloadError: an unknown chain, keys of several wallets, or a payload we do not sign."""
    from agent.chains import Family, get_chain

    try:
        chain = get_chain(pending.chain)
    except KmsAgentError:
        raise PayloadError(f"chain {pending.chain} is not one kms-agent signs for") from None
    if pending.withdrawal_id is not None:
        raise PayloadError(
            "virtual-account (off-chain) withdrawals are not supported by kms-agent: "
            "their keys are chosen per input by Tatum's ledger"
        )
    signature_id, index = signing_key(pending)
    if len(pending.serialized) > MAX_SERIALIZED:
        raise PayloadError(f"serializedTransaction is larger than {MAX_SERIALIZED} characters")
    if chain.family is Family.EVM:
        return Unsigned(
            chain.name, signature_id, index, evm_transaction(pending.serialized), PayloadKind.TRANSACTION_CONFIG
        )
    text = pending.serialized.strip()
    if text.startswith("{"):
        return Unsigned(chain.name, signature_id, index, bitcore_to_psbt(text), PayloadKind.BITCORE)
    return Unsigned(chain.name, signature_id, index, psbt_text(text), PayloadKind.PSBT)


def signing_key(pending: PendingTx) -> tuple[str, int]:
    """The one (signatureId, index) that signs, from ``hashes``, ``signatures`` and ``index``.

    :raises PayloadError: no key, or keys of more than one wallet or index.
    """
    keys = {(h, pending.index if pending.index is not None else 0) for h in pending.hashes}
    for ref in pending.signatures:
        keys.add((ref.signature_id, ref.index if ref.index is not None else (pending.index or 0)))
    if not keys:
        raise PayloadError("the pending transaction names no wallet (no hashes, no signatures)")
    wallets = {k[0] for k in keys}
    if len(wallets) > 1:
        raise PayloadError(
            f"the transaction needs keys of {len(wallets)} wallets; kms-agent signs a request with one key"
        )
    if len(keys) > 1:
        indexes = ", ".join(str(k[1]) for k in sorted(keys))
        raise PayloadError(f"the transaction needs keys at several indexes ({indexes}); kms-agent signs with one key")
    return next(iter(keys))


# --- EVM ------------------------------------------------------------------------------------------


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text, parse_float=_no_float, parse_constant=_no_float)
    except PayloadError:
        raise
    except ValueError:
        raise PayloadError(f"serializedTransaction is not valid JSON ({what})") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"serializedTransaction is not a JSON object ({what})")
    return obj


def _no_float(text: str) -> Any:
    raise PayloadError(f"a number in serializedTransaction is not an integer: {text[:40]}")


def _uint(value: Any, name: str, limit: int = MAX_UINT256) -> int:
    """A JSON integer, decimal string or 0x hex string, 0..limit."""
    if isinstance(value, bool):
        raise PayloadError(f"{name} must be an integer, not {json.dumps(value)}")
    if isinstance(value, int):
        out = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            if text[:2].lower() == "0x":
                out = int(text[2:], 16) if len(text) <= 2 + 64 else limit + 1
            elif text.isdigit() and len(text) <= 80:
                out = int(text)
            else:
                raise ValueError
        except ValueError:
            raise PayloadError(f"{name} is not an integer: {value[:40]!r}") from None
    else:
        raise PayloadError(f"{name} must be an integer")
    if not 0 <= out <= limit:
        raise PayloadError(f"{name} is out of range")
    return out


def evm_transaction(text: str) -> str:
    """A web3 TransactionConfig (JSON) -> the unsigned signing bytes as 0x hex.

    :raises PayloadError: not JSON, an unknown field, a missing nonce/gas/fee/chainId, absurd numbers.
    """
    from agent.chains.evm import MAX_GAS, unsigned_bytes

    obj = _json_object(text, "expected a web3 TransactionConfig")
    unknown = sorted(set(obj) - TRANSACTION_FIELDS)
    if unknown:
        raise PayloadError(f"unknown TransactionConfig fields: {', '.join(unknown)}")
    missing = [name for name in ("nonce", "chainId") if obj.get(name) is None]
    if obj.get("gas") is None and obj.get("gasLimit") is None:
        missing.append("gas")
    if obj.get("gasPrice") is None and obj.get("maxFeePerGas") is None:
        missing.append("gasPrice or maxFeePerGas")
    if missing:
        raise PayloadError(
            f"the TransactionConfig has no {', '.join(missing)}; kms-agent signs only complete transactions "
            "(Tatum KMS would fill them in from its own RPC; set them when you create the transaction)"
        )
    fields: dict[str, Any] = {k: v for k, v in obj.items() if v is not None and k != "from"}
    for name in ("value", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas"):
        if name in fields:
            fields[name] = _uint(fields[name], name)
    fields["nonce"] = _uint(fields["nonce"], "nonce", 2**64 - 2)
    fields["chainId"] = _uint(fields["chainId"], "chainId", 2**64 - 1)
    gas_name = "gas" if "gas" in fields else "gasLimit"
    fields[gas_name] = _uint(fields[gas_name], gas_name, MAX_GAS)
    if "type" in fields:
        fields["type"] = _uint(fields["type"], "type", 2)
    for name in ("to", "data", "input"):
        if name in fields and not isinstance(fields[name], str):
            raise PayloadError(f"{name} must be a hex string")
    try:
        return "0x" + unsigned_bytes(fields).hex()
    except KmsAgentError as exc:
        raise PayloadError(f"TransactionConfig: {exc.message}") from None


# --- Bitcoin family -------------------------------------------------------------------------------


def _hex(value: Any, name: str, *, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise PayloadError(f"{name} must be a hex string")
    try:
        out = bytes.fromhex(value)
    except ValueError:
        raise PayloadError(f"{name} is not hex") from None
    if size is not None and len(out) != size:
        raise PayloadError(f"{name} must be {size} bytes")
    return out


def _int(value: Any, name: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise PayloadError(f"{name} must be an integer from 0 to {limit}")
    return value


def bitcore_to_psbt(text: str) -> str:
    """bitcore ``Transaction.toObject()`` JSON -> an unsigned PSBT (base64), inputs with ``witness_utxo``.

    :raises PayloadError: not bitcore's shape, a signed input, amounts that do not add up.
    """
    from embit.psbt import PSBT
    from embit.script import Script
    from embit.transaction import Transaction, TransactionInput, TransactionOutput

    obj = _json_object(text, "expected bitcore Transaction JSON")
    inputs, outputs = obj.get("inputs"), obj.get("outputs")
    if not isinstance(inputs, list) or not inputs:
        raise PayloadError("bitcore transaction: no inputs")
    if not isinstance(outputs, list) or not outputs:
        raise PayloadError("bitcore transaction: no outputs")
    if len(inputs) > 10_000 or len(outputs) > 10_000:
        raise PayloadError("bitcore transaction: too many inputs or outputs")
    vin, spent = [], []
    for i, inp in enumerate(inputs):
        if not isinstance(inp, dict):
            raise PayloadError(f"bitcore input {i} is not an object")
        prev = _hex(inp.get("prevTxId"), f"input {i} prevTxId", size=32)
        vout = _int(inp.get("outputIndex"), f"input {i} outputIndex", 0xFFFFFFFF)
        seq = _int(inp.get("sequenceNumber", 0xFFFFFFFF), f"input {i} sequenceNumber", 0xFFFFFFFF)
        if inp.get("script"):
            raise PayloadError(f"bitcore input {i} already has a scriptSig: not an unsigned transaction")
        out = inp.get("output")
        if not isinstance(out, dict):
            raise PayloadError(
                f"bitcore input {i} has no output {{satoshis, script}}: the amount it spends is unknown, refusing"
            )
        amount = _int(out.get("satoshis"), f"input {i} output.satoshis", MAX_MONEY)
        spent.append((amount, _hex(out.get("script"), f"input {i} output.script")))
        vin.append(TransactionInput(prev, vout, sequence=seq))
    vout_list = []
    for i, out in enumerate(outputs):
        if not isinstance(out, dict):
            raise PayloadError(f"bitcore output {i} is not an object")
        amount = _int(out.get("satoshis"), f"output {i} satoshis", MAX_MONEY)
        vout_list.append(TransactionOutput(amount, Script(_hex(out.get("script"), f"output {i} script"))))
    total_in = sum(a for a, _ in spent)
    total_out = sum(o.value for o in vout_list)
    if total_out > total_in:
        raise PayloadError(f"bitcore transaction spends {total_out} satoshi but its inputs hold {total_in}")
    if obj.get("fee") is not None and _int(obj["fee"], "fee", MAX_MONEY) != total_in - total_out:
        raise PayloadError(
            f"bitcore transaction: fee {obj['fee']} is not inputs minus outputs ({total_in - total_out})"
        )
    change = obj.get("changeScript")
    if change is not None:
        change_spk = _hex(change, "changeScript")
        idx = obj.get("changeIndex")
        if idx is not None:
            idx = _int(idx, "changeIndex", len(vout_list) - 1)
            if vout_list[idx].script_pubkey.data != change_spk:
                raise PayloadError("bitcore transaction: changeIndex does not point at changeScript")
    version = _int(obj.get("version", 1), "version", 0xFFFFFFFF)
    locktime = _int(obj.get("nLockTime", 0), "nLockTime", 0xFFFFFFFF)
    tx = Transaction(version=version, vin=vin, vout=vout_list, locktime=locktime)
    psbt = PSBT(tx)
    for i, (amount, spk) in enumerate(spent):
        psbt.inputs[i].witness_utxo = TransactionOutput(amount, Script(spk))
    return str(psbt.to_base64())


def psbt_text(text: str) -> str:
    """A PSBT given as base64 or hex, as a base64 string (the UTXO layer checks everything else)."""
    if text[:10].lower() == "70736274ff":
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise PayloadError("serializedTransaction is neither bitcore JSON nor a PSBT") from None
    else:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise PayloadError("serializedTransaction is neither bitcore JSON nor a PSBT") from None
    if not raw.startswith(b"psbt\xff"):
        raise PayloadError("serializedTransaction is neither bitcore JSON nor a PSBT")
    return base64.b64encode(raw).decode()
