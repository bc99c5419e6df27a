"""``kms-agent operator ...``: the people who hold the quorum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from agent.cli.context import Paths, emit
from agent.cli.options import AllowUnattested, DropAbsent, Json, Operators, PinStdin
from agent.errors import UsageError

app = typer.Typer(help="operators and their tokens", no_args_is_help=True)

QuorumOpt = Annotated[
    int | None, typer.Option("--quorum", help="the quorum after the change (default: unchanged)", show_default=False)
]


@app.command("list")
def list_operators(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """list operators, the quorum, and each operator's tokens"""
    from agent.cli.session import load_public

    vault = load_public(Paths.resolve())
    h = vault.header
    ops = [
        {
            "name": op.name,
            "id": op.operator_id.hex(),
            "tokens": [s.label for s in h.slots_of(op.operator_id)],
        }
        for op in h.operators
    ]
    lines = [f"quorum: {h.quorum} of {len(ops)}"] + [f"{o['name']:<16} {', '.join(o['tokens'])}" for o in ops]
    emit({"quorum": h.quorum, "operators": ops}, as_json, "\n".join(lines))


def _precheck(
    paths: Paths,
    *,
    known: Sequence[str] = (),
    new: Sequence[str] = (),
    operators_after: int | None = None,
    quorum: int | None = None,
) -> None:
    """Refuse bad input before anyone touches a token (the plan checks again, against the locked file)."""
    from agent.cli.session import load_public

    h = load_public(paths, quiet=True).header
    names = {op.name for op in h.operators}
    missing = [n for n in known if n not in names]
    if missing:
        raise UsageError(f"no operator named {', '.join(missing)} in this vault (see `kms-agent operator list`)")
    taken = [n for n in new if n in names]
    if taken:
        raise UsageError(f"an operator named {', '.join(taken)} already exists")
    count = operators_after if operators_after is not None else len(h.operators)
    size = quorum if quorum is not None else h.quorum
    if not 1 <= size <= count:
        raise UsageError(
            f"a quorum of {size} is impossible with {count} operators",
            hint="give --quorum N with 1 <= N <= the number of operators",
        )


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="the new operator's name")],
    token: Annotated[str, typer.Option("--token", help="their first token: sim:NAME, fido2[:ID] or piv[:SERIAL]")],
    kind: Annotated[str, typer.Option(help="fido2 or piv (for sim: tokens)")] = "fido2",
    quorum: QuorumOpt = None,
    drop_absent: DropAbsent = False,
    allow_unattested: AllowUnattested = False,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """add an operator with their first token (PIN + touch); re-splits and rotates the data key"""
    from agent.cli.session import load_public, unlock
    from agent.cli.vault_cmd import rotation_text, run_rotation
    from agent.tokens.discovery import open_token

    paths = Paths.resolve()
    if not name.strip():
        raise UsageError("an operator needs a name")
    count = len(load_public(paths, quiet=True).header.operators) + 1
    _precheck(paths, new=[name], operators_after=count, quorum=quorum)
    with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
        new = open_token(token, paths.home, kind=kind, allow_unattested=allow_unattested)
        result = run_rotation(
            paths,
            vault,
            "operator-add",
            {"operator": name, "token": new.label, "quorum": quorum},
            pin_stdin=pin_stdin,
            add_operators=[(name, new)],
            quorum_size=quorum,
            drop_absent=drop_absent,
        )
    emit(result, as_json, f"Added operator {name}.\n" + rotation_text(result))


@app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="the operator who leaves")],
    quorum: QuorumOpt = None,
    drop_absent: DropAbsent = False,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """remove an operator and all their tokens; rotates the data key so they open no later file"""
    from agent.cli.session import load_public
    from agent.cli.vault_cmd import rotate_unlocked, rotation_text

    paths = Paths.resolve()
    count = len(load_public(paths, quiet=True).header.operators) - 1
    _precheck(paths, known=[name], operators_after=count, quorum=quorum)
    result = rotate_unlocked(
        paths,
        "operator-remove",
        {"operator": name, "quorum": quorum},
        operators=operator,
        pin_stdin=pin_stdin,
        remove_operators=[name],
        quorum_size=quorum,
        drop_absent=drop_absent,
    )
    emit(
        result,
        as_json,
        f"Removed operator {name}.\n" + rotation_text(result) + "\nOlder copies of wallet.dat (backups) still open "
        "with their tokens: see docs/operations.md.",
    )


@app.command("quorum")
def set_quorum(
    size: Annotated[int, typer.Argument(help="how many distinct operators must touch to open the vault")],
    drop_absent: DropAbsent = False,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """change the quorum (the current quorum unlocks); re-splits and rotates the data key"""
    from agent.cli.session import unlock
    from agent.cli.vault_cmd import rotation_text, run_rotation

    paths = Paths.resolve()
    _precheck(paths, quorum=size)
    with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
        before = vault.header.quorum
        result = run_rotation(
            paths,
            vault,
            "quorum",
            {"from": before, "to": size},
            pin_stdin=pin_stdin,
            quorum_size=size,
            drop_absent=drop_absent,
        )
    emit(result, as_json, f"Quorum {before} -> {size}.\n" + rotation_text(result))


@app.command("reinstate")
def reinstate(
    name: Annotated[str, typer.Argument(help="the suspended operator")],
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """lift an operator's suspension (cloned-token alert): a quorum of OTHER operators touch

    The suspended operator is never asked, and their touch would not count. Nothing is written
    unless the quorum (the policy's admin approvals) is met.
    """
    from agent.cli.context import CliPrompts
    from agent.cli.session import load_public
    from agent.tokens.discovery import find_token
    from agent.withdrawals.service import Withdrawals

    paths = Paths.resolve()
    load_public(paths)  # warns when the tokens are simulated
    done = Withdrawals(paths.home).reinstate(
        name,
        finder=lambda slot: find_token(slot, paths.home),
        prompts=CliPrompts(paths, pin_stdin=pin_stdin),
        operators=operator,
    )
    emit(done.to_json(), as_json, f"Reinstated {name} (approved by {', '.join(done.approved_by)}).")
