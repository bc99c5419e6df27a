"""``kms-agent recovery ...``: prove the recovery words work, and use them when tokens are lost."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.context import CliPrompts, Paths, emit, err
from agent.cli.options import AllowUnattested, Json, Operators, Owner, PinStdin
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


def _show_words(result: dict[str, Any], words: list[str], out: Path | None, home: Path, as_json: bool) -> str:
    """Write the new words to one 0600 file each (``--recovery-out``), or print them once, as init does."""
    from agent.cli.init_cmd import _write_share_files

    if out is not None:
        result["recovery"]["files"] = _write_share_files(out, words, home=home)
        return f"New recovery shares written to {out}, one file per share: hand each to a different officer."
    if as_json or not sys.stdin.isatty():
        result["recovery"]["words"] = words
    text = "\n\n".join(f"recovery share {i + 1} of {len(words)}:\n{w}" for i, w in enumerate(words))
    if not as_json:
        err("\nNEW RECOVERY SHARES: shown once. Give one to each recovery officer; the old ones no longer work.\n")
        err(text + "\n")
    return "The old recovery shares no longer open this vault or any later copy."


@app.command("rotate")
def rotate(
    threshold: Annotated[int | None, typer.Option(help="shares needed to recover (default: unchanged)")] = None,
    shares: Annotated[int | None, typer.Option(help="shares to create (default: unchanged)")] = None,
    recovery_out: Annotated[
        Path | None,
        typer.Option(help="write each new share to its own 0600 file in this new directory, instead of the terminal"),
    ] = None,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """issue new recovery shares (a quorum unlocks); the old ones stop working. Rotates the data key"""
    from agent.cli.session import load_public
    from agent.cli.vault_cmd import rotate_unlocked, rotation_text

    paths = Paths.resolve()
    rec = load_public(paths, quiet=True).header.recovery
    t, n = threshold or rec.threshold, shares or rec.shares
    if not 2 <= t <= n <= 16:
        raise UsageError(f"cannot split recovery {t}-of-{n}: need 2 <= threshold <= shares <= 16")
    if recovery_out is not None and recovery_out.exists() and any(recovery_out.iterdir()):
        raise UsageError(f"--recovery-out {recovery_out} must be a new or empty directory (one file per share)")
    result = rotate_unlocked(
        paths,
        "recovery-rotate",
        {"threshold": t, "count": n},
        operators=operator,
        pin_stdin=pin_stdin,
        new_recovery=(t, n),
        audit_before=lambda plan: plan.check_recovery(plan.recovery_words[:t]),
    )
    words = result.pop("recovery_words")
    result["recovery"] = {"threshold": t, "shares": n, "dir": str(recovery_out) if recovery_out else None}
    text = _show_words(result, words, recovery_out, paths.home, as_json)
    emit(result, as_json, rotation_text(result) + "\n" + text)


def register(app: typer.Typer) -> None:
    @app.command("recover")
    def recover(
        operator: Annotated[
            list[str],
            typer.Option(
                "--operator",
                help="NAME=TOKEN: a new token for each operator (repeat for every operator; sim:NAME, "
                "fido2[:ID] or piv[:SERIAL])",
            ),
        ],
        kind: Annotated[str, typer.Option(help="fido2 or piv (for sim: tokens)")] = "fido2",
        quorum: Annotated[
            int | None, typer.Option("--quorum", help="the quorum after recovery (default: unchanged)")
        ] = None,
        allow_unattested: AllowUnattested = False,
        pin_stdin: Annotated[
            bool, typer.Option("--pin-stdin", help="after the shares, a line '--', then the new tokens' PINs")
        ] = False,
        as_json: Json = False,
    ) -> None:
        """every token lost: open with recovery shares, enrol new tokens, rotate

        The recovery shares (stdin) open the vault without any token; every operator gets the new
        token named for them, every old token is dropped and the data key is rotated. Audited and alerted.
        """
        from agent.cli.init_cmd import parse_operator
        from agent.cli.session import load_public
        from agent.cli.vault_cmd import rotation_text, run_rotation
        from agent.recovery import open_with_recovery
        from agent.tokens.discovery import open_token
        from agent.vault import quorum as q

        paths = Paths.resolve()
        vault = load_public(paths)
        specs = [parse_operator(v) for v in operator]
        names = [name for name, _ in specs]
        current = [op.name for op in vault.header.operators]
        if sorted(names) != sorted(current):
            raise UsageError(
                f"name a new token for every operator exactly once ({', '.join(current)}); got {', '.join(names)}",
                hint="remove or add operators after recovery with `kms-agent operator remove|add`",
            )
        tokens = [spec for _, spec in specs]
        if len(set(tokens)) != len(tokens):
            raise UsageError("one token cannot serve two operators: that would defeat the 4-eye principle")
        size = quorum if quorum is not None else vault.header.quorum
        if not 1 <= size <= len(current):
            raise UsageError(f"a quorum of {size} is impossible with {len(current)} operators")
        shares = _read_shares(until="--" if pin_stdin else None)
        secret = q.combine(shares, vault.header.recovery.threshold)  # checked again by open_with_recovery
        try:
            err("Opening the vault with recovery shares (this bypasses the operator quorum; it is logged).")
            with open_with_recovery(vault, shares, state_dir=paths.state, purpose="recover: new tokens") as opened:
                new = [
                    (name, open_token(spec, paths.home, kind=kind, allow_unattested=allow_unattested))
                    for name, spec in specs
                ]
                result = run_rotation(
                    paths,
                    opened,
                    "recover",
                    {"tokens": {name: tok.label for name, tok in new}, "quorum": size},
                    pin_stdin=pin_stdin,
                    new_tokens=new,
                    keep_slots=False,
                    quorum_size=size,
                    recovery_secret=secret,
                )
        finally:
            from agent.vault.primitives import wipe

            wipe(secret)
        emit(
            result,
            as_json,
            "Recovered: every old token is dropped.\n"
            + rotation_text(result)
            + "\nRun `kms-agent recovery rotate` next: the shares just used have been seen.",
        )
