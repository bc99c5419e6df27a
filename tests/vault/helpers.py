"""Building real vaults on simulated tokens for the vault tests (no shortcut past the token layer)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.cli.context import Paths
from agent.policy import initial_policy
from agent.tokens.discovery import find_token, open_token
from agent.vault.vault import PublicVault, UnlockedVault, create_vault
from tests.conftest import AutoPrompts


def make_vault(
    home: Path, prompts: AutoPrompts, operators: Sequence[str] = ("alice", "bob", "carol"), quorum: int = 2
) -> tuple[Paths, list[str]]:
    paths = Paths(home)
    tokens = [(name, open_token(f"sim:{name}", home)) for name in operators]
    pending = create_vault(paths.vault, paths.pin, tokens, quorum, prompts, policy=initial_policy(quorum))
    words = pending.recovery_shares
    pending.check_recovery(words[:2])
    pending.commit().close()
    return paths, words


def load(paths: Paths) -> PublicVault:
    return PublicVault.load(paths.vault, paths.pin)


def unlock(paths: Paths, prompts: AutoPrompts, operators: Sequence[str] | None = None) -> UnlockedVault:
    home = paths.home
    return load(paths).unlock(lambda slot: find_token(slot, home), prompts, operators=operators)


def snapshot(paths: Paths) -> dict[str, bytes]:
    """Every file under the data directory except simulator state: what must not change on failure."""
    return {
        str(p.relative_to(paths.home)): p.read_bytes()
        for p in sorted(paths.home.rglob("*"))
        if p.is_file() and "sim" not in p.relative_to(paths.home).parts
    }
