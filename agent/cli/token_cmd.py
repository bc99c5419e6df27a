"""``kms-agent token ...``: enrol, list and remove operators' tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.context import CliPrompts, Paths, emit
from agent.cli.options import AllowUnattested, Json, Operators, Owner, PinStdin

app = typer.Typer(help="enrol, list and remove tokens", no_args_is_help=True)


@app.command("list")
def list_tokens(
    cards: Annotated[
        bool, typer.Option("--cards", help="also list every PIV card present (pcscd), YubiKey or not, and why not")
    ] = False,
    as_json: Json = False,
) -> None:
    """list enrolled tokens (no token needed); with --cards, also the PIV cards plugged in"""
    from agent.cli.session import load_public

    vault = load_public(Paths.resolve())
    rows = [
        {
            "label": s.label,
            "kind": s.kind,
            "operator": vault.operator_name(s.operator_id),
            "simulated": s.simulated,
            "enrolled_at": s.enrolled_at,
        }
        for s in vault.header.slots
    ]
    text = "\n".join(f"{r['label']:<24} {r['kind']:<11} {r['operator']}" for r in rows)
    if not cards:
        emit({"tokens": rows}, as_json, text)
        return
    from agent.tokens.inventory import list_piv_cards

    present = list_piv_cards()
    lines = [text, "", "PIV cards present:"] + [f"  {c.summary()}" for c in present] if present else [text]
    if not present:
        lines += ["", "PIV cards present: none (is pcscd running? see `kms-agent doctor`)"]
    emit({"tokens": rows, "cards": [c.to_json() for c in present]}, as_json, "\n".join(lines))


@app.command("enrol")
def enrol(
    token: Annotated[str, typer.Argument(help="sim:NAME, fido2[:ID] or piv[:SERIAL]")],
    owner: Owner,
    kind: Annotated[str, typer.Option(help="fido2 or piv (for sim: tokens)")] = "fido2",
    allow_unattested: AllowUnattested = False,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """enrol another token for an operator (a quorum must unlock first)"""
    from agent.cli.session import unlock
    from agent.tokens.discovery import open_token

    paths = Paths.resolve()
    with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
        new = open_token(token, paths.home, kind=kind, allow_unattested=allow_unattested)
        with new:  # the new token's touch happens before the writer lock is taken
            slot = vault.prepare_slot(owner, new, CliPrompts(paths, pin_stdin=pin_stdin))
        vault.transact(lambda v: v.add_slot(slot))
        touched = [t.operator for t in vault.touches]
    emit(
        {"label": slot.label, "kind": slot.kind, "operator": owner, "approved_by": touched},
        as_json,
        f"Enrolled {slot.label} for {owner} (approved by {', '.join(touched)}).",
    )


@app.command("remove")
def remove(
    label: Annotated[str, typer.Argument(help="the token label shown by `token list`")],
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """remove a token's slot (a quorum must unlock first; an operator keeps at least one token)"""
    from agent.cli.session import unlock

    paths = Paths.resolve()
    with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
        slot = vault.transact(lambda v: v.remove_token(label))
        touched = [t.operator for t in vault.touches]
    emit(
        {"removed": slot.label, "approved_by": touched},
        as_json,
        f"Removed {slot.label} (approved by {', '.join(touched)}). "
        "Old copies of wallet.dat still accept it: rotate if it was lost.",
    )
