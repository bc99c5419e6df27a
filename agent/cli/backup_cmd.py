"""``kms-agent backup ...`` and ``kms-agent restore``: verified copies of wallet.dat, and putting one back.

``backup [DEST]`` is the group's default command (``backup create``), so that ``backup verify`` and
``backup /mnt/usb`` both read naturally. The work is in :mod:`agent.vault.backups`; audit rows are
written here (the vault package knows no audit log).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli import _Group
from agent.cli.context import CliPrompts, Paths, emit, err
from agent.cli.options import Json, Operators, PinStdin
from agent.errors import UsageError, VaultNotFound

RCLONE_PREFIX = "rclone:"


class _DefaultCreate(_Group):
    """``backup ARGS`` runs ``backup create ARGS`` unless ARGS start with a subcommand or ``--help``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["create", *args]
        return super().parse_args(ctx, args)  # type: ignore[no-any-return]


backup_app = typer.Typer(help="back up wallet.dat (verified, still encrypted), verify a backup", cls=_DefaultCreate)


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup", cls=_DefaultCreate)
    app.command("restore")(restore)


Keep = Annotated[
    int | None,
    typer.Option("--keep", min=1, help="copies of this vault to keep in DEST (default: $KMS_AGENT_BACKUP_KEEP or 10)"),
]


@backup_app.command("create")
def create(
    dest: Annotated[
        str | None,
        typer.Argument(help="a directory, or rclone:REMOTE:PATH (default: $KMS_AGENT_BACKUP_DIR or DATA_DIR/backups)"),
    ] = None,
    rclone: Annotated[
        str | None, typer.Option("--rclone", help="also copy the backup to this rclone REMOTE:PATH and check it")
    ] = None,
    keep: Keep = None,
    as_json: Json = False,
) -> None:
    """write a verified copy of wallet.dat and its manifest (the default: `backup [DEST]`)"""
    from agent.cli.session import load_public
    from agent.vault.backups import backup_dir, rclone_copy, write_backup

    paths = Paths.resolve()
    load_public(paths)  # the live file is the pinned vault, not rolled back, before it is copied anywhere
    if dest is not None and dest.startswith(RCLONE_PREFIX):
        if rclone is not None:
            raise UsageError("name one rclone destination: rclone:REMOTE:PATH or --rclone REMOTE:PATH")
        rclone, dest = dest[len(RCLONE_PREFIX) :], None
    if rclone is not None and ":" not in rclone:
        raise UsageError(f"{rclone!r} is not an rclone REMOTE:PATH")
    target = Path(dest).expanduser().absolute() if dest is not None else backup_dir(paths.vault)
    made = write_backup(paths.vault, target, pin_path=paths.pin, keep=keep, full=True)
    result: dict[str, Any] = {**made.to_json(), "checks": ["sha256", "structure", "signature", "pinned-key", "index"]}
    human = (
        f"Backed up generation {made.manifest.generation} to {made.path}"
        + (" (an identical copy was already there)" if made.reused else "")
        + f"; read back and verified (sha256 {made.manifest.sha256[:16]}...)."
    )
    if rclone is not None:
        result["rclone"] = rclone_copy(made, rclone)
        human += f"\nCopied to {result['rclone']['remote']} and read back: sha256 matches."
    emit(result, as_json, human)


