"""Bitcoin-family chains (BTC, LTC, DOGE) over embit; BCH builds on this in :mod:`agent.chains.bch`.

Input format: a PSBT (BIP-174 v0, or BIP-370 v2) as raw bytes, base64 or hex. Every input must
carry the UTXO it spends so the amount is known before anything is signed: ``witness_utxo`` for
segwit inputs (BIP-143 commits to the amount, so a lie only produces an invalid signature) and the
full previous transaction (``non_witness_utxo``, txid checked) for legacy P2PKH inputs, whose
signatures do not commit to amounts. Single-key scripts only: P2WPKH, P2SH-P2WPKH and P2PKH.

Tatum's wallet model: the stored xpub sits at ``m/44'/coin'/0'/0`` (testnet ``m/44'/1'/0'/0``) and
address *i* is ``xpub/i``. BTC addresses from that BIP-44 path are bech32 P2WPKH (Tatum SDK >= 1.34).
New BTC/LTC wallets may instead use BIP-84 (``zpub``/``vpub`` at ``m/84'/coin'/0'``, address
``/0/i``); the version bytes of the stored key say which scheme a wallet uses.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agent.chains import _hd
from agent.chains.base import (
    Chain,
    Family,
    FeeEstimate,
    Owned,
    SignedTx,
    TxInput,
    TxKind,
    TxOutput,
    TxSummary,
    high_fee_warning,
)
from agent.errors import ChainError, UsageError

if TYPE_CHECKING:
    from embit.psbt import PSBT, InputScope
    from embit.script import Script

SIGHASH_ALL = 0x01
#: Inputs spending outputs below this many satoshi are normal; outputs below it will not relay.
DUST = 546
#: Largest PSBT we parse (a 100 kvB transaction with full previous transactions is far smaller).
MAX_PSBT_BYTES = 4_000_000


class AddressKind(StrEnum):
    """Single-key script types we derive, decode and sign."""

    P2WPKH = "p2wpkh"
    P2SH_P2WPKH = "p2sh-p2wpkh"
    P2PKH = "p2pkh"


class Scheme(StrEnum):
    """How a mnemonic wallet's extended key is laid out."""

    #: Tatum: xpub at ``m/44'/coin'/0'/0``, address i = xpub/i (BTC: bech32 P2WPKH).
    TATUM = "tatum"
    #: BIP-84: zpub/vpub at ``m/84'/coin'/0'``, address i = zpub/0/i, P2WPKH. Segwit chains only.
    BIP84 = "bip84"


@dataclass(frozen=True)
class UtxoNet:
    """One network of a Bitcoin-family chain: every prefix and version byte it uses."""

    name: str
    wif: int
    p2pkh: int
    p2sh: int
    #: bech32 human-readable part, or None where the chain has no segwit (DOGE).
    bech32: str | None
    #: BIP-32 version bytes of Tatum's xpub (public) and the matching private version.
    xpub: bytes
    xprv: bytes
    #: Tatum's path of the stored xpub.
    tatum_path: str
    #: BIP-84 versions (zpub/vpub) and the account path, segwit chains only.
    zpub: bytes | None = None
    bip84_path: str | None = None

    def embit(self) -> dict[str, Any]:
        """A network dict in embit's format (only the keys embit reads for scripts and addresses)."""
        return {
            "name": self.name,
            "wif": bytes([self.wif]),
            "p2pkh": bytes([self.p2pkh]),
            "p2sh": bytes([self.p2sh]),
            "bech32": self.bech32 or "",
            "xpub": _hd.XPUB,
            "xprv": _hd.XPRV,
        }


@dataclass(frozen=True)
class Utxo:
    """A coin the caller says the wallet owns, for building sweeps and payments.

    ``prev_tx`` (the full previous transaction) is required for P2PKH coins and recommended for all.
    """

    txid: str
    vout: int
    amount: int
    address: str
    prev_tx: bytes | None = None


class _StrictStream(io.BytesIO):
    """A stream whose short reads raise, so a truncated PSBT fails fast instead of looping on ``b""``."""

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        if n is not None and n >= 0 and len(data) != n:
            raise ChainError("truncated data")
        return data


