"""``kms-agent operator ...``: the people who hold the quorum."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.context import Paths, emit

app = typer.Typer(help="operators and their tokens", no_args_is_help=True)


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
