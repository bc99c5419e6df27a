"""``kms-agent recovery ...``: prove the recovery words work, and use them when tokens are lost."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from agent.cli.context import CliPrompts, Paths, emit, err
from agent.cli.options import AllowUnattested, Json, Owner
from agent.errors import UsageError

app = typer.Typer(help="recovery words: test them, or use them to replace lost tokens", no_args_is_help=True)


def _read_shares(until: str | None = None) -> list[str]:
    """Shares from stdin (one per line, blank lines between shares allowed) or hidden prompts.

    :param until: a line that ends the shares on stdin, so that PINs can follow it (``--pin-stdin``).
    """
    if sys.stdin.isatty():
        shares: list[str] = []
        while True:
            line = typer.prompt(
                f"recovery share {len(shares) + 1} (empty line to finish)",
                default="",
                hide_input=True,
                show_default=False,
            )
            if not line.strip():
                break
            shares.append(line.strip())
    else:
        shares = []
        for raw in iter(sys.stdin.buffer.readline, b""):  # the binary buffer: PINs are read from it next
            line = raw.decode(errors="replace").strip()
            if until is not None and line == until:
                break
            if line and not line.startswith("recovery share"):
                shares.append(line)
    if not shares:
        raise UsageError("no recovery shares given")
    return shares


@app.command("verify")
def verify(as_json: Json = False) -> None:
    """check that the recovery shares on stdin open the vault; changes nothing"""
    from agent.cli.session import load_public
    from agent.recovery import open_with_recovery

    paths = Paths.resolve()
    vault = load_public(paths)
    with open_with_recovery(vault, _read_shares(), state_dir=paths.state, purpose="recovery verify") as opened:
        wallets = opened.header.wallet_count
    emit({"ok": True, "wallets": wallets}, as_json, f"OK: the recovery shares open this vault ({wallets} wallets).")


@app.command("enrol-token")
def enrol_token(
    token: Annotated[str, typer.Argument(help="the replacement token: sim:NAME, fido2[:ID] or piv[:SERIAL]")],
    owner: Owner,
    kind: Annotated[str, typer.Option(help="fido2 or piv (for sim: tokens)")] = "fido2",
    allow_unattested: AllowUnattested = False,
    pin_stdin: Annotated[
        bool, typer.Option("--pin-stdin", help="after the shares, a line '--', then the new token's PIN")
    ] = False,
    as_json: Json = False,
) -> None:
    """when tokens are lost: open the vault with recovery shares (stdin) and enrol a replacement token"""
    from agent.cli.session import load_public
    from agent.tokens.discovery import open_token

    paths = Paths.resolve()
    vault = load_public(paths)
    shares = _read_shares(until="--" if pin_stdin else None)
    from agent.recovery import open_with_recovery

    err("Opening the vault with recovery shares (this bypasses the operator quorum; it is logged).")
    with open_with_recovery(vault, shares, state_dir=paths.state, purpose=f"enrol {token} for {owner}") as opened:
        new = open_token(token, paths.home, kind=kind, allow_unattested=allow_unattested)
        with new:
            slot = opened.prepare_slot(owner, new, CliPrompts(paths, pin_stdin=pin_stdin))
        opened.transact(lambda v: v.add_slot(slot))
    emit(
        {"label": slot.label, "operator": owner, "via": "recovery"},
        as_json,
        f"Enrolled {slot.label} for {owner} using the recovery shares.",
    )
