"""Test helpers for Bitcoin-family chains: funding transactions and Bitcoin Core's script verifier."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from agent.chains.utxo import AddressKind, Utxo, UtxoChain

MNEMONIC = "abandon " * 11 + "about"
#: Consensus flags Bitcoin Core applies to every block since segwit (taproot not needed: no p2tr here).
_FLAGS_NAMES = ("P2SH", "DERSIG", "NULLDUMMY", "CHECKLOCKTIMEVERIFY", "CHECKSEQUENCEVERIFY", "WITNESS")


@dataclass
class Coin:
    utxo: Utxo
    key: bytearray
    kind: AddressKind
    spk: bytes
    redeem: bytes | None


def funding_tx(outputs: list[tuple[bytes, int]], salt: bytes = b"") -> bytes:
    """A syntactically valid transaction paying ``outputs`` (scriptPubKey, amount); its input is made up."""
    from embit.script import Script
    from embit.transaction import Transaction, TransactionInput, TransactionOutput

    prev = hashlib.sha256(b"funding" + salt).digest()
    tx = Transaction(
        version=2,
        vin=[TransactionInput(prev, 0, script_sig=Script(b"\x51"))],
        vout=[TransactionOutput(a, Script(s)) for s, a in outputs],
        locktime=0,
    )
    return bytes(tx.serialize())


def txid(raw: bytes) -> str:
    from embit.transaction import Transaction

    return bytes(Transaction.parse(raw).txid()).hex()


def make_coins(
    chain: UtxoChain,
    specs: list[tuple[int, AddressKind, int]],
    *,
    testnet: bool = False,
    regtest: bool = False,
    full_prev: bool = True,
    salt: bytes = b"",
) -> list[Coin]:
    """Coins at (wallet index, script kind, amount), all paid by one funding transaction."""
    from embit import script
    from embit.ec import PublicKey

    from agent.chains import _hd

    net = chain.net(testnet, regtest)
    coins = []
    outs = []
    for index, kind, amount in specs:
        key = chain.private_key_from_mnemonic(MNEMONIC, index, testnet=testnet, regtest=regtest)
        pub = _hd.pubkey_from_private(key)
        spk = chain.script_for_pubkey(pub, kind).data
        redeem = script.p2wpkh(PublicKey.parse(pub)).data if kind is AddressKind.P2SH_P2WPKH else None
        outs.append((spk, amount))
        coins.append(Coin(Utxo("", 0, amount, chain.address_from_script(spk, net) or ""), key, kind, spk, redeem))
    raw = funding_tx(outs, salt)
    tid = txid(raw)
    for vout, c in enumerate(coins):
        c.utxo = Utxo(tid, vout, c.utxo.amount, c.utxo.address, raw if full_prev else None)
    return coins


def redeem_map(coins: list[Coin]) -> dict[int, bytes]:
    return {i: c.redeem for i, c in enumerate(coins) if c.redeem is not None}


def kernel_verify(raw: bytes, spent: list[tuple[bytes, int]]) -> list[bool]:
    """Bitcoin Core's consensus script check (libbitcoinkernel) for every input of ``raw``."""
    import pbk

    flags = pbk.ScriptVerificationFlags(0)
    for name in _FLAGS_NAMES:
        flags |= getattr(pbk.ScriptVerificationFlags, name)
    tx = pbk.Transaction(raw)
    out = []
    for i, (spk, amount) in enumerate(spent):
        try:
            ok = bool(pbk.ScriptPubkey(spk).verify(amount, tx, None, i, flags))
        except pbk.ScriptVerifyException:
            ok = False
        out.append(ok)
    return out


def tamper_first_signature(raw: bytes, input_index: int) -> bytes:
    """Flip one bit inside the DER ``s`` value of the given input's signature (witness or scriptSig)."""
    from embit.script import Script, Witness
    from embit.transaction import Transaction

    tx: Any = Transaction.parse(raw)
    inp = tx.vin[input_index]
    if inp.witness.items:
        sig = bytearray(inp.witness.items[0])
        sig[-3] ^= 0x01
        inp.witness = Witness([bytes(sig), *inp.witness.items[1:]])
    else:
        data = bytearray(inp.script_sig.data)
        data[1 + data[0] - 3] ^= 0x01  # push-length byte, then the DER sig + sighash byte
        inp.script_sig = Script(bytes(data))
    return bytes(tx.serialize())
