"""The CLI as a user or script runs it: separate processes, JSON on stdout, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import Cli, init_args

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


def _files(home: Path) -> dict[str, bytes]:
    """wallet.dat, the agent's pin, the audit log and the queue: what bad input must leave untouched.

    (Simulator state and the operational events log are meant to change: a token counts PIN tries,
    and the events log records the failure for the anomalies report.)"""
    return {
        str(p.relative_to(home)): p.read_bytes()
        for p in sorted(home.rglob("*"))
        if p.is_file() and "sim" not in p.relative_to(home).parts and p.name != "events.jsonl"
    }


@pytest.fixture
def initialised(cli: Cli) -> dict:  # type: ignore[type-arg]
    return cli.json(*init_args())


def test_init_reports_operators_fingerprint_and_test_recovered_words(cli: Cli, initialised: dict) -> None:  # type: ignore[type-arg]
    assert initialised["quorum"] == 2
    assert [o["name"] for o in initialised["operators"]] == ["alice", "bob", "carol"]
    assert initialised["recovery"]["test_recovered"] is True
    assert len(initialised["recovery"]["words"]) == 3
    assert all(len(w.split()) == 33 for w in initialised["recovery"]["words"])
    assert initialised["simulated"] is True
    status = cli.json("status")
    assert status["fingerprint"] == initialised["fingerprint"]
    assert status["generation"] == 1


def test_recovery_out_writes_one_private_file_per_share(cli: Cli, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "shares"
    result = cli.json(*init_args(), "--recovery-out", str(out))
    assert "words" not in result["recovery"]
    assert out.stat().st_mode & 0o777 == 0o700
    files = sorted(out.iterdir())
    assert [str(f) for f in files] == sorted(result["recovery"]["files"]) and len(files) == 3
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600
        assert f.read_text().count("recovery share") == 1  # never a quorum of shares in one file
    # Each file alone is one share; two of them (two officers) open the vault, and that is audited.
    shares = "\n".join(f.read_text().splitlines()[1] for f in files[:2]).encode()
    proc = cli("recovery", "verify", "--json", input=shares)
    assert proc.returncode == 0, proc.stderr
    assert "ALERT" in proc.stderr
    kinds = [r["kind"] for r in cli.json("audit", "show")["rows"]]
    assert kinds[-2:] == ["recovery", "alert"]


def test_every_command_warns_about_simulated_tokens(cli: Cli, initialised: dict) -> None:  # type: ignore[type-arg]
    for args in (["status"], ["operator", "list"], ["vault", "verify"], ["token", "list"]):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert "SIMULATED tokens" in proc.stderr


def test_store_and_address_match_tatum_style_json(cli: Cli, initialised: dict) -> None:  # type: ignore[type-arg]
    cli.env.pop("KMS_AGENT_ALLOW_SIMULATED_MAINNET")
    refused = cli("wallet", "store", "BTC", input=MNEMONIC.encode())  # a simulated vault holds no mainnet value
    assert refused.returncode == 2 and "SIMULATED tokens: refusing a mainnet wallet" in refused.stderr
    assert cli.json("wallet", "list")["wallets"] == []
    cli.env["KMS_AGENT_ALLOW_SIMULATED_MAINNET"] = "1"  # ...unless told (README, "Scripting contract")
    stored = cli.json("wallet", "store", "BTC", input=MNEMONIC.encode())
    assert set(stored) == {"signatureId", "xpub"}
    # Tatum derives BTC at m/44'/0'/0'/0 with P2WPKH addresses: check against bip-utils directly.
    from bip_utils import Bip32Slip10Secp256k1, Bip39SeedGenerator, P2WPKHAddrEncoder

    node = Bip32Slip10Secp256k1.FromSeed(Bip39SeedGenerator(MNEMONIC).Generate()).DerivePath("m/44'/0'/0'/0")
    assert stored["xpub"] == node.PublicKey().ToExtended()
    for index in (0, 5):
        expected = P2WPKHAddrEncoder.EncodeKey(node.ChildKey(index).PublicKey().RawCompressed().ToBytes(), hrp="bc")
        assert cli.json("wallet", "address", stored["signatureId"], str(index))["address"] == expected
    listed = cli.json("wallet", "list")
    assert [w["signatureId"] for w in listed["wallets"]] == [stored["signatureId"]]
    assert MNEMONIC not in json.dumps(listed)


def test_store_private_key_eth(cli: Cli, initialised: dict) -> None:  # type: ignore[type-arg]
    key = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
    stored = cli.json("wallet", "store", "ETH", input=key.encode())
    assert set(stored) == {"signatureId"}  # as Tatum's storemanagedprivatekey prints
    proc = cli("wallet", "address", stored["signatureId"], "0", "--json")
    assert json.loads(proc.stdout)["address"] == "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
    assert key not in json.dumps(cli.json("wallet", "list"))


def test_generate_prints_no_secret(cli: Cli, initialised: dict, home: Path) -> None:  # type: ignore[type-arg]
    proc = cli("wallet", "generate", "ETH", "--testnet", "--json")
    assert proc.returncode == 0, proc.stderr
    [made] = json.loads(proc.stdout)["wallets"]  # one shape for one wallet or many
    assert set(made) == {"signatureId", "xpub"}
    assert made["xpub"].startswith(("tpub", "xpub"))
    addr = cli.json("wallet", "address", made["signatureId"], "3")
    assert addr["address"].startswith("0x") and len(addr["address"]) == 42


def test_unlock_reports_who_touched(cli: Cli, initialised: dict) -> None:  # type: ignore[type-arg]
    result = cli.json("unlock", "--operator", "bob", "--operator", "carol")
    assert [t["operator"] for t in result["touched"]] == ["bob", "carol"]
    assert all(t["user_verified"] for t in result["touched"])


def test_one_operator_cannot_unlock(cli: Cli, initialised: dict, home: Path) -> None:  # type: ignore[type-arg]
    before = _files(home)
    proc = cli("unlock", "--operator", "alice")
    assert proc.returncode == 5
    assert "kms-agent: error: 2 distinct operators must touch a token; got 1 (alice)" in proc.stderr
    assert _files(home) == before


@pytest.mark.parametrize(
    ("touch", "code", "message"),
    [
        ("deny", 3, "the touch on sim:alice was refused"),
        ("timeout", 3, "no touch on sim:alice in time"),
        ("remove", 3, "sim:alice was removed"),
    ],
)
def test_touch_failures_exit_cleanly(
    cli: Cli,
    initialised: dict,  # type: ignore[type-arg]
    home: Path,
    touch: str,
    code: int,
    message: str,
) -> None:
    before = _files(home)
    proc = cli("wallet", "store", "BTC", input=MNEMONIC.encode(), touch=touch)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _files(home) == before


def test_wrong_pin_from_stdin_shows_retries(cli: Cli, initialised: dict, home: Path) -> None:  # type: ignore[type-arg]
    before = _files(home)
    proc = cli("unlock", "--operator", "alice", "--operator", "bob", "--pin-stdin", input=b"654321\n123456\n")
    assert proc.returncode == 4
    assert "wrong PIN for sim:alice: 7 tries left" in proc.stderr
    assert _files(home) == before
    events = [json.loads(line) for line in (home / "state" / "events.jsonl").read_text().splitlines()]
    assert events[-1]["error"] == "PinInvalid" and events[-1]["command"] == "unlock"
    assert "654321" not in (home / "state" / "events.jsonl").read_text()
    ok = cli("unlock", "--operator", "alice", "--operator", "bob", "--pin-stdin", "--json", input=b"123456\n123456\n")
    assert ok.returncode == 0, ok.stderr


def test_no_terminal_and_no_auto_touch_means_no_pin(cli: Cli, initialised: dict) -> None:  # type: ignore[type-arg]
    proc = cli("unlock", touch=None)
    assert proc.returncode == 4
    assert "no terminal" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["wallet", "generate", "NOPE"],
        ["wallet", "address", "no-such-id", "0"],
        ["init", "--operator", "alice", "--quorum", "1"],
        ["token", "enrol", "usb:x", "--owner", "alice"],
    ],
)
def test_bad_input_is_a_usage_error(cli: Cli, initialised: dict, home: Path, args: list[str]) -> None:  # type: ignore[type-arg]
    before = _files(home)
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "kms-agent: error:" in proc.stderr or "Error" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _files(home) == before


def test_bad_mnemonic_is_refused_without_echoing_it(cli: Cli, initialised: dict) -> None:  # type: ignore[type-arg]
    bad = "abandon " * 11 + "zoo"
    proc = cli("wallet", "store", "BTC", input=bad.encode())
    assert proc.returncode == 2
    assert "not a valid BIP-39" in proc.stderr
    assert "zoo" not in proc.stderr


def test_vault_verify_detects_tampering_and_rollback(cli: Cli, initialised: dict, home: Path) -> None:  # type: ignore[type-arg]
    assert cli("vault", "verify").returncode == 0
    vault = home / "wallet.dat"
    old = vault.read_bytes()
    cli.json("wallet", "store", "BTC", input=MNEMONIC.encode())
    new = vault.read_bytes()
    vault.write_bytes(old)
    proc = cli("vault", "verify")
    assert proc.returncode == 6 and "rolled-back" in proc.stderr
    tampered = bytearray(new)
    tampered[-20] ^= 1  # inside the encrypted body: only the signature can tell
    vault.write_bytes(bytes(tampered))
    proc = cli("vault", "verify")
    assert proc.returncode == 6 and "integrity" in proc.stderr
    vault.write_bytes(new)
    os.chmod(vault, 0o644)
    proc = cli("vault", "verify")
    assert proc.returncode == 6 and "accessible by other users" in proc.stderr
    os.chmod(vault, 0o600)
    assert cli("vault", "verify").returncode == 0


def test_restored_vault_needs_explicit_trust(cli: Cli, initialised: dict, home: Path) -> None:  # type: ignore[type-arg]
    (home / "state" / "vault-pin.json").unlink()
    proc = cli("vault", "verify")
    assert proc.returncode == 6 and "has not pinned" in proc.stderr
    assert cli("vault", "trust", "0000:1111").returncode == 6
    assert cli("vault", "trust", initialised["fingerprint"]).returncode == 0
    assert cli("vault", "verify").returncode == 0


def test_token_enrol_and_remove(cli: Cli, initialised: dict) -> None:  # type: ignore[type-arg]
    enrolled = cli.json("token", "enrol", "sim:alice2", "--owner", "alice")
    assert enrolled["operator"] == "alice" and len(enrolled["approved_by"]) == 2
    labels = [t["label"] for t in cli.json("token", "list")["tokens"]]
    assert labels == ["sim:alice", "sim:bob", "sim:carol", "sim:alice2"]
    ops = cli.json("operator", "list")["operators"]
    assert ops[0]["tokens"] == ["sim:alice", "sim:alice2"]
    assert cli.json("token", "remove", "sim:alice")["removed"] == "sim:alice"
    last = cli("token", "remove", "sim:bob")
    assert last.returncode == 2 and "last token of operator bob" in last.stderr


def test_missing_vault_exit_code(cli: Cli) -> None:
    proc = cli("vault", "verify")
    assert proc.returncode == 7
    assert "kms-agent init" in proc.stderr


def test_demo_runs_end_to_end(cli: Cli, tmp_path: Path) -> None:
    result = cli.json("demo", "--dir", str(tmp_path / "demo"))
    assert result["ok"] is True
    titles = [s["step"] for s in result["steps"]]
    assert any("alone: refused" in t for t in titles)
    refused = next(s for s in result["steps"] if "alone" in s["step"])
    assert refused["exit_code"] == 5


def test_recovery_words_verify_and_replace_lost_tokens(cli: Cli, initialised: dict, home: Path) -> None:  # type: ignore[type-arg]
    words = initialised["recovery"]["words"]
    assert cli.json("recovery", "verify", input="\n".join(words[:2]).encode())["ok"] is True
    bad = cli("recovery", "verify", input=words[0].encode())
    assert bad.returncode == 5  # one share short of the threshold
    # Every token lost: the recovery officers enrol replacements, and the vault opens again.
    for name in ("alice", "bob", "carol"):
        cli("sim", "unplug", name)
    assert cli("unlock").returncode == 5
    for name in ("alice", "bob"):
        out = cli.json(
            "recovery", "enrol-token", f"sim:{name}-new", "--owner", name, input="\n".join(words[1:]).encode()
        )
        assert out["via"] == "recovery"
    result = cli.json("unlock")
    assert {t["token"] for t in result["touched"]} == {"sim:alice-new", "sim:bob-new"}


def test_mixed_piv_and_fido2_operators(cli: Cli) -> None:
    assert cli.json("sim", "create", "bob", "--kind", "piv")["kind"] == "piv"
    init = cli.json("init", "--operator", "alice=sim:alice", "--operator", "bob=sim:bob", "--quorum", "2")
    assert init["quorum"] == 2
    kinds = {t["label"]: t["kind"] for t in cli.json("token", "list")["tokens"]}
    assert kinds == {"sim:alice": "fido2-hmac", "sim:bob": "piv"}
    touched = cli.json("unlock")["touched"]
    assert [(t["operator"], t["token"]) for t in touched] == [("alice", "sim:alice"), ("bob", "sim:bob")]
    added = cli.json("token", "enrol", "sim:alice-piv", "--kind", "piv", "--owner", "alice")
    assert added["kind"] == "piv"


def test_doctor_reports_the_vault(cli: Cli, initialised: dict) -> None:  # type: ignore[type-arg]
    proc = cli("doctor", "--json")
    report = json.loads(proc.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["vault"]["ok"] is True and "SIMULATED" in checks["vault"]["detail"]
    assert {"hidraw access", "FIDO2 tokens", "pcscd"} <= set(checks)
    assert proc.returncode == (0 if report["ok"] else 1)
