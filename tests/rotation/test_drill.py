"""The recovery drill (issue 12): lose every token, recover with two of three shares, rotate the shares."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.cli.context import Paths
from agent.errors import KmsAgentError, QuorumNotMet
from agent.vault.vault import UnlockedVault
from tests.conftest import AutoPrompts, Cli
from tests.rotation.helpers import copy_sim, facts, init_with_wallets, open_copy, ops, pinned, share_files


def test_full_drill_lose_every_token_recover_and_rotate_the_shares(cli: Cli, home: Path, tmp_path: Path) -> None:
    old_shares = tmp_path / "shares"
    before = init_with_wallets(cli, old_shares)
    sig_ids = list(before["addresses"])
    paths = Paths(home)
    old_file = tmp_path / "wallet-before.dat"
    shutil.copy2(paths.vault, old_file)
    old_tokens = tmp_path / "old-tokens"
    copy_sim(home, old_tokens / "sim")
    old_fp = pinned(home).fingerprint

    # Every token is lost.
    shutil.rmtree(home / "sim")
    lost = cli("unlock", *ops("alice", "bob"))
    assert lost.returncode == 5, lost.stderr  # quorum not met: no token present

    # Bad input first: nothing changes.
    files = share_files(old_shares)
    state = {p: p.read_bytes() for p in [paths.vault, paths.state / "audit.sqlite"] if p.exists()}
    bad = cli("recover", "--operator", "alice=sim:alice2", "--json", input=files[0] + files[1])
    assert bad.returncode == 2 and '"usage"' in bad.stdout
    one = cli("recover", *[f"--operator={n}=sim:{n}2" for n in ("alice", "bob", "carol")], input=files[0])
    assert one.returncode == 5, one.stderr  # one share of two
    assert {p: p.read_bytes() for p in state} == state

    # Two recovery officers bring their shares; every operator gets a new token.
    rec = cli.json(
        "recover", *[f"--operator={n}=sim:{n}2" for n in ("alice", "bob", "carol")], input=files[0] + files[2]
    )
    assert rec["quorum"] == 2 and rec["purpose"] == "recover"
    assert sorted(rec["dropped"]) == ["sim:alice", "sim:bob", "sim:carol"]
    assert [o["tokens"] for o in rec["operators"]] == [["sim:alice2"], ["sim:bob2"], ["sim:carol2"]]
    assert rec["fingerprint"] != old_fp

    # Wallets, signatureIds and addresses are unchanged; the new tokens open the vault.
    assert facts(cli, sig_ids) == before
    assert cli("unlock", *ops("bob", "carol")).returncode == 0
    assert cli("vault", "verify").returncode == 0

    # Old tokens no longer open the current file (they still open the copy made before: documented).
    oldhome = tmp_path / "oldhome"
    shutil.copytree(old_tokens, oldhome)
    prompts = AutoPrompts(oldhome)
    with pytest.raises(QuorumNotMet):
        open_copy(oldhome, paths.vault, prompts, ["alice", "bob"])
    with open_copy(oldhome, old_file, prompts, ["alice", "bob"]) as old, pytest.raises(KmsAgentError):
        UnlockedVault.open(pinned(home), bytearray(old.keys.dek), []).close()

    # The old shares still work until rotated; after `recovery rotate` only the new ones do.
    assert cli("recovery", "verify", input=files[0] + files[1]).returncode == 0
    new_shares = tmp_path / "new-shares"
    rot = cli.json("recovery", "rotate", "--recovery-out", str(new_shares), *ops("alice", "bob"))
    assert rot["recovery"] == {"threshold": 2, "shares": 3, "dir": str(new_shares), "files": rot["recovery"]["files"]}
    stale = cli("recovery", "verify", input=files[0] + files[1])
    assert stale.returncode != 0
    fresh = share_files(new_shares)
    assert cli("recovery", "verify", input=fresh[1] + fresh[2]).returncode == 0
    assert facts(cli, sig_ids) == before
    assert cli("audit", "verify").returncode == 0
    rows = cli.json("audit", "show")["rows"]
    used = [i for i, r in enumerate(rows) if r["kind"] == "recovery" and r["payload"]["purpose"].startswith("recover:")]
    assert len(used) == 1 and rows[used[0] + 1]["kind"] == "alert"  # recovery is always alerted
    purposes = [r["payload"].get("purpose") for r in rows if r["kind"] == "unlock"]
    assert purposes[-2:] == ["recover", "recovery-rotate"]
