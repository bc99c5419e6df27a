"""``import tatum`` / ``export tatum`` through the real CLI, against files and values made without our code.

Tatum files are written two ways that share nothing with ``agent.tatum``: by ``openssl enc
-aes-256-cbc -md md5 -a -A`` (what crypto-js passphrase mode is), and by :func:`write_tatum` below
(EVP_BytesToKey with :mod:`hashlib`, AES from pycryptodome). Expected xpubs and addresses come from
bip-utils (the agent derives with embit) and from published BIP-39/BIP-44 vectors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, init_args

ABANDON = "abandon " * 11 + "about"
#: Published vectors for "abandon ... about" (BIP-44 account 0, external chain, index 0).
BTC_P2PKH_0 = "1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA"
ETH_0 = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
OPENSSL_ENC = ("openssl", "enc", "-aes-256-cbc", "-md", "md5", "-a", "-A")
ZOO = "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong"
LEGAL = "legal winner thank year wave sausage worth useful legal winner thank yellow"
ETH_KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
BTC_TESTNET_WIF = "cMahea7zqjxrtgAbB7LSGbcQUr1uX1ojuat9jZodMN87JcbXMTcA"  # key 1 (private key = 1)

ID_BTC = "0b1d5e3c-7b43-4c4e-9f3a-1f2f3e4d5c6b"
ID_ETH = "5f0c8a44-3c1e-4d87-a2ad-61b34c8c1f15"
ID_BTC_T = "7a6e1c7b-0d35-45c2-8f3c-55b8cf4a2e10"
ID_LTC_T = "9c1f4b2a-8e3d-4a61-b7c9-0e5d6f7a8b9c"
ID_ETH_PK = "c2d8f9e0-1a2b-4c3d-8e4f-5a6b7c8d9e0f"
ID_BTC_PK = "d3e9fa01-2b3c-4d4e-9f50-6b7c8d9e0f1a"
ID_XRP = "e4fa0b12-3c4d-4e5f-a061-7c8d9e0f1a2b"
ID_SOL = "f50b1c23-4d5e-4f60-b172-8d9e0f1a2b3c"


# --- independent derivations (bip-utils, not embit) ---------------------------------------------


def _node(mnemonic: str, path: str, testnet: bool = False) -> Any:
    from bip_utils import Bip32KeyNetVersions, Bip32Slip10Secp256k1, Bip39SeedGenerator

    seed = Bip39SeedGenerator(mnemonic).Generate()
    versions = Bip32KeyNetVersions(bytes.fromhex("043587cf"), bytes.fromhex("04358394")) if testnet else None
    root = Bip32Slip10Secp256k1.FromSeed(seed, versions) if versions else Bip32Slip10Secp256k1.FromSeed(seed)
    return root.DerivePath(path)


def xpub(mnemonic: str, path: str, testnet: bool = False) -> str:
    return str(_node(mnemonic, path, testnet).PublicKey().ToExtended())


def btc_address(mnemonic: str, index: int, testnet: bool) -> str:
    from bip_utils import P2WPKHAddrEncoder

    path = "m/44'/1'/0'/0" if testnet else "m/44'/0'/0'/0"
    pub = _node(mnemonic, f"{path}/{index}").PublicKey().RawCompressed().ToBytes()
    return str(P2WPKHAddrEncoder.EncodeKey(pub, hrp="tb" if testnet else "bc", wit_ver=0))


def eth_address(mnemonic: str, index: int) -> str:
    from bip_utils import EthAddrEncoder

    pub = _node(mnemonic, f"m/44'/60'/0'/0/{index}").PublicKey().RawUncompressed().ToBytes()
    return str(EthAddrEncoder.EncodeKey(pub))


def ltc_testnet_address(mnemonic: str, index: int) -> str:
    from bip_utils import P2PKHAddrEncoder

    pub = _node(mnemonic, f"m/44'/1'/0'/0/{index}").PublicKey().RawCompressed().ToBytes()
    return str(P2PKHAddrEncoder.EncodeKey(pub, net_ver=b"\x6f"))


# --- two Tatum writers that are not ours ----------------------------------------------------------


def openssl_encrypt(doc: Any, password: str, out: Path) -> None:
    plain = out.with_suffix(".json")
    plain.write_text(json.dumps(doc, separators=(",", ":")))
    proc = subprocess.run(
        [*OPENSSL_ENC, "-salt", "-pass", "stdin", "-in", str(plain), "-out", str(out)],
        input=password.encode() + b"\n",
        capture_output=True,
        check=False,
    )
    plain.unlink()
    assert proc.returncode == 0, proc.stderr


def openssl_decrypt(path: Path, password: str) -> Any:
    proc = subprocess.run(
        [
            "openssl",
            "enc",
            "-d",
            "-aes-256-cbc",
            "-md",
            "md5",
            "-a",
            "-A",
            "-pass",
            f"pass:{password}",
            "-in",
            str(path),
        ],
        capture_output=True,
        check=True,
    )
    return json.loads(proc.stdout)


def write_tatum(doc: Any, password: str, out: Path) -> None:
    """crypto-js ``AES.encrypt(JSON.stringify(doc), password).toString()``, written from its spec."""
    from Crypto.Cipher import AES

    salt = os.urandom(8)
    material, block = b"", b""
    while len(material) < 48:
        block = hashlib.md5(block + password.encode() + salt).digest()
        material += block
    plain = json.dumps(doc, separators=(",", ":")).encode()
    pad = 16 - len(plain) % 16
    ct = AES.new(material[:32], AES.MODE_CBC, material[32:48]).encrypt(plain + bytes([pad]) * pad)
    out.write_bytes(base64.b64encode(b"Salted__" + salt + ct))


def tatum_doc() -> dict[str, Any]:
    return {
        ID_BTC: {"mnemonic": ABANDON, "xpub": xpub(ABANDON, "m/44'/0'/0'/0"), "chain": "BTC", "testnet": False},
        ID_ETH: {"xpub": xpub(ABANDON, "m/44'/60'/0'/0"), "mnemonic": ABANDON, "chain": "ETH", "testnet": False},
        ID_BTC_T: {
            "mnemonic": LEGAL,
            "xpub": xpub(LEGAL, "m/44'/1'/0'/0", testnet=True),
            "chain": "BTC",
            "testnet": True,
        },
        ID_LTC_T: {
            "mnemonic": LEGAL,
            "xpub": _ltc_ttub(LEGAL),
            "chain": "LTC",
            "testnet": True,
        },
        ID_ETH_PK: {"privateKey": ETH_KEY, "chain": "ETH", "testnet": True},
        ID_BTC_PK: {"privateKey": BTC_TESTNET_WIF, "chain": "BTC", "testnet": True},
        ID_XRP: {
            "address": "rPEPPER7kfTD9w2To4CQk6UCfuHM9c6GDY",
            "secret": "snoPBrXtMeMyMHUVTgbuqAfg1SUTb",
            "chain": "XRP",
            "testnet": False,
        },
        ID_SOL: {
            "mnemonic": ZOO,
            "address": "GjJyeC1r2RgkuoCWMyPYkCWSGSGLcz266EaAkLA27AhL",
            "privateKey": "3yZe7d" + "1" * 80,
            "chain": "SOL",
            "testnet": True,
        },
    }


def _ltc_ttub(mnemonic: str) -> str:
    """Litecoin testnet's ``ttub`` (version 0x0436f6e1), as Tatum stores it."""
    from bip_utils import Bip32KeyNetVersions, Bip32Slip10Secp256k1, Bip39SeedGenerator

    versions = Bip32KeyNetVersions(bytes.fromhex("0436f6e1"), bytes.fromhex("0436ef7d"))
    root = Bip32Slip10Secp256k1.FromSeed(Bip39SeedGenerator(mnemonic).Generate(), versions)
    return str(root.DerivePath("m/44'/1'/0'/0").PublicKey().ToExtended())


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def vault(cli: Cli) -> Cli:
    proc = cli(*init_args(("alice", "bob"), 2), "--json")
    assert proc.returncode == 0, proc.stderr
    return cli