def _read_compact(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise ChainError("not a valid PSBT: truncated")
    first = buf[pos]
    if first < 0xFD:
        return first, pos + 1
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    if pos + 1 + size > len(buf):
        raise ChainError("not a valid PSBT: truncated")
    return int.from_bytes(buf[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def _precheck_psbt(raw: bytes) -> None:
    """Reject global maps that would make embit allocate absurd input/output lists (PSBT v2 counts)."""
    pos = 5
    seen: set[bytes] = set()
    while True:
        klen, pos = _read_compact(raw, pos)
        if klen == 0:
            if b"\x00" not in seen and b"\xfb" not in seen:
                raise ChainError("not a valid PSBT: no unsigned transaction (v0) and no version field (v2)")
            return
        key = raw[pos : pos + klen]
        pos += klen
        vlen, pos = _read_compact(raw, pos)
        value = raw[pos : pos + vlen]
        pos += vlen
        if pos > len(raw):
            raise ChainError("not a valid PSBT: truncated")
        seen.add(bytes(key))
        if key == b"\x00":
            _check_unsigned_tx(value)
        if key in (b"\x04", b"\x05"):
            count, _ = _read_compact(value, 0)
            if count > len(raw):
                raise ChainError("not a valid PSBT: input/output count exceeds the data")


def _check_unsigned_tx(value: bytes) -> None:
    """BIP-174: the global unsigned transaction must have empty scriptSigs and witnesses."""
    from embit.transaction import Transaction

    try:
        tx = Transaction.read_from(_StrictStream(value))
    except Exception:
        raise ChainError("not a valid PSBT: bad unsigned transaction") from None
    if any(inp.script_sig.data or inp.witness.items for inp in tx.vin):
        raise ChainError("not a valid PSBT: the unsigned transaction has a filled scriptSig or witness")


def _as_bytes(tx: bytes | str) -> bytes:
    """Raw PSBT bytes from raw bytes, base64 or hex (str or ASCII bytes)."""
    import base64
    import binascii

    if isinstance(tx, bytes | bytearray) and bytes(tx[:5]) == b"psbt\xff":
        return bytes(tx)
    try:
        text = tx.decode("ascii") if isinstance(tx, bytes | bytearray) else tx
    except UnicodeDecodeError:
        raise ChainError("not a PSBT (no magic bytes, not base64 or hex)") from None
    text = "".join(text.split())
    if text.lower().startswith("70736274ff"):
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ChainError("not a PSBT (bad hex)") from None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ChainError("not a PSBT (no magic bytes, not base64 or hex)") from None
    if raw[:5] != b"psbt\xff":
        raise ChainError("not a PSBT (bad magic bytes)")
    return raw


class UtxoChain(Chain):
    """A Bitcoin-like chain parameterised by its networks. One instance per chain."""

    family = Family.UTXO
    #: Every chain here counts in units of 10^-8 coin, called satoshi (sat) for all of them.
    decimals = 8
    base_unit = "sat"
    #: Grind RFC 6979 nonces for a low R (71-byte signatures), as Bitcoin Core does since 0.17.
    grind_low_r = True

    def __init__(
        self,
        name: str,
        *,
        nets: dict[str, UtxoNet],
        default_kind: AddressKind,
        segwit: bool,
        max_fee_rate: int,
        min_fee_rate: int = 0,
    ) -> None:
        self.name = name
        self.symbol = name
        self.nets = nets
        self.default_kind = default_kind
        self.segwit = segwit
        #: sat/vbyte above which a fee is "absurd" and refused (Bitcoin Core's -maxfeerate default for BTC).
        self.max_fee_rate = max_fee_rate
        self.min_fee_rate = min_fee_rate

    def __repr__(self) -> str:
        return f"<UtxoChain {self.name}>"

    # --- networks ---------------------------------------------------------------------------------
    def net(self, testnet: bool, regtest: bool = False) -> UtxoNet:
        if regtest:
            if "regtest" not in self.nets:
                raise UsageError(f"{self.name} has no regtest network here")
            return self.nets["regtest"]
        return self.nets["testnet" if testnet else "mainnet"]

    def _kinds(self) -> tuple[AddressKind, ...]:
        if self.segwit:
            return (AddressKind.P2WPKH, AddressKind.P2SH_P2WPKH, AddressKind.P2PKH)
        return (AddressKind.P2PKH,)

    def _check_kind(self, kind: AddressKind | str | None) -> AddressKind:
        k = self.default_kind if kind is None else AddressKind(kind)
        if k not in self._kinds():
            raise UsageError(f"{self.name} has no {k.value} addresses")
        return k

    # --- keys and addresses -----------------------------------------------------------------------
    def _path(self, net: UtxoNet, scheme: Scheme | str) -> tuple[str, bytes]:
        s = Scheme(scheme)
        if s is Scheme.BIP84:
            if net.zpub is None or net.bip84_path is None:
                raise UsageError(f"{self.name} has no BIP-84 (segwit) wallets")
            return net.bip84_path, net.zpub
        return net.tatum_path, net.xpub

    def xpub_from_mnemonic(
        self, mnemonic: str, *, testnet: bool, regtest: bool = False, scheme: Scheme | str = Scheme.TATUM
    ) -> str:
        net = self.net(testnet, regtest)
        path, version = self._path(net, scheme)
        return _hd.xpub_at(mnemonic, path, version)

    def private_key_from_mnemonic(
        self, mnemonic: str, index: int, *, testnet: bool, regtest: bool = False, scheme: Scheme | str = Scheme.TATUM
    ) -> bytearray:
        if not 0 <= index < _hd.HARDENED:
            raise UsageError(f"address index must be 0..{_hd.HARDENED - 1}, got {index}")
        net = self.net(testnet, regtest)
        path, _ = self._path(net, scheme)
        suffix = f"/0/{index}" if Scheme(scheme) is Scheme.BIP84 else f"/{index}"
        return _hd.private_key_at(mnemonic, path + suffix)

    def _xpub_versions(self, net: UtxoNet) -> dict[bytes, Scheme]:
        allowed = {net.xpub: Scheme.TATUM}
        if net.zpub is not None:
            allowed[net.zpub] = Scheme.BIP84
        return allowed

    def address_from_xpub(
        self, xpub: str, index: int, *, testnet: bool, regtest: bool = False, kind: AddressKind | str | None = None
    ) -> str:
        net = self.net(testnet, regtest)
        node, scheme = _hd.decode_xpub(xpub, self._xpub_versions(net))
        if scheme is Scheme.BIP84:
            return self.address_from_pubkey(_hd.child_pubkey(node, 0, index), net, AddressKind.P2WPKH)
        return self.address_from_pubkey(_hd.child_pubkey(node, index), net, self._check_kind(kind))

    def addresses_from_xpub(
        self,
        xpub: str,
        indices: Iterable[int],
        *,
        testnet: bool,
        regtest: bool = False,
        kind: AddressKind | str | None = None,
    ) -> list[str]:
        """Many addresses of one wallet, parsing the xpub once (batch helper)."""
        net = self.net(testnet, regtest)
        node, scheme = _hd.decode_xpub(xpub, self._xpub_versions(net))
        if scheme is Scheme.BIP84:
            branch = node.derive([0])
            return [self.address_from_pubkey(_hd.child_pubkey(branch, i), net, AddressKind.P2WPKH) for i in indices]
        k = self._check_kind(kind)
        return [self.address_from_pubkey(_hd.child_pubkey(node, i), net, k) for i in indices]

    def address_from_private_key(
        self, key: bytes, *, testnet: bool, regtest: bool = False, kind: AddressKind | str | None = None
    ) -> str:
        net = self.net(testnet, regtest)
        return self.address_from_pubkey(_hd.pubkey_from_private(key), net, self._check_kind(kind))

    def script_for_pubkey(self, pub: bytes, kind: AddressKind) -> Script:
        from embit import script
        from embit.ec import PublicKey

        pk = PublicKey.parse(pub)
        if kind is AddressKind.P2WPKH:
            return script.p2wpkh(pk)
        if kind is AddressKind.P2SH_P2WPKH:
            return script.p2sh(script.p2wpkh(pk))
        return script.p2pkh(pk)

    def address_from_pubkey(self, pub: bytes, net: UtxoNet, kind: AddressKind) -> str:
        return self.address_from_script(self.script_for_pubkey(pub, kind).data, net) or ""

    def address_from_script(self, spk: bytes, net: UtxoNet) -> str | None:
        """The address of a scriptPubKey, or None if the script has none on this chain."""
        from embit import base58, bech32

        if len(spk) == 25 and spk[:3] == b"\x76\xa9\x14" and spk[-2:] == b"\x88\xac":
            return str(base58.encode_check(bytes([net.p2pkh]) + spk[3:23]))
        if len(spk) == 23 and spk[:2] == b"\xa9\x14" and spk[-1] == 0x87:
            return str(base58.encode_check(bytes([net.p2sh]) + spk[2:22]))
        if net.bech32 and len(spk) in (22, 34) and spk[0] in (0, *range(0x51, 0x61)) and spk[1] == len(spk) - 2:
            ver = 0 if spk[0] == 0 else spk[0] - 0x50
            # bech32.encode() re-decodes its own output as a self-check, doubling the cost; the
            # encoder below is the same reference code, and the tests round-trip every address.
            encoding = bech32.Encoding.BECH32 if ver == 0 else bech32.Encoding.BECH32M
            return str(bech32.bech32_encode(encoding, net.bech32, [ver, *bech32.convertbits(spk[2:], 8, 5)]))
        return None

    def script_from_address(self, address: str, net: UtxoNet) -> bytes:
        """scriptPubKey for an address of this chain and network.

        :raises UsageError: not an address of this chain and network.
        """
        from embit import base58, bech32

        a = address.strip()
        if net.bech32 and a.lower().startswith(net.bech32 + "1"):
            try:
                ver, prog = bech32.decode(net.bech32, a)
            except Exception:
                ver, prog = None, None
            if ver is None or prog is None or not 0 <= ver <= 16 or not 2 <= len(prog) <= 40:
                raise UsageError(f"not a valid {self.name} {net.name} address: {address!r}")
            if ver == 0 and len(prog) not in (20, 32):
                raise UsageError(f"not a valid {self.name} {net.name} address: {address!r}")
            return bytes([0 if ver == 0 else 0x50 + ver, len(prog)]) + bytes(prog)
        try:
            raw = base58.decode_check(a)
        except Exception:
            raise UsageError(f"not a valid {self.name} {net.name} address: {address!r}") from None
        if len(raw) == 21 and raw[0] == net.p2pkh:
            return b"\x76\xa9\x14" + bytes(raw[1:]) + b"\x88\xac"
        if len(raw) == 21 and raw[0] == net.p2sh:
            return b"\xa9\x14" + bytes(raw[1:]) + b"\x87"
        raise UsageError(f"not a {self.name} {net.name} address (wrong network or type): {address!r}")

    def normalize_address(self, address: str, *, testnet: bool, regtest: bool = False) -> str:
        net = self.net(testnet, regtest)
        return self.address_from_script(self.script_from_address(address, net), net) or address

    def parse_private_key(self, text: str, *, testnet: bool, regtest: bool = False) -> bytearray:
        from embit import base58

        net = self.net(testnet, regtest)
        try:
            raw = bytearray(base58.decode_check("".join(text.split())))
        except Exception:
            raise UsageError(f"not a {self.name} private key in WIF format (bad base58 or checksum)") from None
        try:
            if len(raw) not in (33, 34) or raw[0] != net.wif:
                raise UsageError(f"not a {self.name} {net.name} WIF private key (wrong length or prefix)")
            if len(raw) == 33:
                raise UsageError("uncompressed WIF keys are not supported (Tatum writes compressed keys)")
            if raw[33] != 0x01:
                raise UsageError("not a valid WIF private key (bad compression flag)")
            key = bytearray(raw[1:33])
        finally:
            raw[:] = bytes(len(raw))
        _hd.pubkey_from_private(key)  # range check; raises UsageError without the key
        return key

    def wif_from_private_key(self, key: bytes | bytearray, *, testnet: bool, regtest: bool = False) -> str:
        """Compressed WIF, as Tatum stores UTXO private keys."""
        from embit import base58

        net = self.net(testnet, regtest)
        return str(base58.encode_check(bytes([net.wif]) + bytes(key) + b"\x01"))

    # --- fees -------------------------------------------------------------------------------------
    @staticmethod
    def _input_weight(kind: AddressKind | None) -> tuple[int, int]:
        """(non-witness bytes, witness bytes) of one signed input; 72-byte signature with sighash."""
        if kind is AddressKind.P2WPKH:
            return 41, 1 + 1 + 72 + 1 + 33
        if kind is AddressKind.P2SH_P2WPKH:
            return 41 + 23, 1 + 1 + 72 + 1 + 33
        return 41 + 1 + 72 + 1 + 33, 0

    def vsize(self, input_kinds: Sequence[AddressKind | None], output_scripts: Sequence[bytes]) -> int:
        """Virtual size of the signed transaction (BIP-141 weight / 4, rounded up)."""
        from embit import compact

        base = 4 + 4 + len(compact.to_bytes(len(input_kinds))) + len(compact.to_bytes(len(output_scripts)))
        base += sum(8 + len(compact.to_bytes(len(s))) + len(s) for s in output_scripts)
        witness = 0
        segwit = any(k in (AddressKind.P2WPKH, AddressKind.P2SH_P2WPKH) for k in input_kinds)
        for k in input_kinds:
            nw, w = self._input_weight(k)
            base += nw
            witness += w if w else (1 if segwit else 0)
        weight = base * 4 + (witness + 2 if segwit else 0)
        return math.ceil(weight / 4)

    def estimate_fee(
        self, *, inputs: int | Sequence[AddressKind | str], outputs: int | Sequence[bytes], sat_per_vbyte: int | float
    ) -> FeeEstimate:
        """Fee for a transaction shape at a caller-supplied rate (no network access).

        ``inputs`` is a count (of this chain's default kind) or a list of kinds; ``outputs`` is a count
        (of default-kind outputs) or the list of scriptPubKeys.
        """
        if sat_per_vbyte < 0:
            raise UsageError("fee rate must not be negative")
        kinds = [self.default_kind] * inputs if isinstance(inputs, int) else [self._check_kind(k) for k in inputs]
        default_spk = {AddressKind.P2WPKH: 22, AddressKind.P2SH_P2WPKH: 23, AddressKind.P2PKH: 25}[self.default_kind]
        scripts = [bytes(default_spk)] * outputs if isinstance(outputs, int) else list(outputs)
        size = self.vsize(kinds, scripts)
        return FeeEstimate(fee=math.ceil(size * sat_per_vbyte), size=size, rate=math.ceil(sat_per_vbyte))

    # --- PSBT decode ------------------------------------------------------------------------------
    def parse_psbt(self, tx: bytes | str) -> PSBT:
        """Parse a PSBT strictly; every failure is a ChainError."""
        from embit.psbt import PSBT

        raw = _as_bytes(tx)
        if len(raw) > MAX_PSBT_BYTES:
            raise ChainError(f"PSBT too large ({len(raw)} bytes)")
        _precheck_psbt(raw)
        stream = _StrictStream(raw)
        try:
            psbt = PSBT.read_from(stream)
        except ChainError:
            raise ChainError("not a valid PSBT: truncated") from None
        except Exception as exc:
            raise ChainError(f"not a valid PSBT: {type(exc).__name__}: {exc}"[:300]) from None
        if stream.tell() != len(raw):
            raise ChainError("not a valid PSBT: trailing bytes after the last output map")
        if psbt.version not in (None, 0, 2):
            raise ChainError(f"unsupported PSBT version {psbt.version}")
        if not psbt.inputs or not psbt.outputs:
            raise ChainError("PSBT has no inputs or no outputs")
        seen: dict[tuple[bytes, int], int] = {}
        for i, inp in enumerate(psbt.inputs):
            if inp.txid is None or inp.vout is None:
                raise ChainError(f"PSBT input {i} has no previous outpoint")
            outpoint = (bytes(inp.txid), int(inp.vout))
            if outpoint in seen:
                # Consensus refuses such a transaction; before that, its amount would be counted twice
                # in the fee and in what the approvers see.
                raise ChainError(
                    f"PSBT inputs {seen[outpoint]} and {i} spend the same coin "
                    f"{outpoint[0].hex()}:{outpoint[1]}: invalid transaction"
                )
            seen[outpoint] = i
        for o, out in enumerate(psbt.outputs):
            if out.value is None or out.script_pubkey is None:
                raise ChainError(f"PSBT output {o} has no amount or script")
        return psbt

    def _input_kind(self, inp: InputScope, spk: bytes) -> AddressKind | None:
        if len(spk) == 22 and spk[:2] == b"\x00\x14":
            return AddressKind.P2WPKH
        if len(spk) == 25 and spk[:3] == b"\x76\xa9\x14" and spk[-2:] == b"\x88\xac":
            return AddressKind.P2PKH
        if len(spk) == 23 and spk[:2] == b"\xa9\x14" and spk[-1] == 0x87 and inp.redeem_script is not None:
            rs = inp.redeem_script.data
            if len(rs) == 22 and rs[:2] == b"\x00\x14" and _hd.hash160(rs) == spk[2:22]:
                return AddressKind.P2SH_P2WPKH
        return None

    def _spent_output(self, i: int, inp: InputScope) -> tuple[int, bytes]:
        """(amount, scriptPubKey) of the coin input ``i`` spends, cross-checked; ChainError if unknown."""
        wit = inp.witness_utxo
        full = inp.non_witness_utxo
        if full is not None:
            try:
                inp.verify()
            except Exception:
                raise ChainError(
                    f"input {i}: non_witness_utxo is not the transaction it spends (txid mismatch)"
                ) from None
            if inp.vout >= len(full.vout):
                raise ChainError(f"input {i}: previous transaction has no output {inp.vout}")
            prev = full.vout[inp.vout]
            if wit is not None and (wit.value != prev.value or wit.script_pubkey.data != prev.script_pubkey.data):
                raise ChainError(f"input {i}: witness_utxo contradicts the previous transaction")
            return int(prev.value), bytes(prev.script_pubkey.data)
        if wit is None:
            raise ChainError(
                f"input {i} carries no UTXO data (witness_utxo or non_witness_utxo); its amount is unknown, refusing"
            )
        return int(wit.value), bytes(wit.script_pubkey.data)

    def _check_input_data(self, i: int, inp: InputScope, kind: AddressKind | None) -> None:
        if kind is AddressKind.P2PKH and inp.non_witness_utxo is None:
            raise ChainError(
                f"input {i} is P2PKH but the PSBT lacks its previous transaction (non_witness_utxo); "
                "legacy signatures do not commit to the amount, refusing"
            )

    def _owned_scripts(self, owned: Owned | None, net: UtxoNet) -> set[bytes]:
        if owned is None:
            return set()
        out = set()
        for a in owned.addresses:
            try:
                out.add(self.script_from_address(a, net))
            except UsageError:
                raise ChainError(
                    f"owned address {a!r} is not a {self.name} {net.name} address (wrong network?)"
                ) from None
        return out

    def _is_derived_change(self, out: Any, spk: bytes, owned: Owned | None, net: UtxoNet) -> bool:
        """True if the output's BIP-32 derivation re-derives from our xpub to exactly its script."""
        if owned is None or owned.xpub is None or not out.bip32_derivations:
            return False
        node, scheme = _hd.decode_xpub(owned.xpub, self._xpub_versions(net))
        for pub, der in out.bip32_derivations.items():
            path = list(der.derivation)
            tail = path[-2:] if scheme is Scheme.BIP84 else path[-1:]
            if len(tail) != (2 if scheme is Scheme.BIP84 else 1) or any(i >= _hd.HARDENED for i in tail):
                continue
            if scheme is Scheme.BIP84 and tail[0] not in (0, 1):
                continue
            sec = _hd.child_pubkey(node, *tail)
            if sec != pub.sec():
                continue
            if any(self.script_for_pubkey(sec, k).data == spk for k in self._kinds()):
                return True
        return False

    def _check_global_xpubs(self, psbt: PSBT, net: UtxoNet) -> None:
        """A global xpub of the other network (tpub in a mainnet PSBT, or the reverse) means a wrong-network PSBT."""
        wrong = _MAINNET_VERSIONS if net.name != "mainnet" else _TESTNET_VERSIONS
        for xpub in psbt.xpubs:
            if bytes(xpub.version) in wrong:
                raise ChainError(f"PSBT global xpub belongs to another network than {self.name} {net.name}")

    def decode(self, tx: bytes | str, *, testnet: bool, owned: Owned | None = None, regtest: bool = False) -> TxSummary:
        net = self.net(testnet, regtest)
        return self._decode(self.parse_psbt(tx), net, owned)[0]

    def _decode(self, psbt: PSBT, net: UtxoNet, owned: Owned | None) -> tuple[TxSummary, list[AddressKind]]:
        self._check_global_xpubs(psbt, net)
        mine = self._owned_scripts(owned, net)
        inputs: list[TxInput] = []
        kinds: list[AddressKind] = []
        warnings: list[str] = []
        for i, inp in enumerate(psbt.inputs):
            amount, spk = self._spent_output(i, inp)
            kind = self._input_kind(inp, spk)
            if kind is None or kind not in self._kinds():
                raise ChainError(
                    f"input {i} spends a script we cannot sign ({self._script_name(spk)}); "
                    "only single-key " + ", ".join(k.value for k in self._kinds())
                )
            self._check_input_data(i, inp, kind)
            if inp.sighash_type not in (None, SIGHASH_ALL, self.sighash_flag()):
                raise ChainError(f"input {i} asks for sighash type {inp.sighash_type:#x}; only ALL is signed")
            kinds.append(kind)
            inputs.append(
                TxInput(
                    txid=bytes(inp.txid).hex(),
                    vout=int(inp.vout),
                    amount=amount,
                    address=self.address_from_script(spk, net),
                    script_type=kind.value,
                )
            )
        outputs: list[TxOutput] = []
        for o, out in enumerate(psbt.outputs):
            spk = bytes(out.script_pubkey.data)
            value = int(out.value)
            addr = self.address_from_script(spk, net)
            if addr is None:
                warnings.append(f"output {o} has a non-standard script ({self._script_name(spk)})")
            elif value < DUST:
                warnings.append(f"output {o} is below the dust limit ({value} < {DUST})")
            change = spk in mine or self._is_derived_change(out, spk, owned, net)
            outputs.append(TxOutput(address=addr, amount=value, is_change=change, script=spk.hex()))
        total_in = sum(i.amount for i in inputs)
        total_out = sum(o.amount for o in outputs)
        if total_out > total_in:
            raise ChainError(f"outputs ({total_out}) exceed inputs ({total_in}): invalid transaction")
        if any(o.amount > 21_000_000 * 10**8 * 1000 for o in outputs):
            raise ChainError("an output amount exceeds the coin supply")
        fee = total_in - total_out
        size = self.vsize(kinds, [bytes.fromhex(o.script or "") for o in outputs])
        if fee > self.max_fee_rate * size:
            raise ChainError(
                f"absurd fee: {fee} sat for ~{size} vB ({fee / size:.0f} sat/vB > {self.max_fee_rate} sat/vB limit)"
            )
        if fee < self.min_fee_rate * size:
            warnings.append(f"fee rate {fee / size:.2f} sat/vB is below the relay minimum ({self.min_fee_rate})")
        summary = TxSummary(
            chain=self.name,
            network=net.name,
            kind=TxKind.TRANSFER,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            fee=fee,
            asset=self.symbol,
            txid=self._txid_before_signing(psbt, kinds),
            size=size,
            tx_type="psbt-v2" if psbt.version == 2 else "psbt-v0",
            warnings=tuple(warnings),
            symbol=self.symbol,
            decimals=self.decimals,
            base_unit=self.base_unit,
        )
        if summary.high_fee:
            warnings.append(high_fee_warning(summary))
        elif all(o.is_change for o in outputs):
            # Only with an ordinary fee: a consolidation that burns most of the coins in fees is not
            # "just moving coins around", whatever its outputs say.
            warnings.append("every output is change: this only moves coins within the wallet")
        return replace(summary, warnings=tuple(warnings)), kinds

    @staticmethod
    def _txid_before_signing(psbt: PSBT, kinds: list[AddressKind]) -> str | None:
        """The txid the signed transaction will have, when signing cannot change it.

        Segwit signatures live in the witness, which the txid does not cover, and a P2SH-P2WPKH
        scriptSig is just the known redeem script. A P2PKH scriptSig holds the signature itself, so
        with any P2PKH input the txid is only known after signing (None here).
        """
        from embit.script import Script

        if any(k is AddressKind.P2PKH for k in kinds):
            return None
        tx = psbt.tx
        for inp, vin, kind in zip(psbt.inputs, tx.vin, kinds, strict=True):
            if kind is AddressKind.P2SH_P2WPKH:
                rs = bytes(inp.redeem_script.data)
                vin.script_sig = Script(bytes([len(rs)]) + rs)
        return bytes(tx.txid()).hex()

    @staticmethod
    def _script_name(spk: bytes) -> str:
        from embit.script import Script

        return Script(spk).script_type() or "unknown"

    # --- signing ----------------------------------------------------------------------------------
    def sighash_flag(self) -> int:
        return SIGHASH_ALL

    def _sighash(self, psbt: PSBT, i: int, kind: AddressKind, pub: bytes, amount: int, spk: bytes) -> bytes:
        from embit.ec import PublicKey
        from embit.script import Script, p2pkh

        tx = psbt.tx
        if kind is AddressKind.P2PKH:
            return bytes(tx.sighash_legacy(i, Script(spk), sighash=SIGHASH_ALL))
        code = p2pkh(PublicKey.parse(pub))
        return bytes(tx.sighash_segwit(i, code, amount, sighash=SIGHASH_ALL))

    def sign(
        self,
        tx: bytes | str,
        keys: Sequence[bytes],
        *,
        testnet: bool,
        owned: Owned | None = None,
        regtest: bool = False,
    ) -> SignedTx:
        _hd.require_native_secp256k1()
        net = self.net(testnet, regtest)
        psbt = self.parse_psbt(tx)
        summary, kinds = self._decode(psbt, net, owned)
        return self._sign_decoded(psbt, summary, kinds, keys, net)

    def _sign_decoded(
        self, psbt: PSBT, summary: TxSummary, kinds: list[AddressKind], keys: Sequence[bytes], net: UtxoNet
    ) -> SignedTx:
        from embit.ec import PrivateKey
        from embit.script import Script, Witness
        from embit.transaction import Transaction, TransactionInput

        if not keys:
            raise ChainError("no signing keys given")
        by_hash: dict[bytes, tuple[bytes, bytes]] = {}
        for k in keys:
            if len(k) != 32:
                raise ChainError("signing keys must be 32 bytes")
            pub = _hd.pubkey_from_private(k)
            by_hash[_hd.hash160(pub)] = (bytes(k), pub)
        unsigned = psbt.tx
        vin = []
        for i, (inp, kind, tin) in enumerate(zip(psbt.inputs, kinds, summary.inputs, strict=True)):
            _, spk = self._spent_output(i, inp)
            keyhash = (
                inp.redeem_script.data[2:22]
                if kind is AddressKind.P2SH_P2WPKH
                else (spk[2:22] if kind is AddressKind.P2WPKH else spk[3:23])
            )
            if keyhash not in by_hash:
                raise ChainError(f"input {i} ({tin.address}) is not spendable by any of the given keys; nothing signed")
            secret, pub = by_hash[keyhash]
            h = self._sighash(psbt, i, kind, pub, tin.amount, spk)
            der = PrivateKey(secret).sign(h, grind=self.grind_low_r).serialize() + bytes([self.sighash_flag()])
            script_sig, witness = b"", Witness([])
            if kind is AddressKind.P2WPKH:
                witness = Witness([der, pub])
            elif kind is AddressKind.P2SH_P2WPKH:
                rs = bytes(inp.redeem_script.data)
                script_sig = bytes([len(rs)]) + rs
                witness = Witness([der, pub])
            else:
                script_sig = bytes([len(der)]) + der + bytes([len(pub)]) + pub
            src = unsigned.vin[i]
            vin.append(
                TransactionInput(
                    src.txid, src.vout, script_sig=Script(script_sig), sequence=src.sequence, witness=witness
                )
            )
        signed = Transaction(version=unsigned.version, vin=vin, vout=unsigned.vout, locktime=unsigned.locktime)
        raw = bytes(signed.serialize())
        txid = bytes(signed.txid()).hex()
        if summary.txid is not None and txid != summary.txid:
            raise ChainError("internal error: signed txid differs from the decoded one")
        return SignedTx(chain=self.name, raw=raw, txid=txid, summary=summary)

    # --- building ---------------------------------------------------------------------------------
    def build_psbt(
        self,
        utxos: Sequence[Utxo],
        outputs: Sequence[tuple[str, int]],
        *,
        testnet: bool,
        regtest: bool = False,
        version: int = 0,
        locktime: int = 0,
        rbf: bool = True,
        redeem_scripts: dict[int, bytes] | None = None,
    ) -> str:
        """Build an unsigned PSBT (base64) from caller-supplied coins and (address, amount) outputs.

        P2SH-P2WPKH coins need their redeem script (``redeem_scripts[index_in_utxos]``).
        """
        from embit.psbt import PSBT
        from embit.script import Script
        from embit.transaction import Transaction, TransactionInput, TransactionOutput

        if version not in (0, 2):
            raise UsageError("PSBT version must be 0 or 2")
        if not utxos or not outputs:
            raise UsageError("a transaction needs at least one coin and one output")
        net = self.net(testnet, regtest)
        seq = 0xFFFFFFFD if rbf else 0xFFFFFFFF
        vin = [TransactionInput(bytes.fromhex(u.txid), u.vout, sequence=seq) for u in utxos]
        vout = []
        for addr, amount in outputs:
            if amount <= 0:
                raise UsageError(f"output amount must be positive, got {amount}")
            vout.append(TransactionOutput(amount, Script(self.script_from_address(addr, net))))
        tx = Transaction(version=2, vin=vin, vout=vout, locktime=locktime)
        psbt = PSBT(tx, version=2 if version == 2 else None)
        for i, u in enumerate(utxos):
            spk = self.script_from_address(u.address, net)
            inp = psbt.inputs[i]
            if u.prev_tx is not None:
                prev = Transaction.parse(u.prev_tx)
                if bytes(prev.txid()).hex() != u.txid:
                    raise UsageError(f"coin {i}: prev_tx is not transaction {u.txid}")
                out = prev.vout[u.vout]
                if out.value != u.amount or out.script_pubkey.data != spk:
                    raise UsageError(f"coin {i}: prev_tx output {u.vout} does not match the amount/address given")
                inp.non_witness_utxo = prev
            if spk[0] == 0 or (redeem_scripts and i in redeem_scripts) or self.sighash_flag() != SIGHASH_ALL:
                inp.witness_utxo = TransactionOutput(u.amount, Script(spk))
            if redeem_scripts and i in redeem_scripts:
                inp.redeem_script = Script(redeem_scripts[i])
        return str(psbt.to_base64())

    def build_sweep(
        self,
        utxos: Sequence[Utxo],
        to_address: str,
        *,
        sat_per_vbyte: int | float,
        testnet: bool,
        regtest: bool = False,
        version: int = 0,
        redeem_scripts: dict[int, bytes] | None = None,
    ) -> str:
        """Unsigned PSBT moving every given coin to ``to_address`` (a cold wallet), fee deducted.

        :raises UsageError: the coins do not cover the fee, or the remainder would be dust.
        """
        net = self.net(testnet, regtest)
        kinds = []
        for i, u in enumerate(utxos):
            spk = self.script_from_address(u.address, net)
            kind = (
                AddressKind.P2SH_P2WPKH
                if spk[0] == 0xA9
                else (AddressKind.P2WPKH if spk[0] == 0 else AddressKind.P2PKH)
            )
            if kind is AddressKind.P2SH_P2WPKH and not (redeem_scripts and i in redeem_scripts):
                raise UsageError(f"coin {i} is P2SH: give its redeem script")
            kinds.append(kind)
        dest = self.script_from_address(to_address, net)
        fee = self.estimate_fee(inputs=kinds, outputs=[dest], sat_per_vbyte=sat_per_vbyte).fee
        total = sum(u.amount for u in utxos)
        if total - fee < DUST:
            raise UsageError(f"the coins ({total}) do not cover the fee ({fee}) plus the dust limit")
        return self.build_psbt(
            utxos,
            [(to_address, total - fee)],
            testnet=testnet,
            regtest=regtest,
            version=version,
            redeem_scripts=redeem_scripts,
        )


def _net(
    name: str,
    *,
    wif: int,
    p2pkh: int,
    p2sh: int,
    bech32: str | None,
    xpub: str,
    xprv: str,
    tatum_path: str,
    zpub: str | None = None,
    bip84_path: str | None = None,
) -> UtxoNet:
    return UtxoNet(
        name=name,
        wif=wif,
        p2pkh=p2pkh,
        p2sh=p2sh,
        bech32=bech32,
        xpub=bytes.fromhex(xpub),
        xprv=bytes.fromhex(xprv),
        tatum_path=tatum_path,
        zpub=bytes.fromhex(zpub) if zpub else None,
        bip84_path=bip84_path,
    )


TESTNET_PATH = "m/44'/1'/0'/0"
#: BIP-32 / SLIP-132 versions (xpub/xprv, ypub/yprv, zpub/zprv, Ltub/Ltpv) by network.
_MAINNET_VERSIONS = frozenset(
    bytes.fromhex(v)
    for v in ("0488b21e", "0488ade4", "049d7cb2", "049d7878", "04b24746", "04b2430c", "019da462", "019d9cfe")
)
_TESTNET_VERSIONS = frozenset(
    bytes.fromhex(v)
    for v in ("043587cf", "04358394", "044a5262", "044a4e28", "045f1cf6", "045f18bc", "0436f6e1", "0436ef7d")
)

BTC = UtxoChain(
    "BTC",
    default_kind=AddressKind.P2WPKH,
    segwit=True,
    max_fee_rate=10_000,
    min_fee_rate=1,
    nets={
        "mainnet": _net(
            "mainnet",
            wif=0x80,
            p2pkh=0x00,
            p2sh=0x05,
            bech32="bc",
            xpub="0488b21e",
            xprv="0488ade4",
            tatum_path="m/44'/0'/0'/0",
            zpub="04b24746",
            bip84_path="m/84'/0'/0'",
        ),
        "testnet": _net(
            "testnet",
            wif=0xEF,
            p2pkh=0x6F,
            p2sh=0xC4,
            bech32="tb",
            xpub="043587cf",
            xprv="04358394",
            tatum_path=TESTNET_PATH,
            zpub="045f1cf6",
            bip84_path="m/84'/1'/0'",
        ),
        "regtest": _net(
            "regtest",
            wif=0xEF,
            p2pkh=0x6F,
            p2sh=0xC4,
            bech32="bcrt",
            xpub="043587cf",
            xprv="04358394",
            tatum_path=TESTNET_PATH,
            zpub="045f1cf6",
            bip84_path="m/84'/1'/0'",
        ),
    },
)

LTC = UtxoChain(
    "LTC",
    default_kind=AddressKind.P2PKH,
    segwit=True,
    max_fee_rate=10_000,
    min_fee_rate=1,
    nets={
        "mainnet": _net(
            "mainnet",
            wif=0xB0,
            p2pkh=0x30,
            p2sh=0x32,
            bech32="ltc",
            xpub="019da462",
            xprv="019d9cfe",
            tatum_path="m/44'/2'/0'/0",
            zpub="04b24746",
            bip84_path="m/84'/2'/0'",
        ),
        "testnet": _net(
            "testnet",
            wif=0xEF,
            p2pkh=0x6F,
            p2sh=0x3A,
            bech32="tltc",
            xpub="0436f6e1",
            xprv="0436ef7d",
            tatum_path=TESTNET_PATH,
            zpub="045f1cf6",
            bip84_path="m/84'/1'/0'",
        ),
    },
)

# Dogecoin's minimum relay fee is 0.01 DOGE/kB (1,000 sat/B); "absurd" is set 100x higher.
DOGE = UtxoChain(
    "DOGE",
    default_kind=AddressKind.P2PKH,
    segwit=False,
    max_fee_rate=100_000,
    min_fee_rate=1_000,
    nets={
        "mainnet": _net(
            "mainnet",
            wif=0x9E,
            p2pkh=0x1E,
            p2sh=0x16,
            bech32=None,
            xpub="0488b21e",
            xprv="0488ade4",
            tatum_path="m/44'/3'/0'/0",
        ),
        "testnet": _net(
            "testnet",
            wif=0xF1,
            p2pkh=0x71,
            p2sh=0xC4,
            bech32=None,
            xpub="043587cf",
            xprv="04358394",
            tatum_path=TESTNET_PATH,
        ),
    },
)
