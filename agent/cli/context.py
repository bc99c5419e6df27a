"""What every command needs: where the data lives, how to talk to the operator, how to print.

Kept free of heavy imports: ``kms-agent --help`` and ``wallet address`` must answer in well under
0.3 s, so token and chain libraries are imported inside the commands that use them.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from agent.errors import PinRequired
from agent.paths import HOME_ENV, Paths, default_home

__all__ = ["HOME_ENV", "SIM_TOUCH_ENV", "CliPrompts", "Paths", "default_home", "emit", "err", "warn_if_simulated"]

if TYPE_CHECKING:
    from agent.vault.vault import PublicVault

SIM_TOUCH_ENV = "KMS_AGENT_SIM_TOUCH"


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(data: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    """``--json`` goes to stdout as one document; otherwise the human text."""
    if as_json:
        import json

        print(json.dumps(data, indent=2, sort_keys=False))
    elif human is not None:
        print(human)


def warn_if_simulated(vault: PublicVault) -> None:
    if vault.simulated:
        err("WARNING: this vault is enrolled with SIMULATED tokens: insecure, for demos and tests only.")


class CliPrompts:
    """Touch notices and PIN entry for the terminal (and for scripts, through ``--pin-stdin``)."""

    def __init__(self, paths: Paths, *, pin_stdin: bool = False) -> None:
        self.paths = paths
        self.pin_stdin = pin_stdin

    def touch(self, token_label: str) -> None:
        err(f"Touch {token_label} now...")

    def pin(self, token_label: str, attempts_remaining: int | None) -> bytearray:
        if token_label.startswith("sim:") and os.environ.get(SIM_TOUCH_ENV, "ask") != "ask" and not self.pin_stdin:
            # Simulator convenience for demos and tests (scripting contract): when their touch is
            # automated (auto, deny, timeout, remove), simulated tokens also answer their own PIN
            # prompt. Never for real tokens.
            from agent.tokens.sim import simulated_pin

            return bytearray(simulated_pin(self.paths.home, token_label[4:]).encode())
        left = f" ({attempts_remaining} tries left)" if attempts_remaining is not None else ""
        if attempts_remaining is not None and attempts_remaining <= 2:
            err(f"warning: {token_label} blocks its PIN after {attempts_remaining} more wrong tries")
        if self.pin_stdin:
            line = sys.stdin.buffer.readline()
            if not line:
                raise PinRequired(f"no PIN for {token_label} on stdin")
            pin = bytearray(line.rstrip(b"\r\n"))
            line = b""
            return pin
        if not sys.stdin.isatty():
            raise PinRequired(
                f"{token_label} needs its PIN and there is no terminal to ask on",
                hint="pass --pin-stdin and write one PIN per line to stdin",
            )
        import getpass

        return bytearray(getpass.getpass(f"PIN for {token_label}{left}: ").encode())