def snapshot(home: Path) -> dict[str, bytes]:
    """Every file of the data directory (wallet.dat, pin, audit log), by path, byte for byte."""
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


# --- the tests ------------------------------------------------------------------------------------


def test_the_independent_derivations_meet_the_published_vectors() -> None:
    from bip_utils import P2PKHAddrEncoder

    pub = _node(ABANDON, "m/44'/0'/0'/0/0").PublicKey().RawCompressed().ToBytes()
    assert P2PKHAddrEncoder.EncodeKey(pub, net_ver=b"\x00") == BTC_P2PKH_0
    assert eth_address(ABANDON, 0) == ETH_0


@pytest.mark.parametrize("writer", [openssl_encrypt, write_tatum], ids=["openssl", "own-writer"])
def test_import_keeps_ids_fields_and_derives_tatums_addresses(vault: Cli, tmp_path: Path, writer: Any) -> None:
    doc = tatum_doc()
    path = tmp_path / "wallet.dat"
    writer(doc, "correct horse", path)
    out = vault.json("import", "tatum", str(path), input=b"correct horse\n")
    assert out["imported"] == len(doc)
    by_id = {w["signatureId"]: w for w in out["wallets"]}
    assert list(by_id) == list(doc)  # every id, in the file's order, unchanged
    assert {i: w["status"] for i, w in by_id.items()} == {
        ID_BTC: "signable",
        ID_ETH: "signable",
        ID_BTC_T: "signable",
        ID_LTC_T: "signable",
        ID_ETH_PK: "signable",
        ID_BTC_PK: "signable",
        ID_XRP: "no signer yet",
        ID_SOL: "no signer yet",
    }
    rows = {w["signatureId"]: w for w in vault.json("wallet", "list")["wallets"]}
    assert set(rows) == set(doc)
    assert rows[ID_BTC]["xpub"] == doc[ID_BTC]["xpub"]
    assert rows[ID_XRP]["address"] == doc[ID_XRP]["address"]

    def address(sig: str, index: int, *extra: str) -> str:
        return str(vault.json("getaddress", sig, str(index), *extra)["address"])

    for index in (0, 7):
        assert address(ID_BTC, index) == btc_address(ABANDON, index, testnet=False)  # bech32, SDK >= 1.34
        assert address(ID_BTC_T, index) == btc_address(LEGAL, index, testnet=True)
        assert address(ID_ETH, index).lower() == eth_address(ABANDON, index).lower()
        assert address(ID_LTC_T, index) == ltc_testnet_address(LEGAL, index)
    assert address(ID_BTC, 0, "--legacy") == BTC_P2PKH_0  # SDK <= 1.33
    assert address(ID_ETH, 0).lower() == ETH_0.lower()
    from eth_account import Account

    assert address(ID_ETH_PK, 0).lower() == Account.from_key(ETH_KEY).address.lower()

    # Round trip: our export decrypts with openssl to the very entries we read, unknown fields too.
    exported = tmp_path / "back.dat"
    assert vault.json("export", "tatum", str(exported), input=b"new password\n")["exported"] == len(doc)
    assert exported.stat().st_mode & 0o777 == 0o600
    assert openssl_decrypt(exported, "new password") == doc


