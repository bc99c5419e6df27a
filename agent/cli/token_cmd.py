"""``kms-agent token ...``: enrol, list and remove operators' tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.context import AllowUnattested, CliPrompts, Paths, emit

app = typer.Typer(help="enrol, list and remove tokens", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="print JSON")]
Approvers = Annotated[
    list[str] | None,
    typer.Option("--approver", help="operator to ask for the unlock (repeat; default: anyone present)"),
]
PinStdin = Annotated[bool, typer.Option(help="read token PINs from stdin, one per line")]


@app.command("list")
def list_tokens(as_json: Json = False) -> None:
    """list enrolled tokens (no token needed)"""
    from agent.cli.session import load_public

    vault = load_public(Paths.resolve())
    rows = [
        {
            "label": s["label"],
            "kind": s["kind"],
            "operator": vault.operator_name(s["operator_id"]),
            "simulated": s["simulated"],
            "enrolled_at": s["enrolled_at"],
        }
        for s in vault.header["slots"]
    ]
    emit({"tokens": rows}, as_json, "\n".join(f"{r['label']:<24} {r['kind']:<11} {r['operator']}" for r in rows))


@app.command("enrol")
def enrol(
    token: Annotated[str, typer.Argument(help="sim:NAME, fido2[:ID] or piv[:SERIAL]")],
    operator: Annotated[str, typer.Option("--operator", help="whose token this is")],
    kind: Annotated[str, typer.Option(help="fido2 or piv (for sim: tokens)")] = "fido2",
    allow_unattested: AllowUnattested = False,
    approver: Approvers = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """enrol another token for an operator (a quorum must unlock first)"""
    from agent.cli.session import unlock
    from agent.tokens.discovery import open_token

    paths = Paths.resolve()
    with unlock(paths, operators=approver, pin_stdin=pin_stdin) as vault:
        new = open_token(token, paths.home, kind=kind, allow_unattested=allow_unattested)
        with new:  # the new token's touch happens before the writer lock is taken
            slot = vault.prepare_slot(operator, new, CliPrompts(paths, pin_stdin=pin_stdin))
        vault.transact(lambda v: v.add_slot(slot))
        touched = [t.operator for t in vault.touches]
    emit(
        {"label": slot["label"], "kind": slot["kind"], "operator": operator, "approved_by": touched},
        as_json,
        f"Enrolled {slot['label']} for {operator} (approved by {', '.join(touched)}).",
    )


@app.command("remove")
def remove(
    label: Annotated[str, typer.Argument(help="the token label shown by `token list`")],
    approver: Approvers = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """remove a token's slot (a quorum must unlock first; an operator keeps at least one token)"""
    from agent.cli.session import unlock

    paths = Paths.resolve()
    with unlock(paths, operators=approver, pin_stdin=pin_stdin) as vault:
        slot = vault.transact(lambda v: v.remove_token(label))
        touched = [t.operator for t in vault.touches]
    emit(
        {"removed": slot["label"], "approved_by": touched},
        as_json,
        f"Removed {slot['label']} (approved by {', '.join(touched)}). "
        "Old copies of wallet.dat still accept it: rotate if it was lost.",
    )
