"""Shared steps of the rotation tests: a CLI-made vault with wallets, and token-free facts to compare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from agent.cli.context import Paths
from agent.tokens.discovery import find_token
from agent.vault.vault import PublicVault, UnlockedVault
from tests.conftest import AutoPrompts, Cli, init_args

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


def ops(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--operator", name)]


def init_with_wallets(cli: Cli, shares_dir: Path) -> dict[str, Any]:
    """A 2-of-3 vault (alice, bob, carol) with 2-of-3 recovery shares in files, and two wallets."""
    out = cli(*init_args(), "--recovery-out", str(shares_dir))
    assert out.returncode == 0, out.stderr
    eth = cli.json("wallet", "generate", "ETH", "--testnet", *ops("alice", "bob"))["wallets"][0]["signatureId"]
    btc = cli.json("wallet", "store", "BTC", "--testnet", input=MNEMONIC.encode())["signatureId"]
    return facts(cli, [eth, btc])


def facts(cli: Cli, sig_ids: list[str]) -> dict[str, Any]:
    """What must survive any rotation: the wallet list and derived addresses (no token needed)."""
    return {
        "wallets": cli.json("wallet", "list"),
        "addresses": {s: cli.json("wallet", "address", s, "1")["address"] for s in sig_ids},
    }


def share_files(directory: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(directory.glob("recovery-share-*.txt"))]


def copy_sim(home: Path, dest: Path) -> None:
    shutil.copytree(home / "sim", dest)


def open_copy(home: Path, vault_file: Path, prompts: AutoPrompts, operators: list[str]) -> UnlockedVault:
    """Open a copy of wallet.dat (not the pinned one) with the tokens under ``home``."""
    public = PublicVault.load(vault_file, home / "no-pin.json", require_pin=False)
    return public.unlock(lambda slot: find_token(slot, home), prompts, operators=operators)


def pinned(home: Path) -> PublicVault:
    paths = Paths(home)
    return PublicVault.load(paths.vault, paths.pin)


def dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
