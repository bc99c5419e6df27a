"""``kms-agent backup verify`` (token-free, then a quorum of touches) and ``kms-agent restore``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from agent.audit import AuditLog
from tests.backup.test_backup import copies, guarded, sha256
from tests.conftest import REPO, Cli, init_args


@pytest.fixture
def vault(cli: Cli) -> dict:  # type: ignore[type-arg]
    return cli.json(*init_args())


def audit_rows(home: Path) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    return [(row.kind, row.payload) for row in AuditLog(home / "state").rows()]


def test_backup_verify_proves_the_copy_unlocks_and_is_audited(cli: Cli, vault: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    made = cli.json("backup", str(tmp_path / "b"))
    out = cli.json("backup", "verify", made["path"], "--operator", "alice", "--operator", "carol")
    assert out["ok"] is True and out["generation"] == 1 and out["sha256"] == made["sha256"]
    assert [t["operator"] for t in out["unlocked"]["touched"]] == ["alice", "carol"]
    assert out["checks"][-1] == "unlock"
    kind, payload = audit_rows(cli.home)[-1]
    assert kind == "unlock" and payload["purpose"] == "backup verify"
    assert payload["backup"] == made["path"] and len(payload["touches"]) == 2
    # Token-free only: no touch, no audit row.
    n = len(audit_rows(cli.home))
    quick = cli.json("backup", "verify", made["path"], "--no-touch")
    assert "unlocked" not in quick and len(audit_rows(cli.home)) == n
    # Without a path: the newest copy in the configured directory.
    cli.json("wallet", "generate", "ETH", "--testnet")  # backs up generation 1 to DATA_DIR/backups
    assert cli.json("backup", "verify", "--no-touch")["path"].startswith(str(cli.home / "backups"))


def test_backup_verify_refuses_a_tampered_copy(cli: Cli, vault: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    copy = Path(cli.json("backup", str(tmp_path / "b"))["path"])
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1
    copy.write_bytes(bytes(data))
    proc = cli("backup", "verify", str(copy), "--json")
    assert proc.returncode == 6, proc.stderr
    assert "does not match its manifest" in proc.stderr
    # Even with a manifest edited to match, the signature or the index refuses it.
    manifest = Path(f"{copy}.json")
    meta = json.loads(manifest.read_text())
    meta["sha256"] = sha256(copy)
    manifest.write_text(json.dumps(meta))
    proc = cli("backup", "verify", str(copy))
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr


def test_restore_refuses_an_older_generation_and_names_what_it_would_revive(cli: Cli, vault: dict) -> None:  # type: ignore[type-arg]
    quorum = ("--operator", "alice", "--operator", "bob")
    cli.json("token", "enrol", "sim:alice2", "--owner", "alice", *quorum)  # generation 2
    cli.json("policy", "set", str(REPO / "docs" / "examples" / "policy.json"), *quorum)  # 3
    cli.json("wallet", "generate", "ETH", "--testnet", *quorum)  # 4
    backups = {json.loads(Path(f"{c}.json").read_text())["generation"]: c for c in copies(cli.home / "backups")}
    old = backups[2]  # the initial policy, no wallet
    assert cli.json("vault", "verify")["generation"] == 4
    before = guarded(cli.home)

    proc = cli("restore", str(old), "--json")
    assert proc.returncode == 6, proc.stderr
    message = json.loads(proc.stdout)["error"]["message"]
    assert "generation 2, older than the pinned generation 4" in message
    assert "an older policy" in message
    assert "0 wallets instead of 1 (wallets added since are lost)" in message
    assert "--allow-rollback" in proc.stderr
    assert guarded(cli.home) == before

    out = cli.json("restore", str(old), "--allow-rollback")
    assert out["rollback"] is True and out["generation"] == 2 and out["previous_generation"] == 4
    assert out["revived"]["wallets"] == {"backup": 0, "current": 1}
    assert (cli.home / "wallet.dat").read_bytes() == old.read_bytes()
    assert out["pin"]["generation"] == 2
    assert cli.json("vault", "verify")["generation"] == 2  # re-pinned: not refused as a rollback now
    rules = [p.get("rule") for kind, p in audit_rows(cli.home) if kind == "alert"]
    assert rules[-2:] == ["vault-restored", "vault-rollback"]
    assert cli.json("audit", "verify")["ok"] is True
    # The file it replaced was backed up first, so the rollback itself can be undone.
    assert Path(out["previous_file_backup"]).read_bytes() == before["wallet.dat"]
    assert cli.json("unlock", "--operator", "alice", "--operator", "bob")["unlocked"] is True


def test_restore_from_before_a_token_removal_needs_the_old_fingerprint(cli: Cli, vault: dict) -> None:  # type: ignore[type-arg]
    """Removing a token rotates the data key: a copy from before is signed by the old key."""
    quorum = ("--operator", "alice", "--operator", "bob")
    cli.json("token", "enrol", "sim:alice2", "--owner", "alice", *quorum)  # generation 2
    cli.json("token", "remove", "sim:alice2", *quorum)
    backups = {json.loads(Path(f"{c}.json").read_text())["generation"]: c for c in copies(cli.home / "backups")}
    old = backups[2]
    old_fp = json.loads(Path(f"{old}.json").read_text())["fingerprint"]
    before = guarded(cli.home)
    proc = cli("restore", str(old), "--allow-rollback")
    assert proc.returncode == 6, proc.stderr
    assert "token slots removed since: sim:alice2 (alice)" in proc.stderr
    assert f"--trust '{old_fp}'" in proc.stderr
    assert guarded(cli.home) == before
    out = cli.json("restore", str(old), "--allow-rollback", "--trust", old_fp)
    assert out["rollback"] is True and out["revived"]["token_slots_removed_since"] == ["sim:alice2 (alice)"]
    assert cli.json("vault", "verify")["fingerprint"] == old_fp


def test_restore_replaces_a_damaged_file_with_the_current_generation(cli: Cli, vault: dict) -> None:  # type: ignore[type-arg]
    made = cli.json("backup")
    wallet = cli.home / "wallet.dat"
    data = bytearray(wallet.read_bytes())
    data[-100] ^= 0xFF
    wallet.write_bytes(bytes(data))
    assert cli("vault", "verify").returncode == 6
    out = cli.json("restore", made["path"])
    assert out["rollback"] is False and out["generation"] == 1
    assert sha256(wallet) == made["sha256"]
    assert cli.json("vault", "verify")["generation"] == 1


def test_restore_on_a_fresh_machine_needs_the_fingerprint(cli: Cli, vault: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    cli.json("wallet", "generate", "ETH", "--testnet")
    made = cli.json("backup", str(tmp_path / "usb"))
    fresh = tmp_path / "new-machine"
    fresh.mkdir(mode=0o700)
    shutil.copytree(cli.home / "sim", fresh / "sim")  # the operators bring their tokens
    other = Cli(fresh, cli.env)
    proc = other("restore", made["path"])
    assert proc.returncode == 6 and "has not pinned a vault" in proc.stderr
    assert vault["fingerprint"] in proc.stderr  # the hint shows what to compare
    assert not (fresh / "wallet.dat").exists()
    assert other("restore", made["path"], "--trust", "0000:1111").returncode == 6
    out = other.json("restore", made["path"], "--trust", vault["fingerprint"])
    assert out["rollback"] is False and out["previous_generation"] is None
    assert os.stat(fresh / "wallet.dat").st_mode & 0o777 == 0o600
    assert other.json("vault", "verify")["wallets"] == 1
    assert other.json("unlock", "--operator", "bob", "--operator", "carol")["unlocked"] is True
