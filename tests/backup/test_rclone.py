"""Off-host copies through rclone (its ``local`` backend here, so no network is needed)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Cli, init_args


@pytest.fixture
def remote(cli: Cli, tmp_path: Path) -> Path:
    assert shutil.which("rclone"), "rclone is missing: scripts/bootstrap installs it (apt package rclone)"
    cli.json(*init_args())
    cli.env["RCLONE_CONFIG_OFFSITE_TYPE"] = "local"  # a remote named "offsite", defined by rclone's env
    root = tmp_path / "remote"
    root.mkdir()
    return root


def test_backup_to_an_rclone_remote_is_copied_and_read_back(cli: Cli, remote: Path) -> None:
    out = cli.json("backup", f"rclone:offsite:{remote}/kms")
    local = Path(out["path"])
    assert local.parent == cli.home / "backups"  # the verified local copy is what goes off-host
    far = remote / "kms" / local.name
    assert far.read_bytes() == local.read_bytes()
    assert hashlib.sha256(far.read_bytes()).hexdigest() == out["sha256"] == out["rclone"]["sha256"]
    assert json.loads((remote / "kms" / f"{local.name}.json").read_text())["sha256"] == out["sha256"]
    assert out["rclone"]["remote"] == f"offsite:{remote}/kms/{local.name}"
    # rclone itself agrees that the remote holds the same bytes.
    check = subprocess.run(
        ["rclone", "check", "--one-way", str(local.parent), f"offsite:{remote}/kms", "--include", local.name],
        env=cli.env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    # The same with --rclone, after a change.
    cli.json("wallet", "generate", "ETH", "--testnet")
    again = cli.json("backup", "--rclone", f"offsite:{remote}/kms")
    assert (remote / "kms" / Path(again["path"]).name).read_bytes() == Path(again["path"]).read_bytes()


def test_an_rclone_failure_is_one_clear_error(cli: Cli, remote: Path) -> None:
    proc = cli("backup", "rclone:nosuchremote:kms", "--json")
    assert proc.returncode == 9, proc.stderr
    assert "rclone could not copy" in proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "state"
