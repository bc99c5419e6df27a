"""Published key-derivation vectors: BIP-39 (English), BIP-32 vectors 1-3, BIP-84, and BIP-44 addresses.

Transaction vectors (BIP-143, BIP-174, EIP-155, EIP-1559, ERC-20) live with their family's tests.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from agent.chains import _hd, get_chain
from agent.chains.utxo import AddressKind, UtxoChain

VECTORS = Path(__file__).parent / "vectors"
BIP39 = json.loads((VECTORS / "bip39.json").read_text())
BIP32 = json.loads((VECTORS / "bip32.json").read_text())
BIP84 = json.loads((VECTORS / "bip84.json").read_text())
ABANDON = BIP84["mnemonic"]


@pytest.mark.parametrize("v", BIP39["english"], ids=lambda v: v[0][:8] + f"-{len(v[1].split())}w")
def test_bip39_english(v: list[str]) -> None:
    entropy, mnemonic, seed, xprv = v
    assert _hd.mnemonic_from_entropy(bytes.fromhex(entropy)) == mnemonic
    got = _hd.seed_from_mnemonic(mnemonic, BIP39["passphrase"])
    assert got.hex() == seed
    assert _hd.encode_xkey(_hd.node_from_seed(got), _hd.XPRV) == xprv


def _chain_items() -> list[tuple[str, str, str, str]]:
    return [(vec["seed"], path, xpub, xprv) for vec in BIP32["vectors"] for path, xpub, xprv in vec["chain"]]


@pytest.mark.parametrize(
    ("seed", "path", "xpub", "xprv"), _chain_items(), ids=[f"v{i}" for i in range(len(_chain_items()))]
)
def test_bip32_vectors(seed: str, path: str, xpub: str, xprv: str) -> None:
    node = _hd.node_from_seed(bytes.fromhex(seed)).derive(_hd.parse_path(path))
    assert _hd.encode_xkey(node, _hd.XPRV) == xprv
    assert _hd.encode_xkey(node.to_public(version=_hd.XPUB), _hd.XPUB) == xpub


def test_bip32_public_derivation_matches_the_vectors() -> None:
    """Our CKDpub (used for every address) against each non-hardened step of the published chains."""
    checked = 0
    for vec in BIP32["vectors"]:
        chain = vec["chain"]
        for (_p_path, p_xpub, _), (c_path, c_xpub, _) in itertools.pairwise(chain):
            last = c_path.split("/")[-1]
            if last.endswith("'"):
                continue
            parent, _ = _hd.decode_xpub(p_xpub, {_hd.XPUB: None})
            child, _ = _hd.decode_xpub(c_xpub, {_hd.XPUB: None})
            assert _hd.child_pubkey(parent, int(last)) == child.key.sec()
            checked += 1
    assert checked == 6


def test_bip84_vectors() -> None:
    btc = get_chain("BTC")
    assert isinstance(btc, UtxoChain)
    zpub = btc.xpub_from_mnemonic(ABANDON, testnet=False, scheme="bip84")
    assert zpub == BIP84["account_zpub"]
    root = _hd.node_from_seed(_hd.seed_from_mnemonic(ABANDON))
    assert _hd.encode_xkey(root, bytes.fromhex("04b2430c")) == BIP84["rootnode"]
    account = root.derive(_hd.parse_path("m/84'/0'/0'"))
    assert _hd.encode_xkey(account, bytes.fromhex("04b2430c")) == BIP84["account_xprv"]
    node, _ = _hd.decode_xpub(zpub, {bytes.fromhex("04b24746"): None})
    for a in BIP84["addresses"]:
        pub = _hd.child_pubkey(node, *a["path"])
        assert pub.hex() == a["pubkey"]
        assert btc.address_from_pubkey(pub, btc.net(False), AddressKind.P2WPKH) == a["address"]
        if a["path"][0] == 0:
            assert btc.address_from_xpub(zpub, a["path"][1], testnet=False) == a["address"]
            key = btc.private_key_from_mnemonic(ABANDON, a["path"][1], testnet=False, scheme="bip84")
            assert btc.wif_from_private_key(key, testnet=False) == a["privkey"]


def test_bip44_addresses_agree_with_bip_utils() -> None:
    """BIP-44 m/44'/coin'/0'/0/i through us and through bip-utils (an independent implementation)."""
    from bip_utils import Bip39SeedGenerator, Bip44, Bip44Changes, Bip44Coins

    seed = Bip39SeedGenerator(ABANDON).Generate()
    coins: dict[str, tuple[Any, dict[str, Any]]] = {
        "BTC": (Bip44Coins.BITCOIN, {"kind": "p2pkh"}),
        "LTC": (Bip44Coins.LITECOIN, {}),
        "DOGE": (Bip44Coins.DOGECOIN, {}),
        "ETH": (Bip44Coins.ETHEREUM, {}),
    }
    for name, (coin, kw) in coins.items():
        chain = get_chain(name)
        xpub = chain.xpub_from_mnemonic(ABANDON, testnet=False)
        ctx = Bip44.FromSeed(seed, coin).Purpose().Coin().Account(0).Change(Bip44Changes.CHAIN_EXT)
        for i in range(3):
            assert chain.address_from_xpub(xpub, i, testnet=False, **kw) == ctx.AddressIndex(i).PublicKey().ToAddress()
    # The two values every BIP-44 tool prints for this mnemonic.
    assert (
        get_chain("BTC").address_from_xpub(
            get_chain("BTC").xpub_from_mnemonic(ABANDON, testnet=False), 0, testnet=False, kind="p2pkh"
        )
        == "1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA"
    )
    assert (
        get_chain("ETH").address_from_xpub(
            get_chain("ETH").xpub_from_mnemonic(ABANDON, testnet=False), 0, testnet=False
        )
        == "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    )


def test_public_derivation_agrees_with_embit_for_many_indices() -> None:
    import random

    node, _ = _hd.decode_xpub(get_chain("BTC").xpub_from_mnemonic(ABANDON, testnet=False), {_hd.XPUB: None})
    rnd = random.Random(7)
    for i in [0, 1, 2**31 - 1, *(rnd.randrange(2**31) for _ in range(40))]:
        assert _hd.child_pubkey(node, i) == node.derive([i]).key.sec()
