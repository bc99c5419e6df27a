"""Ethereum and the EVM chains Tatum serves (BSC, MATIC, CELO, KLAY, ONE, XDC, KCS), over eth-account.

Input format: the *unsigned* transaction in the exact bytes that get hashed and signed, as hex:

* EIP-1559: ``0x02 || rlp([chainId, nonce, maxPriorityFeePerGas, maxFeePerGas, gas, to, value, data,
  accessList])``
* legacy EIP-155: ``rlp([nonce, gasPrice, gas, to, value, data, chainId, 0, 0])``

or the same fields as a JSON object / dict (eth-account's field names), which is first encoded to
those bytes. Decoding the bytes that are signed means policy judges exactly what the key signs; after
signing, the signed transaction is decoded again and compared field by field with the summary.

Pre-EIP-155 legacy transactions (no chain id, replayable on every chain) and EIP-2930/4844/7702
types are refused. ERC-20 ``transfer``, ``approve`` and ``transferFrom`` are decoded so that policy sees
the real recipient; any other calldata is flagged as an opaque contract call.

Tatum's paths: the xpub sits at ``m/44'/coin'/0'/0`` (testnet ``m/44'/1'/0'/0``) and always uses the
mainnet ``xpub`` version bytes, even on testnet. Address i = keccak(xpub/i). Addresses come out
EIP-55 checksummed (XDC: ``xdc`` + the checksummed body, as XDC tools show them).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.chains import _hd
from agent.chains.base import (
    Chain,
    Family,
    FeeEstimate,
    Owned,
    SignedTx,
    TokenCall,
    TxKind,
    TxOutput,
    TxSummary,
    high_fee_warning,
)
from agent.chains.tokens import known_token
from agent.errors import ChainError, UsageError

GWEI = 10**9
MAX_GAS = 30_000_000
MAX_UINT256 = 2**256 - 1
#: ERC-20 selectors: keccak("transfer(address,uint256)")[:4], ...
SEL_TRANSFER = bytes.fromhex("a9059cbb")
SEL_APPROVE = bytes.fromhex("095ea7b3")
SEL_TRANSFER_FROM = bytes.fromhex("23b872dd")
_HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")


def keccak256(data: bytes) -> bytes:
    from Crypto.Hash import keccak

    return bytes(keccak.new(digest_bits=256, data=data).digest())


@functools.lru_cache(maxsize=65536)
def checksum(addr20: bytes) -> str:
    """EIP-55 mixed-case hex body (no prefix) of a 20-byte address."""
    body = addr20.hex()
    h = keccak256(body.encode()).hex()
    return "".join(c.upper() if c.isalpha() and int(h[i], 16) >= 8 else c for i, c in enumerate(body))


@dataclass(frozen=True)
class EvmChain(Chain):
    """One EVM chain: Tatum name, coin type, chain ids per network, and what transaction types it takes."""

    name: str
    symbol: str
    coin_type: int
    mainnet_ids: tuple[int, ...]
    testnet_ids: tuple[int, ...]
    #: False where the chain does not take type-2 transactions (we refuse to sign them there).
    eip1559: bool = True
    #: Address prefix shown to users (``0x``; XDC ``xdc``).
    prefix: str = "0x"
    #: Fee ceiling: a max fee per gas (or gas price) above this is "absurd" and refused.
    max_gas_price: int = 10_000 * GWEI
    #: Every chain here has an 18-decimal native coin; its base unit is called wei.
    decimals: int = 18
    base_unit: str = "wei"
    family: Family = field(default=Family.EVM, init=False)

    def __repr__(self) -> str:
        return f"<EvmChain {self.name}>"

    # --- keys and addresses -----------------------------------------------------------------------
    def path(self, testnet: bool) -> str:
        return "m/44'/1'/0'/0" if testnet else f"m/44'/{self.coin_type}'/0'/0"

    def chain_ids(self, testnet: bool) -> tuple[int, ...]:
        return self.testnet_ids if testnet else self.mainnet_ids

    def format_address(self, addr20: bytes) -> str:
        return self.prefix + checksum(addr20)

    def address_from_pubkey(self, sec: bytes) -> str:
        return self.format_address(keccak256(_hd.uncompress(sec)[1:])[-20:])

    def xpub_from_mnemonic(self, mnemonic: str, *, testnet: bool) -> str:
        return _hd.xpub_at(mnemonic, self.path(testnet), _hd.XPUB)

    def address_from_xpub(self, xpub: str, index: int, *, testnet: bool) -> str:
        node, _ = _hd.decode_xpub(xpub, {_hd.XPUB: None})
        return self.address_from_pubkey(_hd.child_pubkey(node, index))

    def addresses_from_xpub(self, xpub: str, indices: Iterable[int], *, testnet: bool) -> list[str]:
        """Many addresses of one wallet, parsing the xpub once (batch helper)."""
        node, _ = _hd.decode_xpub(xpub, {_hd.XPUB: None})
        return [self.address_from_pubkey(_hd.child_pubkey(node, i)) for i in indices]

    def private_key_from_mnemonic(self, mnemonic: str, index: int, *, testnet: bool) -> bytearray:
        if not 0 <= index < _hd.HARDENED:
            raise UsageError(f"address index must be 0..{_hd.HARDENED - 1}, got {index}")
        return _hd.private_key_at(mnemonic, f"{self.path(testnet)}/{index}")

    def address_from_private_key(self, key: bytes, *, testnet: bool) -> str:
        return self.address_from_pubkey(_hd.pubkey_from_private(key))

    def parse_private_key(self, text: str, *, testnet: bool) -> bytearray:
        t = "".join(text.split())
        if t[:2] in ("0x", "0X"):
            t = t[2:]
        if len(t) != 64 or any(c not in "0123456789abcdefABCDEF" for c in t):
            raise UsageError(f"not a {self.name} private key (expected 64 hex digits, with or without 0x)")
        key = bytearray(bytes.fromhex(t))
        _hd.pubkey_from_private(key)
        return key

    def private_key_hex(self, key: bytes) -> str:
        """``0x`` + hex, as Tatum stores EVM private keys."""
        return "0x" + bytes(key).hex()

    def address_bytes(self, address: str) -> bytes:
        """20 bytes of an address in any case, with ``0x`` (or ``xdc`` on XDC).

        A mixed-case address must carry a valid EIP-55 checksum: mixed case that does not check out
        is a typo, not a style.

        :raises UsageError: not an address.
        """
        a = address.strip()
        low = a[:3].lower()
        if a[:2] in ("0x", "0X"):
            body = a[2:]
        elif self.prefix == "xdc" and low == "xdc":
            body = a[3:]
        else:
            raise UsageError(f"not a {self.name} address (needs {self.prefix} and 40 hex digits): {address!r}")
        if not _HEX40.match(body):
            raise UsageError(f"not a {self.name} address (needs 40 hex digits): {address!r}")
        raw = bytes.fromhex(body)
        if body != body.lower() and body != body.upper() and body != checksum(raw):
            raise UsageError(f"address has a bad EIP-55 checksum (typo?): {address!r}")
        return raw

    def normalize_address(self, address: str, *, testnet: bool) -> str:
        return self.format_address(self.address_bytes(address))

    # --- fees -------------------------------------------------------------------------------------
    def estimate_fee(self, *, gas: int, max_fee_per_gas: int) -> FeeEstimate:
        """Most the transaction can pay: gas limit x (max fee per gas | gas price). No network access."""
        if gas <= 0 or max_fee_per_gas < 0:
            raise UsageError("gas must be positive and the fee per gas not negative")
        return FeeEstimate(fee=gas * max_fee_per_gas, size=gas, rate=max_fee_per_gas)

    # --- decoding ---------------------------------------------------------------------------------
    def decode(self, tx: bytes | str | Mapping[str, Any], *, testnet: bool, owned: Owned | None = None) -> TxSummary:
        return self._decode(unsigned_bytes(tx), testnet, owned)[0]

    def _decode(self, raw: bytes, testnet: bool, owned: Owned | None) -> tuple[TxSummary, list[Any]]:
        import rlp

        if not raw:
            raise ChainError("empty transaction")
        typed = raw[0] == 0x02
        if raw[0] < 0x7F and not typed:
            raise ChainError(f"unsupported transaction type {raw[0]:#04x} (only legacy EIP-155 and EIP-1559)")
        try:
            items = rlp.decode(raw[1:] if typed else raw, strict=True)
        except Exception:
            raise ChainError("not a valid RLP-encoded transaction") from None
        if not isinstance(items, list) or any(isinstance(x, list) for x in (items[:8] if typed else items)):
            raise ChainError("not a valid unsigned transaction (wrong structure)")
        warnings: list[str] = []
        if typed:
            if len(items) == 12:
                raise ChainError("transaction is already signed")
            if len(items) != 9:
                raise ChainError(f"not an unsigned EIP-1559 transaction ({len(items)} fields, expected 9)")
            chain_id, nonce, prio, max_fee, gas = (
                _uint(items[i], n)
                for i, n in enumerate(("chainId", "nonce", "maxPriorityFeePerGas", "maxFeePerGas", "gas"))
            )
            to, value, data, access = items[5], _uint(items[6], "value"), items[7], items[8]
            if prio > max_fee:
                raise ChainError("maxPriorityFeePerGas exceeds maxFeePerGas: invalid transaction")
            if not isinstance(access, list):
                raise ChainError("accessList must be a list")
            _check_access_list(access)
            if access:
                warnings.append(f"access list with {len(access)} entries")
            fee_rate = max_fee
        else:
            if len(items) == 6:
                raise ChainError("legacy transaction without a chain id (pre-EIP-155, replayable): refused")
            if len(items) != 9:
                raise ChainError(f"not an unsigned legacy transaction ({len(items)} fields, expected 9)")
            if items[7] != b"" or items[8] != b"":
                raise ChainError("transaction is already signed")
            nonce, fee_rate, gas = (_uint(items[i], n) for i, n in enumerate(("nonce", "gasPrice", "gas")))
            to, value, data, chain_id = items[3], _uint(items[4], "value"), items[5], _uint(items[6], "chainId")
        if not isinstance(to, bytes) or len(to) not in (0, 20) or not isinstance(data, bytes):
            raise ChainError("bad 'to' or 'data' field")
        if chain_id not in self.chain_ids(testnet):
            net = "testnet" if testnet else "mainnet"
            raise ChainError(
                f"unknown chain id {chain_id} for {self.name} {net} "
                f"(expected one of {', '.join(map(str, self.chain_ids(testnet)))})"
            )
        if typed and not self.eip1559:
            raise ChainError(f"{self.name} does not take EIP-1559 transactions here; use a legacy one")
        if gas > MAX_GAS:
            raise ChainError(f"gas limit {gas} exceeds {MAX_GAS}")
        if gas < 21_000:
            raise ChainError(f"gas limit {gas} is below the 21000 intrinsic minimum")
        if fee_rate > self.max_gas_price:
            raise ChainError(
                f"absurd fee: {fee_rate / GWEI:.1f} gwei per gas exceeds the {self.max_gas_price / GWEI:.0f} gwei limit"
            )
        kind, token = TxKind.TRANSFER, None
        asset = self.symbol
        to_addr = self.format_address(to) if to else None
        if not to:
            kind = TxKind.CONTRACT_CREATION
        elif data:
            token = self._decode_erc20(to, data, chain_id)
            if token is None:
                kind = TxKind.CONTRACT_CALL
                warnings.append("unknown calldata: the contract call cannot be inspected")
            else:
                kind = {
                    "transfer": TxKind.TOKEN_TRANSFER,
                    "approve": TxKind.TOKEN_APPROVE,
                    "transferFrom": TxKind.TOKEN_TRANSFER_FROM,
                }[token.method]
                asset = token.token
                if value:
                    warnings.append("token call also sends native value")
        mine = set()
        if owned is not None:
            for a in owned.addresses:
                try:
                    mine.add(self.address_bytes(a))
                except UsageError:
                    raise ChainError(f"owned address {a!r} is not a {self.name} address") from None
        outputs = (TxOutput(address=to_addr, amount=value, is_change=bool(to) and to in mine),)
        summary = TxSummary(
            chain=self.name,
            network="testnet" if testnet else "mainnet",
            kind=kind,
            inputs=(),
            outputs=outputs,
            fee=gas * fee_rate,
            asset=asset,
            nonce=nonce,
            chain_id=chain_id,
            token=token,
            size=gas,
            tx_type="eip1559" if typed else "legacy",
            data="0x" + data.hex() if kind in (TxKind.CONTRACT_CALL, TxKind.CONTRACT_CREATION) else None,
            warnings=tuple(warnings),
            symbol=self.symbol,
            decimals=self.decimals,
            base_unit=self.base_unit,
        )
        if summary.high_fee:
            summary = replace(summary, warnings=(*warnings, high_fee_warning(summary)))
        return summary, items

    def _decode_erc20(self, token: bytes, data: bytes, chain_id: int) -> TokenCall | None:
        """ERC-20 transfer/approve/transferFrom with canonical ABI encoding, else None (opaque call).

        Symbol and decimals come from the bundled list of known tokens, never from the contract.
        """
        sel, args = data[:4], data[4:]
        nargs = {SEL_TRANSFER: 2, SEL_APPROVE: 2, SEL_TRANSFER_FROM: 3}.get(sel)
        if nargs is None or len(args) != 32 * nargs:
            return None
        words = [args[i * 32 : (i + 1) * 32] for i in range(nargs)]
        addrs = words[:-1]
        if any(w[:12] != bytes(12) for w in addrs):
            return None
        amount = int.from_bytes(words[-1], "big")
        tok = self.format_address(token)
        info = known_token(chain_id, token.hex())
        label: dict[str, Any] = {} if info is None else {"symbol": info.symbol, "decimals": info.decimals}
        if sel == SEL_TRANSFER:
            return TokenCall("transfer", tok, self.format_address(addrs[0][12:]), amount, **label)
        if sel == SEL_APPROVE:
            return TokenCall("approve", tok, self.format_address(addrs[0][12:]), amount, **label)
        return TokenCall(
            "transferFrom",
            tok,
            self.format_address(addrs[1][12:]),
            amount,
            sender=self.format_address(addrs[0][12:]),
            **label,
        )

    # --- signing ----------------------------------------------------------------------------------
    def sign(
        self, tx: bytes | str | Mapping[str, Any], keys: Sequence[bytes], *, testnet: bool, owned: Owned | None = None
    ) -> SignedTx:
        """Sign the exact decoded fields with coincurve (libsecp256k1) as eth-account does, minus its dict round trip.

        The signing hash is keccak256 of the re-encoded unsigned fields (EIP-1559: ``0x02 || rlp(9
        fields)``; legacy: EIP-155's ``rlp(6 fields, chainId, 0, 0)``), the signature is RFC 6979
        and low-s, and the result must decode to the same fields and recover to the key's address.
        tests/chains/test_evm.py checks the bytes are identical to eth-account's.
        """
        import rlp
        from coincurve import PrivateKey, PublicKey

        if len(keys) != 1:
            raise ChainError("an EVM transaction is signed by exactly one key")
        key = keys[0]
        if len(key) != 32:
            raise ChainError("signing keys must be 32 bytes")
        raw = unsigned_bytes(tx)
        summary, items = self._decode(raw, testnet, owned)
        typed = summary.tx_type == "eip1559"
        chain_id = summary.chain_id or 0
        if not typed and chain_id <= 0:
            raise ChainError("a legacy transaction without an EIP-155 chain id would be valid on every chain")
        fields = list(items[:9] if typed else items[:6])
        unsigned = b"\x02" + rlp.encode(fields) if typed else rlp.encode([*fields, chain_id, 0, 0])
        digest = keccak256(unsigned)
        try:
            signer = PrivateKey(bytes(key))
        except Exception:
            raise ChainError("not a valid secp256k1 private key") from None
        signature = signer.sign_recoverable(digest, hasher=None)
        r, s, recid = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
        v = recid if typed else recid + 35 + 2 * chain_id
        body = rlp.encode([*fields, v, r, s])
        out = b"\x02" + body if typed else body
        sender_pub = signer.public_key.format(compressed=False)[1:]
        sender = self.format_address(keccak256(sender_pub)[-20:])
        # What was signed must be exactly what was decoded, and must recover to the signing key.
        back = rlp.decode(body)
        recovered = PublicKey.from_signature_and_message(signature, digest, hasher=None)
        if back[: len(fields)] != fields or recovered.format(compressed=False)[1:] != sender_pub:
            raise ChainError("internal error: signed transaction differs from the decoded one")
        return SignedTx(chain=self.name, raw=out, txid="0x" + keccak256(out).hex(), summary=summary, sender=sender)

    # --- building ---------------------------------------------------------------------------------
    def build_transfer(
        self,
        *,
        to: str,
        value: int,
        nonce: int,
        chain_id: int,
        gas: int = 21_000,
        max_fee_per_gas: int | None = None,
        max_priority_fee_per_gas: int | None = None,
        gas_price: int | None = None,
        data: bytes = b"",
    ) -> str:
        """Unsigned transaction (hex) from caller-supplied chain state. EIP-1559 if max fees are given."""
        fields: dict[str, Any] = {
            "to": "0x" + self.address_bytes(to).hex() if to else "",
            "value": value,
            "nonce": nonce,
            "chainId": chain_id,
            "gas": gas,
            "data": data,
        }
        if gas_price is not None:
            fields["gasPrice"] = gas_price
        else:
            if max_fee_per_gas is None:
                raise UsageError("give gas_price (legacy) or max_fee_per_gas (EIP-1559)")
            fields["maxFeePerGas"] = max_fee_per_gas
            fields["maxPriorityFeePerGas"] = (
                max_fee_per_gas if max_priority_fee_per_gas is None else max_priority_fee_per_gas
            )
        return "0x" + unsigned_bytes(fields).hex()

    def build_erc20_transfer(
        self, *, token: str, to: str, amount: int, nonce: int, chain_id: int, gas: int = 100_000, **fees: int
    ) -> str:
        """Unsigned ERC-20 ``transfer(to, amount)`` call on ``token``."""
        return self.build_transfer(
            to=token,
            value=0,
            nonce=nonce,
            chain_id=chain_id,
            gas=gas,
            data=erc20_transfer_data(self.address_bytes(to), amount),
            **fees,
        )

    def build_sweep(
        self,
        *,
        balance: int,
        to: str,
        nonce: int,
        chain_id: int,
        gas: int = 21_000,
        max_fee_per_gas: int | None = None,
        gas_price: int | None = None,
    ) -> str:
        """Unsigned transfer of a whole native balance to ``to`` (a cold wallet), less the worst-case fee.

        With EIP-1559 the priority fee equals the max fee so the cost is known exactly (no refund of the
        unspent headroom would be left behind as dust); legacy uses ``gas_price``.

        :raises UsageError: the balance does not cover the fee.
        """
        rate = gas_price if gas_price is not None else max_fee_per_gas
        if rate is None:
            raise UsageError("give gas_price (legacy) or max_fee_per_gas (EIP-1559)")
        value = balance - gas * rate
        if value <= 0:
            raise UsageError(f"balance {balance} does not cover the fee {gas * rate}")
        return self.build_transfer(
            to=to,
            value=value,
            nonce=nonce,
            chain_id=chain_id,
            gas=gas,
            max_fee_per_gas=max_fee_per_gas,
            max_priority_fee_per_gas=max_fee_per_gas,
            gas_price=gas_price,
        )

    def build_token_sweep(
        self, *, token: str, token_balance: int, to: str, nonce: int, chain_id: int, gas: int = 100_000, **fees: int
    ) -> str:
        """Unsigned ERC-20 transfer of a wallet's whole token balance to ``to`` (the fee is paid in coin)."""
        if token_balance <= 0:
            raise UsageError("nothing to sweep: token balance is zero")
        return self.build_erc20_transfer(
            token=token, to=to, amount=token_balance, nonce=nonce, chain_id=chain_id, gas=gas, **fees
        )


def erc20_transfer_data(to20: bytes, amount: int) -> bytes:
    """ABI calldata of ``transfer(address,uint256)``."""
    if not 0 <= amount <= MAX_UINT256 or len(to20) != 20:
        raise UsageError("bad ERC-20 transfer arguments")
    return SEL_TRANSFER + bytes(12) + to20 + amount.to_bytes(32, "big")


def erc20_approve_data(spender20: bytes, amount: int) -> bytes:
    if not 0 <= amount <= MAX_UINT256 or len(spender20) != 20:
        raise UsageError("bad ERC-20 approve arguments")
    return SEL_APPROVE + bytes(12) + spender20 + amount.to_bytes(32, "big")


def _uint(b: Any, name: str) -> int:
    """An RLP unsigned integer: bytes, no leading zero, at most 32 bytes."""
    if not isinstance(b, bytes):
        raise ChainError(f"field {name} must be a byte string")
    if len(b) > 32:
        raise ChainError(f"field {name} is longer than 256 bits")
    if b[:1] == b"\x00":
        raise ChainError(f"field {name} has a leading zero (non-canonical RLP)")
    return int.from_bytes(b, "big")


def _check_access_list(access: list[Any]) -> None:
    for entry in access:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], bytes)
            or len(entry[0]) != 20
            or not isinstance(entry[1], list)
            or any(not isinstance(k, bytes) or len(k) != 32 for k in entry[1])
        ):
            raise ChainError("malformed access list")


