"""Signatures per second for each chain family next to the raw library's rate; address derivation cost.

Each measurement runs for about 0.4 s after one warm-up call, in this process (single core).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MNEMONIC = "abandon " * 11 + "about"
BUDGET = 0.4


def rate(fn: Callable[[], object], budget: float = BUDGET) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        fn()
        n += 1
    return n / elapsed


def cold(code: str) -> float:
    """Best of 3 wall times (ms) of a fresh interpreter running ``code`` after the stdlib basics."""
    prog = (
        "import dataclasses, enum, typing, abc, time\nt = time.perf_counter()\n"
        + code
        + "\nprint((time.perf_counter() - t) * 1e3)"
    )
    return min(
        float(subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True, cwd=ROOT).stdout)
        for _ in range(3)
    )


def main() -> None:
    import coincurve
    from eth_account import Account

    from agent.chains import get_chain
    from agent.chains.utxo import AddressKind, UtxoChain
    from tests.chains.utxo_helpers import make_coins

    rows: list[tuple[str, float, str]] = []
    secret = bytes(range(1, 33))
    digest = bytes(32)
    cc = coincurve.PrivateKey(secret)
    raw_cc = rate(lambda: cc.sign(digest, hasher=None))

    btc = get_chain("BTC")
    assert isinstance(btc, UtxoChain)
    for label, kinds in (
        ("BTC P2WPKH 1-in/2-out", [AddressKind.P2WPKH]),
        ("BTC P2PKH 1-in/2-out", [AddressKind.P2PKH]),
        ("BTC mixed 3-in/2-out", [AddressKind.P2WPKH, AddressKind.P2SH_P2WPKH, AddressKind.P2PKH]),
    ):
        coins = make_coins(btc, [(i, k, 100_000) for i, k in enumerate(kinds)])
        redeem = {i: c.redeem for i, c in enumerate(coins) if c.redeem}
        total = 100_000 * len(kinds)
        psbt = btc.build_psbt(
            [c.utxo for c in coins],
            [("bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu", 60_000), (coins[0].utxo.address, total - 65_000)],
            testnet=False,
            redeem_scripts=redeem,
        )
        keys = [bytes(c.key) for c in coins]
        r = rate(lambda psbt=psbt, keys=keys: btc.sign(psbt, keys, testnet=False))
        rows.append((f"utxo  {label}: decode+sign+serialize", r, "tx/s"))

    bch = get_chain("BCH")
    assert isinstance(bch, UtxoChain)
    coins = make_coins(bch, [(0, AddressKind.P2PKH, 100_000)])
    psbt = bch.build_psbt([c.utxo for c in coins], [(coins[0].utxo.address, 99_000)], testnet=False)
    rows.append(
        (
            "utxo  BCH P2PKH 1-in/1-out (FORKID)",
            rate(lambda: bch.sign(psbt, [bytes(coins[0].key)], testnet=False)),
            "tx/s",
        )
    )
    rows.append(("raw   coincurve ECDSA sign (32-byte digest)", raw_cc, "sig/s"))

    eth = get_chain("ETH")
    key = bytes(eth.private_key_from_mnemonic(MNEMONIC, 0, testnet=False))
    tx1559 = eth.build_transfer(
        to="0x" + "35" * 20,
        value=1,
        nonce=0,
        chain_id=1,  # type: ignore[attr-defined]
        max_fee_per_gas=10**10,
        max_priority_fee_per_gas=10**9,
    )
    txerc = eth.build_erc20_transfer(
        token="0x" + "35" * 20,
        to="0x" + "12" * 20,  # type: ignore[attr-defined]
        amount=10**18,
        nonce=0,
        chain_id=1,
        max_fee_per_gas=10**10,
    )
    txleg = eth.build_transfer(
        to="0x" + "35" * 20,
        value=1,
        nonce=0,
        chain_id=1,  # type: ignore[attr-defined]
        gas_price=10**10,
    )
    rows.append(
        (
            "evm   ETH EIP-1559 transfer: decode+sign+verify",
            rate(lambda: eth.sign(tx1559, [key], testnet=False)),
            "tx/s",
        )
    )
    rows.append(("evm   ETH ERC-20 transfer (EIP-1559)", rate(lambda: eth.sign(txerc, [key], testnet=False)), "tx/s"))
    rows.append(("evm   ETH legacy EIP-155", rate(lambda: eth.sign(txleg, [key], testnet=False)), "tx/s"))
    d = {
        "type": 2,
        "chainId": 1,
        "nonce": 0,
        "to": "0x" + "35" * 20,
        "value": 1,
        "gas": 21000,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
        "data": "0x",
    }
    rows.append(("raw   eth-account sign_transaction EIP-1559", rate(lambda: Account.sign_transaction(d, key)), "tx/s"))

    xpub = btc.xpub_from_mnemonic(MNEMONIC, testnet=False)
    exp = eth.xpub_from_mnemonic(MNEMONIC, testnet=False)
    i = iter(range(10**9))
    rows.append(
        (
            "keys  BTC address_from_xpub (parse xpub + derive + bech32)",
            rate(lambda: btc.address_from_xpub(xpub, next(i), testnet=False)),
            "addr/s",
        )
    )
    rows.append(
        (
            "keys  ETH address_from_xpub (parse xpub + derive + keccak)",
            rate(lambda: eth.address_from_xpub(exp, next(i), testnet=False)),
            "addr/s",
        )
    )
    rows.append(
        (
            "keys  BTC addresses_from_xpub, batch of 1000 (xpub parsed once)",
            1000
            * rate(
                lambda: btc.addresses_from_xpub(xpub, range(1000), testnet=False),  # type: ignore[attr-defined]
                budget=0.5,
            ),
            "addr/s",
        )
    )

    width = max(len(r[0]) for r in rows)
    print("kms-agent chain layer, single process (signing rates include decoding and all checks)")
    for label, value, unit in rows:
        print(f"  {label:<{width}}  {value:>10,.0f} {unit}")

    print("cold start, fresh interpreter (ms, best of 3):")
    x = repr(xpub)
    cold_rows = [
        ("import agent.chains", "import agent.chains"),
        (
            "import + get_chain('BTC') + address_from_xpub (embit)",
            f"from agent.chains import get_chain\nget_chain('BTC').address_from_xpub({x}, 7, testnet=False)",
        ),
        (
            "import + get_chain('ETH') + address_from_xpub (embit + keccak)",
            f"from agent.chains import get_chain\nget_chain('ETH').address_from_xpub({exp!r}, 7, testnet=False)",
        ),
        (
            "for comparison: import bip_utils + BIP-32 public derivation",
            f"from bip_utils import Bip32Secp256k1\nBip32Secp256k1.FromExtendedKey({x}).ChildKey(7).PublicKey()",
        ),
    ]
    width = max(len(r[0]) for r in cold_rows)
    for label, code in cold_rows:
        print(f"  {label:<{width}}  {cold(code):>8.1f} ms")


if __name__ == "__main__":
    main()
