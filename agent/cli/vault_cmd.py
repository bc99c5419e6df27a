"""``kms-agent vault ...``: checks that need no token, and trusting a restored vault."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agent.cli.context import Paths, emit, err
from agent.cli.options import DropAbsent, Json, Operators, PinStdin

app = typer.Typer(help="check and trust wallet.dat, rotate its data key", no_args_is_help=True)


@app.command("verify")
def verify(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """check structure, signature, pinned key and rollback (no token needed); non-zero if unsound"""
    from agent.cli.session import load_public

    paths = Paths.resolve()
    vault = load_public(paths)
    vault.verify()  # wallet.dat v2: every index node against the signed root (load checks the header)
    h = vault.header
    result: dict[str, Any] = {
        "ok": True,
        "vault": str(paths.vault),
        "vault_id": h.vault_id.hex(),
        "generation": h.generation,
        "fingerprint": vault.fingerprint,
        "checks": ["structure", "signature", "pinned-key", "rollback"],
        "operators": len(h.operators),
        "tokens": len(h.slots),
        "wallets": h.wallet_count,
        "simulated": vault.simulated,
    }
    emit(
        result,
        as_json,
        f"OK: {paths.vault} generation {h.generation} is sound (signed by {vault.fingerprint}, not rolled back).",
    )


@app.command("trust")
def trust(
    fingerprint: Annotated[str, typer.Argument(help="the fingerprint printed at init")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """pin this vault (for example a restored backup on a new machine) after checking its fingerprint"""
    from agent.errors import VaultUntrusted
    from agent.vault.vault import PublicVault

    paths = Paths.resolve()
    vault = PublicVault.load(paths.vault, paths.pin, require_pin=False)
    if fingerprint.replace(":", "").lower() != vault.fingerprint.replace(":", ""):
        raise VaultUntrusted(f"wallet.dat is signed by {vault.fingerprint}, not {fingerprint}: refusing to trust it")
    pin = vault.trust()
    err(f"Pinned vault {pin.vault_id.hex()} at generation {pin.generation}.")
    emit(pin.to_json(), as_json)


# --- rotation (docs/operations.md "Rotating"; docs/wallet-format.md §6.1) ------------------------
def run_rotation(
    paths: Paths,
    vault: Any,
    purpose: str,
    change: dict[str, Any],
    *,
    pin_stdin: bool,
    audit_before: Any = None,
    **plan_args: Any,
) -> dict[str, Any]:
    """Plan a data-key rotation (every remaining token touched once), then commit and audit it.

    ``vault`` is an opened :class:`UnlockedVault` (quorum unlock or recovery); the caller closes it.
    ``audit_before`` (called with the plan, before the audit row) may check more, such as new
    recovery words. Returns what the command prints.
    """
    from agent.audit import AuditKind, AuditLog
    from agent.cli.context import CliPrompts
    from agent.tokens.discovery import find_token
    from agent.vault import rotation

    home = paths.home
    base = vault.header.generation
    planned = rotation.plan(
        vault, lambda slot: find_token(slot, home), CliPrompts(paths, pin_stdin=pin_stdin), **plan_args
    )
    try:
        if audit_before is not None:
            audit_before(planned)
        touches = [*vault.touches, *planned.touches]
        who = sorted({t.operator for t in vault.touches})
        payload = {
            "purpose": purpose,
            "change": change,
            "generation": base,
            "quorum": planned.quorum,
            "operators": [op.name for op in planned.operators],
            "tokens": [s.label for s in planned.slots],
            "dropped": [s.label for s in planned.dropped],
            "fingerprint": planned.fingerprint,
            "touches": [
                {
                    "operator": t.operator,
                    "token": t.token_label,
                    "signature": t.approval.signature.hex(),
                    "sign_count": t.approval.sign_count,
                }
                for t in touches
            ],
        }
    except BaseException:
        planned.wipe()
        raise
    words = list(planned.recovery_words)
    result = {
        "rotated": True,
        "purpose": purpose,
        "generation": None,
        "fingerprint": planned.fingerprint,
        "quorum": planned.quorum,
        "operators": [
            {"name": op.name, "tokens": [s.label for s in planned.slots if s.operator_id == op.operator_id]}
            for op in planned.operators
        ],
        "dropped": [s.label for s in planned.dropped],
        "approved_by": who,
    }
    # The row is appended under the writer lock, after the change is checked and before the save.
    rotation.commit(
        vault,
        planned,
        record=lambda: AuditLog(paths.state).append(AuditKind.UNLOCK, payload, actor=",".join(who) or "recovery"),
    )
    result["generation"] = vault.header.generation
    if words:
        result["recovery_words"] = words
    return result


def rotate_unlocked(
    paths: Paths,
    purpose: str,
    change: dict[str, Any],
    *,
    operators: list[str] | None,
    pin_stdin: bool,
    **plan_args: Any,
) -> dict[str, Any]:
    """A quorum unlocks, then :func:`run_rotation` (``change`` is what its audit row says)."""
    from agent.cli.session import unlock

    with unlock(paths, operators=operators, pin_stdin=pin_stdin) as vault:
        return run_rotation(paths, vault, purpose, change, pin_stdin=pin_stdin, **plan_args)


def rotation_text(result: dict[str, Any]) -> str:
    ops = ", ".join(f"{o['name']} ({', '.join(o['tokens'])})" for o in result["operators"])
    lines = [
        f"Rotated the data key: generation {result['generation']}, quorum {result['quorum']} of "
        f"{len(result['operators'])}: {ops}.",
        f"New vault fingerprint: {result['fingerprint']} (older copies of wallet.dat keep the old one).",
    ]
    if result["dropped"]:
        lines.append(f"Dropped tokens: {', '.join(result['dropped'])}; they open no later copy of wallet.dat.")
    return "\n".join(lines)


@app.command("rotate-key")
def rotate_key(
    drop_absent: DropAbsent = False,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """rotate the data key: a quorum unlocks, then every token is touched once to wrap the new key"""
    paths = Paths.resolve()
    result = rotate_unlocked(
        paths,
        "rotate-key",
        {"drop_absent": drop_absent},
        operators=operator,
        pin_stdin=pin_stdin,
        drop_absent=drop_absent,
    )
    emit(result, as_json, rotation_text(result))