@backup_app.command("verify")
def verify(
    path: Annotated[
        Path | None, typer.Argument(help="the backup copy (default: the newest in the configured directory)")
    ] = None,
    no_touch: Annotated[
        bool, typer.Option("--no-touch", help="only the token-free checks: no quorum is asked to unlock the copy")
    ] = False,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """check a backup without a token, then prove with a quorum of touches that it unlocks (audited)"""
    from agent.vault.backups import backup_dir, backups_in, check_copy, verify_digest

    paths = Paths.resolve()
    if path is None:
        found = backups_in(backup_dir(paths.vault))
        if not found:
            raise VaultNotFound(
                f"no backup in {backup_dir(paths.vault)}", hint="name a copy, or make one with `kms-agent backup`"
            )
        path = found[-1].path
    checked = check_copy(path, pin_path=paths.pin if paths.pin.exists() else None, full=True)
    checked.close()
    h = checked.header
    result: dict[str, Any] = {
        "ok": True,
        "path": str(path),
        "vault_id": h.vault_id.hex(),
        "generation": h.generation,
        "fingerprint": checked.fingerprint,
        "sha256": checked.sha256,
        "manifest": checked.manifest is not None,
        "checks": checked.checks,
        "wallets": h.wallet_count,
    }
    if checked.manifest is None:
        err(f"warning: {path} has no manifest next to it; its sha256 is {checked.sha256}")
    if not no_touch:
        result["unlocked"] = _prove_unlock(paths, path, verify_digest(checked.sha256), operator, pin_stdin)
        result["checks"].append("unlock")
    emit(
        result,
        as_json,
        f"OK: {path} is generation {h.generation} of vault {h.vault_id.hex()}, signed by {checked.fingerprint}"
        + (
            "; " + ", ".join(t["operator"] for t in result["unlocked"]["touched"]) + " unlocked it."
            if "unlocked" in result
            else " (token-free checks only)."
        ),
    )


def _prove_unlock(
    paths: Paths, path: Path, digest: bytes, operator: list[str] | None, pin_stdin: bool
) -> dict[str, Any]:
    """Open the copy (not wallet.dat) with a quorum of touches over ``digest``, read a wallet, audit it."""
    from agent.audit import AuditKind, AuditLog
    from agent.tokens.discovery import find_token
    from agent.vault.vault import PublicVault

    public = PublicVault.load(path, paths.pin, require_pin=False)
    home = paths.home
    opened = public.unlock(
        lambda slot: find_token(slot, home), CliPrompts(paths, pin_stdin=pin_stdin), operators=operator, digest=digest
    )
    try:
        first = next(iter(opened.wallets()), None)
        if first is not None:  # the entry keys work too, not just the body
            from agent.vault import primitives as p

            _, secret = opened.read_secret(first.signature_id)
            p.wipe(secret)
        touches = [
            {
                "operator": t.operator,
                "token": t.token_label,
                "signature": t.approval.signature.hex(),
                "sign_count": t.approval.sign_count,
            }
            for t in opened.touches
        ]
        who = [t.operator for t in opened.touches]
        AuditLog(paths.state).append(
            AuditKind.UNLOCK,
            {
                "purpose": "backup verify",
                "digest": digest.hex(),
                "backup": str(path),
                "generation": public.header.generation,
                "touches": touches,
            },
            actor=",".join(who),
        )
    finally:
        opened.close()
    return {"quorum": public.header.quorum, "touched": [{k: t[k] for k in ("operator", "token")} for t in touches]}


def restore(
    path: Annotated[Path, typer.Argument(help="the backup copy to put in place of wallet.dat")],
    allow_rollback: Annotated[
        bool,
        typer.Option(
            "--allow-rollback", help="restore an older generation than the pinned one (re-pins; audited and alerted)"
        ),
    ] = False,
    trust: Annotated[
        str | None,
        typer.Option("--trust", help="the fingerprint printed at init: needed when nothing is pinned (a new machine)"),
    ] = None,
    as_json: Json = False,
) -> None:
    """replace wallet.dat with a verified backup; an older generation only when explicitly allowed"""
    from agent.audit import AuditKind, AuditLog
    from agent.vault.backups import Checked, describe
    from agent.vault.backups import restore as do_restore

    paths = Paths.resolve()

    def record(checked: Checked, diff: dict[str, Any], rollback: bool, pinned: int | None) -> None:
        h = checked.header
        payload = {
            "rule": "vault-restored",
            "detail": (
                f"wallet.dat restored from {path} (generation {h.generation}"
                + (f", pinned {pinned}" if pinned is not None else ", nothing pinned")
                + ")"
                + (": rolled back, reviving " + "; ".join(describe(diff)) if rollback and diff else "")
            ),
            "backup": str(path),
            "sha256": checked.sha256,
            "generation": h.generation,
            "pinned_generation": pinned,
            "revived": diff,
        }
        with AuditLog(paths.state).transaction() as rows:
            rows.append(AuditKind.ALERT, payload)
            if rollback:
                rows.append(AuditKind.ALERT, {"rule": "vault-rollback", "detail": payload["detail"]})

    done = do_restore(path, paths.vault, paths.pin, allow_rollback=allow_rollback, trust=trust, record=record)
    if done.rollback:
        err(f"kms-agent: ALERT: wallet.dat rolled back to generation {done.generation}; this is logged")
    result = {
        "restored": str(path),
        "vault": str(done.path),
        "generation": done.generation,
        "previous_generation": done.previous_generation,
        "rollback": done.rollback,
        "revived": done.revived,
        "sha256": done.sha256,
        "pin": done.pin.to_json(),
        "previous_file_backup": str(done.safety_backup.path) if done.safety_backup else None,
    }
    lines = describe(done.revived)
    emit(
        result,
        as_json,
        f"Restored generation {done.generation} from {path}; the pin now names it."
        + ("".join(f"\n  revived: {line}" for line in lines) if done.rollback else ""),
    )