def test_a_revealed_key_is_the_one_tatum_derives_and_needs_the_quorum(vault: Cli, tmp_path: Path) -> None:
    from bip_utils import WifEncoder

    path = tmp_path / "wallet.dat"
    write_tatum({ID_BTC_T: tatum_doc()[ID_BTC_T]}, "pw", path)
    vault.json("import", "tatum", str(path), input=b"pw\n")
    before = snapshot(vault.home)
    denied = vault("getprivatekey", ID_BTC_T, "3", touch="deny")
    assert denied.returncode == 3 and "privateKey" not in denied.stdout
    assert snapshot(vault.home)["wallet.dat"] == before["wallet.dat"]
    got = vault("getprivatekey", ID_BTC_T, "3")
    assert got.returncode == 0, got.stderr
    assert "ALERT" in got.stderr
    key = _node(LEGAL, "m/44'/1'/0'/0/3").PrivateKey().Raw().ToBytes()
    assert json.loads(got.stdout) == {"privateKey": WifEncoder.Encode(key, net_ver=b"\xef")}
    rows = vault.json("audit", "show", "--kind", "unlock")["rows"]
    assert rows[-1]["payload"]["purpose"] == "getprivatekey 3"
    assert rows[-1]["payload"]["wallets"] == [ID_BTC_T]


def test_legacy_entries_need_a_chain(vault: Cli, tmp_path: Path) -> None:
    path = tmp_path / "wallet.dat"
    write_tatum({ID_BTC: {"mnemonic": ABANDON, "xpub": xpub(ABANDON, "m/44'/0'/0'/0")}}, "pw", path)
    before = snapshot(vault.home)
    refused = vault("import", "tatum", str(path), input=b"pw\n")
    assert refused.returncode == 2 and "--legacy-chain" in refused.stderr
    assert snapshot(vault.home) == before
    out = vault.json(
        "import", "tatum", str(path), "--legacy-chain", "BTC", "--legacy-mainnet", "--shred", input=b"pw\n"
    )
    assert out["wallets"][0]["status"] == "signable"
    assert not path.exists()  # --shred: overwritten, then unlinked
    assert vault.json("getaddress", ID_BTC, "0")["address"] == btc_address(ABANDON, 0, testnet=False)


