"""Every chain this agent signs for: a Tatum mnemonic entry, its xpub made with bip-utils at Tatum's
path (research/tatum-kms.md §1.4), checks out, and the addresses derived for (signatureId, index)
are the ones bip-utils derives, on mainnet and testnet."""

from __future__ import annotations

from typing import Any

import pytest

from agent.chains import get_chain, supported_chains
from agent.tatum.entries import Entry, Status, check_entry
from tests.tatum.test_import_export import LEGAL

#: chain -> (mainnet coin type, testnet coin type, address kind, mainnet / testnet xpub version).
XPUB, TPUB = "0488b21e", "043587cf"
TATUM: dict[str, tuple[int, int, str, str, str]] = {
    "BTC": (0, 1, "p2wpkh", XPUB, TPUB),
    "LTC": (2, 1, "ltc", "019da462", "0436f6e1"),
    "DOGE": (3, 1, "doge", XPUB, TPUB),
    "BCH": (145, 145, "bch", XPUB, TPUB),  # Tatum keeps the mainnet path on testnet ("historical")
    "ETH": (60, 1, "evm", XPUB, XPUB),  # EVM chains store an xpub on testnet too
    "BSC": (60, 1, "evm", XPUB, XPUB),
    "MATIC": (966, 1, "evm", XPUB, XPUB),
    "CELO": (52752, 1, "evm", XPUB, XPUB),
    "KLAY": (8217, 1, "evm", XPUB, XPUB),
    "ONE": (1023, 1, "evm", XPUB, XPUB),
    "XDC": (550, 1, "xdc", XPUB, XPUB),
    "KCS": (60, 1, "evm", XPUB, XPUB),
}


def _account(chain: str, testnet: bool) -> Any:
    from bip_utils import Bip32KeyNetVersions, Bip32Slip10Secp256k1, Bip39SeedGenerator

    main_coin, test_coin, _, main_v, test_v = TATUM[chain]
    version = bytes.fromhex(test_v if testnet else main_v)
    versions = Bip32KeyNetVersions(version, bytes(4))
    root = Bip32Slip10Secp256k1.FromSeed(Bip39SeedGenerator(LEGAL).Generate(), versions)
    return root.DerivePath(f"m/44'/{test_coin if testnet else main_coin}'/0'/0")


def _address(chain: str, testnet: bool, index: int) -> str:
    from bip_utils import (
        BchP2PKHAddrEncoder,
        EthAddrEncoder,
        P2PKHAddrEncoder,
        P2WPKHAddrEncoder,
    )

    node = _account(chain, testnet).ChildKey(index).PublicKey()
    sec = node.RawCompressed().ToBytes()
    kind = TATUM[chain][2]
    if kind == "p2wpkh":
        return str(P2WPKHAddrEncoder.EncodeKey(sec, hrp="tb" if testnet else "bc", wit_ver=0))
    if kind in ("ltc", "doge"):
        version = {("ltc", False): 0x30, ("ltc", True): 0x6F, ("doge", False): 0x1E, ("doge", True): 0x71}
        return str(P2PKHAddrEncoder.EncodeKey(sec, net_ver=bytes([version[kind, testnet]])))
    if kind == "bch":
        hrp = "bchtest" if testnet else "bitcoincash"
        return str(BchP2PKHAddrEncoder.EncodeKey(sec, hrp=hrp, net_ver=b"\x00"))
    eth = str(EthAddrEncoder.EncodeKey(node.RawUncompressed().ToBytes())).lower()
    return "xdc" + eth[2:] if kind == "xdc" else eth


def test_the_table_covers_every_chain_we_sign_for() -> None:
    assert set(TATUM) == set(supported_chains())


@pytest.mark.parametrize("testnet", [False, True], ids=["mainnet", "testnet"])
@pytest.mark.parametrize("chain", list(TATUM))
def test_tatum_entries_check_out_and_give_tatums_addresses(chain: str, testnet: bool) -> None:
    stored = str(_account(chain, testnet).PublicKey().ToExtended())
    fields = {"mnemonic": LEGAL, "xpub": stored, "chain": chain, "testnet": testnet}
    finding = check_entry(Entry("5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d", fields))
    assert finding.status is Status.SIGNABLE, finding.problems
    assert finding.xpub == stored
    impl = get_chain(chain)
    for index in (0, 1, 25):
        got = impl.address_from_xpub(stored, index, testnet=testnet)
        want = _address(chain, testnet, index)
        assert (got.lower() if TATUM[chain][2] in ("evm", "xdc") else got) == want


@pytest.mark.parametrize("chain", ["BTC", "ETH", "LTC"])
def test_an_xpub_of_another_mnemonic_or_network_does_not_check_out(chain: str) -> None:
    other_net = str(_account(chain, True).PublicKey().ToExtended())
    fields = {"mnemonic": LEGAL, "xpub": other_net, "chain": chain, "testnet": False}
    finding = check_entry(Entry("5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d", fields))
    assert finding.status is Status.MISMATCH and finding.xpub is None


def test_many_mnemonics_are_checked_in_parallel_with_the_same_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.tatum import migrate

    monkeypatch.setattr(migrate, "PARALLEL_FROM", 4)
    good = str(_account("BTC", False).PublicKey().ToExtended())
    entries = [
        Entry(
            f"id-{i}",
            {"mnemonic": LEGAL, "xpub": good if i % 3 else good[:-1] + "x", "chain": "BTC", "testnet": False},
        )
        for i in range(9)
    ]
    done: list[int] = []
    parallel = migrate.plan_import(entries, jobs=2, progress=done.append).findings
    serial = migrate.plan_import(entries, jobs=1).findings
    assert [(f.entry.signature_id, f.status, f.xpub, f.problems) for f in parallel] == [
        (f.entry.signature_id, f.status, f.xpub, f.problems) for f in serial
    ]
    assert sum(done) == 9
    assert [f.status for f in parallel].count(Status.MISMATCH) == 3