def _int_field(v: Any, name: str) -> int:
    if isinstance(v, bool):
        raise UsageError(f"field {name} must be an integer")
    if isinstance(v, int):
        out = v
    elif isinstance(v, str):
        try:
            out = int(v, 16) if v.lower().startswith("0x") else int(v)
        except ValueError:
            raise UsageError(f"field {name} is not an integer: {v!r}") from None
    else:
        raise UsageError(f"field {name} must be an integer")
    if not 0 <= out <= MAX_UINT256:
        raise UsageError(f"field {name} is out of range")
    return out


def _bytes_field(v: Any, name: str) -> bytes:
    if isinstance(v, bytes | bytearray):
        return bytes(v)
    if isinstance(v, str):
        h = v[2:] if v[:2] in ("0x", "0X") else v
        try:
            return bytes.fromhex(h)
        except ValueError:
            raise UsageError(f"field {name} is not hex") from None
    raise UsageError(f"field {name} must be hex or bytes")


#: The fields of a web3 TransactionConfig that an unsigned transaction given as JSON may carry.
TRANSACTION_FIELDS = frozenset(
    {
        "chainId",
        "nonce",
        "to",
        "value",
        "data",
        "input",
        "gas",
        "gasLimit",
        "gasPrice",
        "maxFeePerGas",
        "maxPriorityFeePerGas",
        "type",
        "accessList",
        "from",
    }
)


