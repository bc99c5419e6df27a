"""The options every command spells the same way: one name per meaning (README, "Scripting contract").

* ``--operator NAME`` (repeat): an operator whose token is asked to touch, to unlock or to approve;
  without it, every operator with a token present, in enrolment order.
* ``--owner NAME``: whose token a newly enrolled token becomes.
* ``--pin-stdin``: token PINs from stdin, one per line (after any secret the command reads first).
* ``--json``: the command's one JSON document on stdout (errors too, as ``{"error": ...}``).
"""

from __future__ import annotations

from typing import Annotated

import typer

Json = Annotated[bool, typer.Option("--json", help="print JSON")]
Operators = Annotated[
    list[str] | None,
    typer.Option("--operator", help="operator whose token is asked to touch (repeat; default: every operator present)"),
]
Owner = Annotated[str, typer.Option("--owner", help="the operator this token belongs to")]
PinStdin = Annotated[bool, typer.Option("--pin-stdin", help="read token PINs from stdin, one per line")]
AllowUnattested = Annotated[
    bool,
    typer.Option(
        "--allow-unattested",
        help="enrol a token whose attestation chains to no bundled root (other vendors); recorded in the slot",
    ),
]

#: A data-key rotation touches every remaining token once; this drops the absent ones instead of refusing.
DropAbsent = Annotated[
    bool,
    typer.Option("--drop-absent", help="drop the slots of tokens that are not plugged in instead of refusing"),
]
