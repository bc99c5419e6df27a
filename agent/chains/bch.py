"""Bitcoin Cash: the Bitcoin machinery of :mod:`agent.chains.utxo` with BCH's two differences.

1. **Signatures** use ``SIGHASH_ALL | SIGHASH_FORKID`` (0x41) over the BIP-143 digest algorithm
   (the 2017 replay-protection scheme), for every input, although BCH has no segwit. embit refuses
   sighash 0x41, so the digest is assembled here from embit's BIP-143 building blocks. Because that
   digest commits to the amount, a PSBT input's ``witness_utxo`` (amount + script) is enough.
2. **Addresses** are CashAddr (``bitcoincash:q…``, testnet ``bchtest:q…``), with legacy base58
   accepted in input. CashAddr is an encoding (base32 with a BCH-code checksum), spelled out in the
   spec linked below; it is implemented here because embit has none.

Tatum derives BCH keys at ``m/44'/145'/0'/0`` on mainnet *and* testnet (a quirk it keeps), with
``tpub`` version bytes on testnet. Spec: https://github.com/bitcoincashorg/bitcoincash.org/blob/master/spec/cashaddr.md
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from agent.chains.utxo import AddressKind, UtxoChain, UtxoNet, _net
from agent.errors import UsageError

if TYPE_CHECKING:
    from embit.psbt import PSBT, InputScope

SIGHASH_ALL_FORKID = 0x41
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x98F2BC8E61, 0x79B76D99E2, 0xF33E5FB3C4, 0xAE2EABE2A8, 0x1E4F43E470)
#: version byte: type (0 = P2PKH, 1 = P2SH) << 3 | size code (0 = 160 bits)
_TYPE_P2PKH = 0
_TYPE_P2SH = 8


def _polymod(values: list[int]) -> int:
    c = 1
    for d in values:
        c0 = c >> 35
        c = ((c & 0x07FFFFFFFF) << 5) ^ d
        for i, g in enumerate(_GEN):
            if (c0 >> i) & 1:
                c ^= g
    return c ^ 1


def _prefix_values(prefix: str) -> list[int]:
    return [ord(ch) & 0x1F for ch in prefix] + [0]


def _convert(data: bytes | list[int], frm: int, to: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out = []
    maxv = (1 << to) - 1
    for v in data:
        if v < 0 or v >> frm:
            return None
        acc = (acc << frm) | v
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to - bits)) & maxv)
    elif bits >= frm or ((acc << (to - bits)) & maxv):
        return None
    return out


def cashaddr_encode(prefix: str, version: int, payload: bytes) -> str:
    data = _convert(bytes([version]) + payload, 8, 5, True)
    assert data is not None
    mod = _polymod(_prefix_values(prefix) + data + [0] * 8)
    checksum = [(mod >> 5 * (7 - i)) & 0x1F for i in range(8)]
    return prefix + ":" + "".join(_CHARSET[d] for d in data + checksum)


def cashaddr_decode(address: str, prefix: str) -> tuple[int, bytes] | None:
    """(version byte, hash) of a CashAddr with ``prefix`` (the prefix may be omitted), else None."""
    a = address.strip()
    if a.lower() != a and a.upper() != a:
        return None
    a = a.lower()
    if ":" in a:
        pfx, _, body = a.partition(":")
        if pfx != prefix:
            return None
    else:
        body = a
    if not body or any(c not in _CHARSET for c in body):
        return None
    values = [_CHARSET.index(c) for c in body]
    if len(values) < 9 or _polymod(_prefix_values(prefix) + values) != 0:
        return None
    decoded = _convert(values[:-8], 5, 8, False)
    if decoded is None or len(decoded) != 21:
        return None
    return decoded[0], bytes(decoded[1:])


class BchChain(UtxoChain):
    """Bitcoin Cash: P2PKH only, FORKID signatures, CashAddr."""

    #: Plain RFC 6979 (no low-R grinding), exactly as bitcash signs, so the two can be compared byte for byte.
    grind_low_r = False

    def address_from_script(self, spk: bytes, net: UtxoNet) -> str | None:
        prefix = _prefix(net)
        if len(spk) == 25 and spk[:3] == b"\x76\xa9\x14" and spk[-2:] == b"\x88\xac":
            return cashaddr_encode(prefix, _TYPE_P2PKH, spk[3:23])
        if len(spk) == 23 and spk[:2] == b"\xa9\x14" and spk[-1] == 0x87:
            return cashaddr_encode(prefix, _TYPE_P2SH, spk[2:22])
        return None

    def script_from_address(self, address: str, net: UtxoNet) -> bytes:
        decoded = cashaddr_decode(address, _prefix(net))
        if decoded is None:
            # Legacy base58 (1…/3…, m…/2…) is what older tools and Tatum's SDK <= 1.x may show.
            return super().script_from_address(address, net)
        version, h = decoded
        if version == _TYPE_P2PKH:
            return b"\x76\xa9\x14" + h + b"\x88\xac"
        if version == _TYPE_P2SH:
            return b"\xa9\x14" + h + b"\x87"
        raise UsageError(f"unsupported CashAddr type in {address!r}")

    def legacy_address(self, address: str, *, testnet: bool) -> str:
        """Base58 form of a BCH address (what bitcash and old explorers print)."""
        from embit import base58

        net = self.net(testnet)
        spk = self.script_from_address(address, net)
        if spk[0] == 0x76:
            return str(base58.encode_check(bytes([net.p2pkh]) + spk[3:23]))
        return str(base58.encode_check(bytes([net.p2sh]) + spk[2:22]))

    def sighash_flag(self) -> int:
        return SIGHASH_ALL_FORKID

    def _check_input_data(self, i: int, inp: InputScope, kind: AddressKind | None) -> None:
        # FORKID digests commit to the amount: witness_utxo alone is enough for BCH.
        return None

    def _sighash(self, psbt: PSBT, i: int, kind: AddressKind, pub: bytes, amount: int, spk: bytes) -> bytes:
        """BIP-143 digest with nHashType 0x41 (forkid 0), as BCH's replay-protected sighash defines."""
        from embit.script import Script

        tx = psbt.tx
        inp = tx.vin[i]
        h = hashlib.sha256()
        h.update(tx.version.to_bytes(4, "little"))
        h.update(hashlib.sha256(tx.hash_prevouts()).digest())
        h.update(hashlib.sha256(tx.hash_sequence()).digest())
        h.update(bytes(reversed(inp.txid)))
        h.update(inp.vout.to_bytes(4, "little"))
        h.update(Script(spk).serialize())
        h.update(amount.to_bytes(8, "little"))
        h.update(inp.sequence.to_bytes(4, "little"))
        h.update(hashlib.sha256(tx.hash_outputs()).digest())
        h.update(tx.locktime.to_bytes(4, "little"))
        h.update(SIGHASH_ALL_FORKID.to_bytes(4, "little"))
        return hashlib.sha256(h.digest()).digest()


def _prefix(net: UtxoNet) -> str:
    return "bitcoincash" if net.name == "mainnet" else "bchtest"


BCH = BchChain(
    "BCH",
    default_kind=AddressKind.P2PKH,
    segwit=False,
    max_fee_rate=10_000,
    min_fee_rate=1,
    nets={
        "mainnet": _net(
            "mainnet",
            wif=0x80,
            p2pkh=0x00,
            p2sh=0x05,
            bech32=None,
            xpub="0488b21e",
            xprv="0488ade4",
            tatum_path="m/44'/145'/0'/0",
        ),
        "testnet": _net(
            "testnet",
            wif=0xEF,
            p2pkh=0x6F,
            p2sh=0xC4,
            bech32=None,
            xpub="043587cf",
            xprv="04358394",
            tatum_path="m/44'/145'/0'/0",
        ),
    },
)