def test_a_wrong_xpub_is_refused_or_kept_without_addresses(vault: Cli, tmp_path: Path) -> None:
    path = tmp_path / "wallet.dat"
    wrong = {ID_BTC: {"mnemonic": ABANDON, "xpub": xpub(LEGAL, "m/44'/0'/0'/0"), "chain": "BTC", "testnet": False}}
    write_tatum(wrong, "pw", path)
    before = snapshot(vault.home)
    refused = vault("import", "tatum", str(path), "--json", input=b"pw\n")
    assert refused.returncode == 2, refused.stderr
    assert "xpub" in json.loads(refused.stdout)["error"]["message"]
    assert snapshot(vault.home) == before
    out = vault.json("import", "tatum", str(path), "--keep-mismatched", input=b"pw\n")
    assert out["wallets"][0]["status"] == "kept sealed"
    assert "xpub" not in vault.json("wallet", "list")["wallets"][0]
    # Tatum's report only checks types; ours re-derives the xpub from the sealed mnemonic.
    checked = vault.json("report", "wallets")["wallets"][ID_BTC]
    assert checked["checks"] == "mismatch" and any("xpub" in w for w in checked["warnings"])
    back = tmp_path / "back.dat"
    vault.json("export", "tatum", str(back), input=b"pw2\n")
    assert openssl_decrypt(back, "pw2") == wrong  # kept verbatim


def _good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.dat"
    write_tatum({ID_ETH_PK: tatum_doc()[ID_ETH_PK]}, "pw", path)
    return path


BAD_FILES = {
    "zero-length": lambda tmp: b"",
    "white space": lambda tmp: b" \n\n",
    "not base64": lambda tmp: b'{"not": "a tatum file"}',
    "no Salted__": lambda tmp: base64.b64encode(b"x" * 48),
    "truncated": lambda tmp: _good_file(tmp).read_bytes()[:-10],
    "holds no wallets": lambda tmp: _encrypted({}, tmp),
    "not JSON inside": lambda tmp: _encrypted("plain text", tmp),
}


def _encrypted(doc: Any, tmp: Path) -> bytes:
    out = tmp / "made.dat"
    if isinstance(doc, str):
        subprocess.run(
            ["openssl", "enc", "-aes-256-cbc", "-md", "md5", "-a", "-A", "-pass", "pass:pw", "-out", str(out)],
            input=doc.encode(),
            check=True,
            capture_output=True,
        )
    else:
        write_tatum(doc, "pw", out)
    return out.read_bytes()


@pytest.mark.parametrize("case", [*BAD_FILES, "wrong password", "missing file", "imported twice"])
def test_bad_input_changes_nothing_and_exits_2(vault: Cli, tmp_path: Path, case: str) -> None:
    path = tmp_path / "wallet.dat"
    password = b"pw\n"
    if case in BAD_FILES:
        path.write_bytes(BAD_FILES[case](tmp_path))
    elif case == "wrong password":
        path = _good_file(tmp_path)
        password = b"not the password\n"
    elif case == "imported twice":
        path = _good_file(tmp_path)
        vault.json("import", "tatum", str(path), input=password)
    before = snapshot(vault.home)
    proc = vault("import", "tatum", str(path), "--json", input=password)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kms-agent: error: ")]
    assert len(errors) == 1, proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "usage"
    assert snapshot(vault.home) == before
    if case == "wrong password":
        assert "wrong password" in errors[0]


def test_tatum_commands_keep_tatums_shapes(vault: Cli) -> None:
    made = vault("generatemanagedprivatekeybatch", "ETH", "3", "--testnet")
    assert made.returncode == 0, made.stderr
    lines = [json.loads(line) for line in made.stdout.splitlines()]
    assert len(lines) == 3 and all(set(x) == {"signatureId", "address"} for x in lines)
    assert vault.json("getaddress", lines[0]["signatureId"], "0")["address"] == lines[0]["address"]
    stored = vault("storemanagedwallet", "BTC", "--testnet", input=LEGAL.encode())
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout) == {
        "signatureId": json.loads(stored.stdout)["signatureId"],
        "xpub": xpub(LEGAL, "m/44'/1'/0'/0", testnet=True),
    }
    key = vault("storemanagedprivatekey", "ETH", "--testnet", input=ETH_KEY.encode())
    assert set(json.loads(key.stdout)) == {"signatureId"}
    fresh = json.loads(vault("generatewallet", "BTC").stdout)
    assert set(fresh) == {"mnemonic", "xpub"} and xpub(fresh["mnemonic"], "m/44'/0'/0'/0") == fresh["xpub"]
    report = vault.json("report", "wallets", f"{lines[0]['signatureId']},no-such-id")
    assert report["wallets"][lines[0]["signatureId"]]["type"] == "PRIVATE_KEY"
    assert report["warnings"] == ["No wallet found for signatureId: no-such-id"]
    assert vault.json("report", f"{lines[0]['signatureId']},no-such-id") == report  # Tatum's own spelling
    assert vault.json("removewallet", lines[1]["signatureId"]) == {"removed": lines[1]["signatureId"]}
    assert vault.json("checkconfig")["walletExists"] is True
