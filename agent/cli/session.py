"""Load and unlock the vault for a command: the same few steps every command repeats."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.cli.context import CliPrompts, Paths, warn_if_simulated
from agent.vault.vault import PublicVault, UnlockedVault


def load_public(paths: Paths, *, require_pin: bool = True, quiet: bool = False) -> PublicVault:
    """The vault, checked without a token; warns once per command when its tokens are simulated."""
    vault = PublicVault.load(paths.vault, paths.pin, require_pin=require_pin)
    if not quiet:
        warn_if_simulated(vault)
    return vault


def unlock(
    paths: Paths, *, operators: Sequence[str] | None = None, pin_stdin: bool = False, digest: bytes | None = None
) -> UnlockedVault:
    """Ask the operators' tokens (PIN + touch) until the quorum is met; returns the opened vault."""
    from agent.tokens.discovery import find_token

    vault = load_public(paths)
    home: Path = paths.home
    return vault.unlock(
        lambda slot: find_token(slot, home), CliPrompts(paths, pin_stdin=pin_stdin), operators=operators, digest=digest
    )
