"""``kms-agent token ...``: enrol, list and remove operators' tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.context import CliPrompts, Paths, emit
from agent.cli.options import AllowUnattested, DropAbsent, Json, Operators, Owner, PinStdin

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
    drop_absent: DropAbsent = False,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """remove a token (a quorum unlocks; an operator keeps at least one token); rotates the data key"""
    from agent.cli.session import load_public
    from agent.cli.vault_cmd import rotate_unlocked, rotation_text
    from agent.errors import TokenNotFound, UsageError

    paths = Paths.resolve()
    h = load_public(paths, quiet=True).header
    match = [s for s in h.slots if s.label == label]
    if not match:
        raise TokenNotFound(f"no token {label} is enrolled in this vault")
    if len(h.slots_of(match[0].operator_id)) == 1:
        owner = next(op.name for op in h.operators if op.operator_id == match[0].operator_id)
        raise UsageError(
            f"{label} is the last token of operator {owner}; enrol another token first, "
            "or that operator's share is lost",
            hint="or remove the operator: `kms-agent operator remove`",
        )
    result = rotate_unlocked(
        paths,
        "token-remove",
        {"token": label},
        operators=operator,
        pin_stdin=pin_stdin,
        remove_tokens=[label],
        drop_absent=drop_absent,
    )
    result["removed"] = label
    emit(
        result,
        as_json,
        f"Removed {label} (approved by {', '.join(result['approved_by'])}).\n"
        + rotation_text(result)
        + "\nOlder copies of wallet.dat (backups) still accept it: see docs/operations.md.",
    )


def _read_pins(label: str, *, from_stdin: bool) -> tuple[bytearray, bytearray]:
    """The current and the new PIN: two lines on stdin, or hidden prompts (the new one twice)."""
    import sys

    from agent.errors import PinRequired

    if from_stdin:
        lines = [bytearray(sys.stdin.buffer.readline().rstrip(b"\r\n")) for _ in range(2)]
        if not lines[0] or not lines[1]:
            from agent.vault.primitives import wipe

            wipe(*lines)
            raise PinRequired(f"write the current and the new PIN of {label} to stdin, one per line")
        return lines[0], lines[1]
    import getpass

    from agent.vault.primitives import wipe

    old = bytearray(getpass.getpass(f"current PIN of {label}: ").encode())
    new = bytearray(getpass.getpass(f"new PIN of {label}: ").encode())
    again = bytearray(getpass.getpass(f"new PIN of {label} again: ").encode())
    same = again == new
    wipe(again)
    if not same:
        from agent.errors import UsageError

        wipe(old, new)
        raise UsageError("the two new PINs differ; nothing was changed")
    return old, new


@app.command("pin")
def change_pin(
    label: Annotated[str, typer.Argument(help="the token label shown by `token list`")],
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """change a token's PIN: the current and the new one from a hidden prompt, or stdin (one per line)

    Reads stdin when it is not a terminal (or with --pin-stdin). The PIN never goes to argv, the
    environment, a log or the audit log; the change itself is audited.
    """
    import sys

    from agent.audit import AuditKind
    from agent.cli.session import load_public
    from agent.errors import PinError, TokenNotFound, UsageError
    from agent.tokens.discovery import find_token
    from agent.tokens.pin_change import change_pin as change
    from agent.vault.primitives import wipe
    from agent.withdrawals.ledger import open_audit

    paths = Paths.resolve()
    vault = load_public(paths)
    slot = next((s for s in vault.header.slots if s.label == label), None)
    if slot is None:
        raise UsageError(f"no enrolled token labelled {label!r} (see `kms-agent token list`)")
    operator = vault.operator_name(slot.operator_id)
    token = find_token(slot, paths.home)
    if token is None:
        raise TokenNotFound(f"{label} is not plugged in", hint="plug it in (for PIV: is pcscd running?)")
    row = {
        "action": "pin-change",
        "token": label,
        "kind": slot.kind,
        "operator": operator,
        "slot_id": slot.slot_id.hex(),
    }
    with token:
        old, new = _read_pins(label, from_stdin=pin_stdin or not sys.stdin.isatty())
        try:
            change(token, old, new)
        except PinError as exc:
            open_audit(paths.state).append(
                AuditKind.PIN_ERROR, {**row, "attempts_remaining": getattr(exc, "attempts_remaining", None)}
            )
            raise
        finally:
            wipe(old, new)
    open_audit(paths.state).append(AuditKind.PIN_CHANGE, row, actor=operator)
    emit({"changed": label, "kind": slot.kind, "operator": operator}, as_json, f"Changed the PIN of {label}.")