def unsigned_bytes(tx: bytes | str | Mapping[str, Any]) -> bytes:
    """The signing payload of an unsigned transaction given as bytes, hex, a JSON object or a dict.

    :raises ChainError: not decodable. :raises UsageError: a dict with bad fields.
    """
    import rlp

    if isinstance(tx, bytes | bytearray):
        raw = bytes(tx)
        if raw[:1] in (b"{",):
            tx = raw.decode("utf-8", errors="replace")
        elif raw[:2] in (b"0x", b"0X"):
            tx = raw.decode("ascii", errors="replace")
        else:
            return raw
    if isinstance(tx, str):
        text = tx.strip()
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError:
                raise ChainError("transaction JSON does not parse") from None
            if not isinstance(obj, dict):
                raise ChainError("transaction JSON must be an object")
            return unsigned_bytes(obj)
        h = text[2:] if text[:2] in ("0x", "0X") else text
        try:
            return bytes.fromhex(h)
        except ValueError:
            raise ChainError("transaction is not hex") from None
    if not isinstance(tx, Mapping):
        raise ChainError("transaction must be bytes, hex or a JSON object")
    extra = set(tx) - TRANSACTION_FIELDS
    if extra:
        raise UsageError(f"unknown transaction fields: {', '.join(sorted(extra))}")
    for need in ("chainId", "nonce"):
        if need not in tx:
            raise UsageError(f"transaction field {need} is required")
    gas = tx.get("gas", tx.get("gasLimit"))
    if gas is None:
        raise UsageError("transaction field gas is required")
    to = _bytes_field(tx.get("to") or "", "to")
    if to and len(to) != 20:
        raise UsageError("field to must be 20 bytes")
    data = _bytes_field(tx.get("data", tx.get("input", "")) or "", "data")
    value = _int_field(tx.get("value", 0), "value")
    chain_id, nonce, gas_i = (_int_field(tx[k] if k != "gas" else gas, k) for k in ("chainId", "nonce", "gas"))
    typ = tx.get("type")
    typ_i = None if typ is None else _int_field(typ, "type")
    if "gasPrice" in tx and typ_i not in (None, 0):
        raise UsageError("gasPrice goes with a legacy (type 0) transaction")
    if "gasPrice" in tx:
        if "maxFeePerGas" in tx or "maxPriorityFeePerGas" in tx:
            raise UsageError("give either gasPrice or the EIP-1559 max fees, not both")
        return bytes(
            rlp.encode([nonce, _int_field(tx["gasPrice"], "gasPrice"), gas_i, to, value, data, chain_id, 0, 0])
        )
    if typ_i not in (None, 2):
        raise UsageError(f"transaction type {typ_i} is not supported (0 legacy or 2 EIP-1559)")
    if "maxFeePerGas" not in tx:
        raise UsageError("give gasPrice (legacy) or maxFeePerGas (EIP-1559)")
    access = []
    for entry in tx.get("accessList") or []:
        access.append(
            [
                _bytes_field(entry["address"], "accessList"),
                [_bytes_field(k, "accessList") for k in entry.get("storageKeys", [])],
            ]
        )
    prio = _int_field(tx.get("maxPriorityFeePerGas", tx["maxFeePerGas"]), "maxPriorityFeePerGas")
    return b"\x02" + bytes(
        rlp.encode(
            [chain_id, nonce, prio, _int_field(tx["maxFeePerGas"], "maxFeePerGas"), gas_i, to, value, data, access]
        )
    )


# Chain ids: mainnet first, then the testnets Tatum has served (current first).
ETH = EvmChain("ETH", "ETH", 60, (1,), (11155111, 17000, 560048))
BSC = EvmChain("BSC", "BNB", 60, (56,), (97,))
MATIC = EvmChain("MATIC", "MATIC", 966, (137,), (80002, 80001))
CELO = EvmChain("CELO", "CELO", 52752, (42220,), (44787, 11142220))
KLAY = EvmChain("KLAY", "KLAY", 8217, (8217,), (1001,))
ONE = EvmChain("ONE", "ONE", 1023, (1666600000,), (1666700000,), eip1559=False)
XDC = EvmChain("XDC", "XDC", 550, (50,), (51,), eip1559=False, prefix="xdc")
KCS = EvmChain("KCS", "KCS", 60, (321,), (322,), eip1559=False)
