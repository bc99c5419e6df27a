"""Keys and addresses: the registry, Tatum's own published vectors, and the error contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.chains import get_chain, supported_chains
from agent.errors import UsageError

VECTORS = Path(__file__).parent / "vectors"
TATUM = json.loads((VECTORS / "tatum.json").read_text())
ABANDON = "abandon " * 11 + "about"
#: The anvil/hardhat default mnemonic; account 0 is well known.
JUNK = "test test test test test test test test test test test junk"


def test_supported_chains_are_tatum_names() -> None:
    assert supported_chains() == [
        "BTC",
        "LTC",
        "DOGE",
        "BCH",
        "ETH",
        "BSC",
        "MATIC",
        "CELO",
        "KLAY",
        "ONE",
        "XDC",
        "KCS",
    ]
    for name in supported_chains():
        assert get_chain(name.lower()).name == name
        assert get_chain(f" {name.title()} ").name == name


def test_unknown_chain_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"unknown chain 'XYZ' \(supported: BTC, LTC, .*KCS\)"):
        get_chain("XYZ")


def test_import_is_cheap_and_loads_no_chain_library() -> None:
    # What it costs is a benchmark's business (scripts/bench-chains); here: it loads no chain library.
    code = (
        "import sys; import agent.chains\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('embit', 'eth_account', 'bip_utils', 'Crypto', 'rlp')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("v", TATUM["xpub_from_mnemonic"], ids=lambda v: f"{v['chain']}-{v['testnet']}")
def test_tatum_xpub(v: dict[str, Any]) -> None:
    assert get_chain(v["chain"]).xpub_from_mnemonic(v["mnemonic"], testnet=v["testnet"]) == v["xpub"]


@pytest.mark.parametrize("v", TATUM["address_from_xpub"], ids=lambda v: f"{v['chain']}-{v['testnet']}")
def test_tatum_address_from_xpub(v: dict[str, Any]) -> None:
    chain = get_chain(v["chain"])
    kw = {"kind": v["kind"]} if "kind" in v else {}
    got = chain.address_from_xpub(v["xpub"], v["index"], testnet=v["testnet"], **kw)
    assert got.lower() == v["address"].lower()


@pytest.mark.parametrize("v", TATUM["private_key_from_mnemonic"]["keys"], ids=lambda v: f"{v['chain']}-{v['testnet']}")
def test_tatum_private_key_from_mnemonic(v: dict[str, Any]) -> None:
    chain = get_chain(v["chain"])
    src = TATUM["private_key_from_mnemonic"]
    key = chain.private_key_from_mnemonic(src["mnemonic"], src["index"], testnet=v["testnet"])
    assert isinstance(key, bytearray) and len(key) == 32
    assert key == chain.parse_private_key(v["key"], testnet=v["testnet"])


@pytest.mark.parametrize("v", TATUM["address_from_private_key"], ids=lambda v: f"{v['chain']}-{v['testnet']}")
def test_tatum_address_from_private_key(v: dict[str, Any]) -> None:
    chain = get_chain(v["chain"])
    key = chain.parse_private_key(v["key"], testnet=v["testnet"])
    kw = {"kind": v["kind"]} if "kind" in v else {}
    assert chain.address_from_private_key(bytes(key), testnet=v["testnet"], **kw).lower() == v["address"].lower()


def test_btc_tatum_addresses_are_bech32_p2wpkh_of_the_bip44_key() -> None:
    """SDK >= 1.34: same BIP-44 path and key as the published P2PKH vector, rendered as bech32 P2WPKH."""
    from embit import base58, bech32

    v = TATUM["address_from_xpub"][0]
    btc = get_chain("BTC")
    segwit = btc.address_from_xpub(v["xpub"], 1, testnet=False)
    assert segwit.startswith("bc1q")
    assert bytes(bech32.decode("bc", segwit)[1]) == base58.decode_check(v["address"])[1:]
    tsegwit = btc.address_from_xpub(TATUM["address_from_xpub"][1]["xpub"], 1, testnet=True)
    assert tsegwit.startswith("tb1q")


@pytest.mark.parametrize("name", supported_chains())
@pytest.mark.parametrize("testnet", [False, True])
def test_xpub_private_key_and_address_agree(name: str, testnet: bool) -> None:
    chain = get_chain(name)
    xpub = chain.xpub_from_mnemonic(ABANDON, testnet=testnet)
    for index in (0, 1, 2**31 - 1):
        key = chain.private_key_from_mnemonic(ABANDON, index, testnet=testnet)
        assert chain.address_from_private_key(bytes(key), testnet=testnet) == chain.address_from_xpub(
            xpub, index, testnet=testnet
        )


def test_eth_matches_the_anvil_default_account() -> None:
    eth = get_chain("ETH")
    key = eth.private_key_from_mnemonic(JUNK, 0, testnet=False)
    assert key.hex() == "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
    xpub = eth.xpub_from_mnemonic(JUNK, testnet=False)
    assert eth.address_from_xpub(xpub, 0, testnet=False) == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def test_evm_paths_and_testnet_xpub_version() -> None:
    """Tatum's per-chain coin types; EVM xpubs use mainnet version bytes even on testnet."""
    from bip_utils import Bip32Secp256k1, Bip39SeedGenerator

    seed = Bip39SeedGenerator(ABANDON).Generate()
    root = Bip32Secp256k1.FromSeed(seed)
    for name, coin in [
        ("ETH", 60),
        ("BSC", 60),
        ("MATIC", 966),
        ("CELO", 52752),
        ("KLAY", 8217),
        ("ONE", 1023),
        ("XDC", 550),
        ("KCS", 60),
    ]:
        chain = get_chain(name)
        want = root.DerivePath(f"m/44'/{coin}'/0'/0").PublicKey().ToExtended()
        assert chain.xpub_from_mnemonic(ABANDON, testnet=False) == want
        tn = chain.xpub_from_mnemonic(ABANDON, testnet=True)
        assert tn.startswith("xpub") and tn == root.DerivePath("m/44'/1'/0'/0").PublicKey().ToExtended()


