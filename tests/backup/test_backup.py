"""``kms-agent backup``: verified copies with a manifest, rotation, the save hook, and failing closed.

Everything runs through the real CLI (``cli`` fixture: separate processes on simulated tokens).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.vault.backups import check_copy
from agent.vault.vault import PublicVault
from tests.conftest import Cli, init_args


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copies(directory: Path) -> list[Path]:
    return sorted(directory.glob("wallet-*.dat"))


def guarded(home: Path) -> dict[str, bytes]:
    """wallet.dat, the pin, the audit log and the queue: what a refused change must leave byte-identical."""
    return {
        str(p.relative_to(home)): p.read_bytes()
        for p in sorted(home.rglob("*"))
        if p.is_file() and "sim" not in p.relative_to(home).parts and p.name != "events.jsonl"
    }


@pytest.fixture
def vault(cli: Cli) -> dict:  # type: ignore[type-arg]
    return cli.json(*init_args())


def test_backup_writes_a_verified_private_copy_and_its_manifest(cli: Cli, vault: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    dest = tmp_path / "offsite" / "kms"
    out = cli.json("backup", str(dest))
    copy = Path(out["path"])
    assert copy.parent == dest and copy.exists()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert copy.read_bytes() == (cli.home / "wallet.dat").read_bytes()  # still encrypted: the file itself
    manifest = json.loads(Path(out["manifest"]).read_text())
    assert stat.S_IMODE(Path(out["manifest"]).stat().st_mode) == 0o600
    assert manifest["sha256"] == sha256(copy) and manifest["size"] == copy.stat().st_size
    assert manifest["generation"] == 1 and manifest["version"] == 2
    assert manifest["fingerprint"] == vault["fingerprint"]
    assert set(manifest) >= {"vault_id", "generation", "fingerprint", "time", "sha256", "size", "version"}
    assert out["checks"] == ["sha256", "structure", "signature", "pinned-key", "index"]
    # The copy parses and its signature verifies against the pinned key, without a token.
    copied = PublicVault.load(copy, cli.home / "state" / "vault-pin.json")
    copied.verify()
    assert copied.fingerprint == vault["fingerprint"]
    checked = check_copy(copy, pin_path=cli.home / "state" / "vault-pin.json")
    checked.close()
    assert checked.sha256 == manifest["sha256"]
    # The same bytes again: checked and reused, not duplicated.
    again = cli.json("backup", str(dest))
    assert again["reused"] is True and copies(dest) == [copy]


def test_backup_keeps_n_rotated_copies(cli: Cli, vault: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    hooks = tmp_path / "hook-backups"
    cli.env["KMS_AGENT_BACKUP_DIR"] = str(hooks)
    cli.env["KMS_AGENT_BACKUP_KEEP"] = "3"
    dest = tmp_path / "manual"
    for _ in range(5):
        cli.json("wallet", "generate", "ETH", "--testnet")
        cli.json("backup", str(dest), "--keep", "2")
    manual = [json.loads(Path(f"{c}.json").read_text())["generation"] for c in copies(dest)]
    assert manual == [5, 6]  # generations 2..6 were backed up; the 2 newest stay
    hooked = [json.loads(Path(f"{c}.json").read_text())["generation"] for c in copies(hooks)]
    assert hooked == [3, 4, 5]  # each change backed up the file it replaced (1..5); 3 kept
    # Each kept copy has its manifest, and a pruned copy's manifest went with it.
    assert sorted(dest.glob("*.json")) == [Path(f"{c}.json") for c in copies(dest)]


def test_a_vault_change_backs_up_the_file_it_replaces_first(cli: Cli, vault: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    cli.env["KMS_AGENT_BACKUP_DIR"] = str(tmp_path / "configured")
    before = (cli.home / "wallet.dat").read_bytes()
    cli.json("wallet", "generate", "BTC", "--testnet")
    (copy,) = copies(tmp_path / "configured")
    assert copy.read_bytes() == before
    assert json.loads(Path(f"{copy}.json").read_text())["generation"] == 1
    assert cli.json("vault", "verify")["generation"] == 2


def test_default_backup_directory_is_in_the_data_directory(cli: Cli, vault: dict) -> None:  # type: ignore[type-arg]
    out = cli.json("backup")
    assert Path(out["path"]).parent == cli.home / "backups"
    assert stat.S_IMODE((cli.home / "backups").stat().st_mode) == 0o700


# --- full and read-only destinations ------------------------------------------------------------------
def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, check=False)


@contextlib.contextmanager
def full_disk(path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs at ``path``, filled up: every write there fails with ENOSPC."""
    path.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(path))
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the full-disk test must run in CI (as root) but {reason}")
        pytest.skip(f"{reason} (mounting needs root; CI runs as root)")
    try:
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        with pytest.raises(OSError):  # really full
            (path / "probe").write_bytes(b"\0" * 8192)
        with contextlib.suppress(FileNotFoundError):
            (path / "probe").unlink()
        yield path
    finally:
        _run("umount", str(path))


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """A read-only directory: a read-only bind mount as root (root ignores mode bits), else mode 0500."""
    path.mkdir(mode=0o700)
    mounted = (
        os.geteuid() == 0
        and _run("mount", "--bind", str(path), str(path)).returncode == 0
        and _run("mount", "-o", "remount,bind,ro", str(path)).returncode == 0
    )
    if not mounted:
        _run("umount", str(path))
        path.chmod(0o500)
    try:
        with pytest.raises(OSError):  # really read-only
            (path / "probe").write_bytes(b"x")
        yield path
    finally:
        if mounted:
            _run("umount", str(path))
        path.chmod(0o700)


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_a_change_is_refused_when_its_backup_cannot_be_written(
    cli: Cli,
    vault: dict,  # type: ignore[type-arg]
    tmp_path: Path,
    kind: str,
) -> None:
    make = full_disk if kind == "full" else read_only_dir
    with make(tmp_path / "dest") as dest:
        cli.env["KMS_AGENT_BACKUP_DIR"] = str(dest / "kms")
        before = guarded(cli.home)
        proc = cli("wallet", "generate", "ETH", "--testnet", "--json")
        assert proc.returncode == 9, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("kms-agent: error:")]
        assert len(errors) == 1, proc.stderr
        assert "refusing to change the vault: cannot write a backup to" in errors[0]
        reason = "No space left on device" if kind == "full" else ("Read-only file system", "Permission denied")
        assert any(r in errors[0] for r in ((reason,) if isinstance(reason, str) else reason)), errors[0]
        assert "wallet.dat was left as it was" in errors[0]
        assert json.loads(proc.stdout)["error"]["code"] == "state"
        assert "Traceback" not in proc.stderr
        assert guarded(cli.home) == before  # wallet.dat, pin, audit log, queue: byte-identical
        # An explicit backup there fails the same way, and changes nothing either.
        proc = cli("backup", str(dest / "kms"))
        assert proc.returncode == 9 and "cannot write a backup to" in proc.stderr
        assert guarded(cli.home) == before
    assert cli.json("vault", "verify")["generation"] == 1


def test_a_policy_change_whose_backup_fails_records_no_policy_change(
    cli: Cli,
    vault: dict,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    """The backup is made before the log says the policy changed: the vault and that claim stay in step."""
    from agent.audit import AuditLog
    from agent.policy import AssetLimits, Policy, Rule

    policy = Policy(generation=2, default=Rule(approvals_required=2, assets={"ETH": AssetLimits(per_tx=10**18)}))
    (tmp_path / "policy.json").write_text(json.dumps(policy.to_dict()))
    with read_only_dir(tmp_path / "dest") as dest:
        cli.env["KMS_AGENT_BACKUP_DIR"] = str(dest / "kms")
        wallet_dat = (cli.home / "wallet.dat").read_bytes()
        proc = cli("policy", "set", str(tmp_path / "policy.json"), "--operator", "alice", "--operator", "bob")
        assert proc.returncode == 9 and "cannot write a backup to" in proc.stderr, proc.stderr
        assert (cli.home / "wallet.dat").read_bytes() == wallet_dat
        assert AuditLog(cli.home / "state").rows(kinds=["policy_change"]) == []
        assert AuditLog(cli.home / "state").verify().ok
    assert cli.json("policy", "show")["generation"] == 1