def test_xdc_prefix_and_checksummed_output() -> None:
    xdc, eth = get_chain("XDC"), get_chain("ETH")
    xpub = xdc.xpub_from_mnemonic(ABANDON, testnet=False)
    a = xdc.address_from_xpub(xpub, 0, testnet=False)
    assert a.startswith("xdc") and eth.normalize_address("0x" + a[3:].lower(), testnet=False)[2:] == a[3:]
    assert xdc.normalize_address("0x" + a[3:].upper(), testnet=False) == a


def test_any_case_accepted_but_a_bad_checksum_is_refused() -> None:
    eth = get_chain("ETH")
    good = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert eth.normalize_address(good.lower(), testnet=False) == good
    assert eth.normalize_address("0x" + good[2:].upper(), testnet=False) == good
    with pytest.raises(UsageError, match="checksum"):
        eth.normalize_address(good[:2] + good[2].swapcase() + good[3:], testnet=False)  # 'f' -> 'F'


def test_bip84_option_for_new_wallets() -> None:
    btc = get_chain("BTC")
    zpub = btc.xpub_from_mnemonic(ABANDON, testnet=False, scheme="bip84")
    assert zpub.startswith("zpub")
    assert btc.address_from_xpub(zpub, 0, testnet=False) == "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
    key = btc.private_key_from_mnemonic(ABANDON, 0, testnet=False, scheme="bip84")
    assert btc.wif_from_private_key(key, testnet=False) == "KyZpNDKnfs94vbrwhJneDi77V6jF64PWPF8x5cdJb8ifgg2DUc9d"
    with pytest.raises(UsageError, match="BIP-84"):
        get_chain("DOGE").xpub_from_mnemonic(ABANDON, testnet=False, scheme="bip84")


SECRET_WIF = "KwrYonf8pFfyQR87NTn124Ep9zoJsZMBCoVUi7mjMc1eTHDyLyBN"


@pytest.mark.parametrize(
    ("name", "text", "testnet"),
    [
        ("BTC", SECRET_WIF[:-1] + "M", False),  # checksum broken
        ("BTC", SECRET_WIF, True),  # mainnet key on testnet
        ("LTC", SECRET_WIF, False),  # BTC key on LTC
        ("BTC", "5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTJ", False),  # uncompressed WIF
        ("ETH", "0x" + "ab" * 31, False),  # too short
        ("ETH", "0x" + "zz" * 32, False),  # not hex
        ("ETH", "00" * 32, False),  # zero key
        ("ETH", "ff" * 32, False),  # >= n
        ("ETH", SECRET_WIF, False),  # WIF on EVM
    ],
)
def test_bad_private_keys_never_echo_the_input(name: str, text: str, testnet: bool) -> None:
    with pytest.raises(UsageError) as err:
        get_chain(name).parse_private_key(text, testnet=testnet)
    msg = str(err.value)
    assert text not in msg and text[2:12] not in msg and text[5:15] not in msg


def test_evm_private_key_formats() -> None:
    eth = get_chain("ETH")
    hexkey = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
    for text in (hexkey, "0x" + hexkey, "0X" + hexkey.upper(), f"  {hexkey}\n"):
        assert eth.parse_private_key(text, testnet=False).hex() == hexkey


def test_bad_mnemonic_and_xpub_never_echo_secrets() -> None:
    btc = get_chain("BTC")
    bad = "abandon " * 11 + "abandon"
    with pytest.raises(UsageError) as err:
        btc.xpub_from_mnemonic(bad, testnet=False)
    assert "abandon" not in str(err.value)
    xprv = "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi"
    with pytest.raises(UsageError, match="PRIVATE") as err2:
        btc.address_from_xpub(xprv, 0, testnet=False)
    assert xprv[4:20] not in str(err2.value)
    tpub = TATUM["address_from_xpub"][1]["xpub"]
    with pytest.raises(UsageError, match="does not match"):
        btc.address_from_xpub(tpub, 0, testnet=False)
    with pytest.raises(UsageError, match="index"):
        btc.address_from_xpub(btc.xpub_from_mnemonic(ABANDON, testnet=False), 2**31, testnet=False)
    with pytest.raises(UsageError):
        btc.address_from_xpub("not an xpub", 0, testnet=False)


def test_mnemonic_whitespace_and_case_are_normalised() -> None:
    btc = get_chain("BTC")
    messy = "  " + ABANDON.upper().replace(" ", "\n  ") + "\t"
    assert btc.xpub_from_mnemonic(messy, testnet=False) == btc.xpub_from_mnemonic(ABANDON, testnet=False)


def test_batch_addresses_match_single_derivation() -> None:
    for name in ("BTC", "LTC", "ETH"):
        chain: Any = get_chain(name)
        xpub = chain.xpub_from_mnemonic(ABANDON, testnet=False)
        assert chain.addresses_from_xpub(xpub, range(5), testnet=False) == [
            chain.address_from_xpub(xpub, i, testnet=False) for i in range(5)
        ]
