"""``kms-agent doctor``: explain what stands between this machine and its tokens."""

from __future__ import annotations

import glob
import os
import shutil
from typing import Annotated, Any

import typer

from agent.cli.context import Paths, emit


def _check_hidraw() -> dict[str, Any]:
    nodes = sorted(glob.glob("/dev/hidraw*"))
    unreadable = [n for n in nodes if not os.access(n, os.R_OK | os.W_OK)]
    ok = not unreadable
    hint = None if ok else "install udev/70-kms-agent-fido.rules (see udev/README.md) and re-plug the token"
    return {
        "check": "hidraw access",
        "ok": ok,
        "detail": f"{len(nodes)} hidraw nodes, {len(unreadable)} unreadable",
        "unreadable": unreadable,
        "hint": hint,
    }


def _check_fido2() -> dict[str, Any]:
    from agent.tokens.discovery import _real_fido2_devices

    labels = [label for label, _ in _real_fido2_devices()]
    return {"check": "FIDO2 tokens", "ok": True, "detail": f"{len(labels)} found", "tokens": labels, "hint": None}


def _check_pcscd() -> dict[str, Any]:
    binary = shutil.which("pcscd") or (os.path.exists("/usr/sbin/pcscd") and "/usr/sbin/pcscd")
    try:
        from smartcard.System import readers

        names = [str(r) for r in readers()]
        return {
            "check": "pcscd",
            "ok": True,
            "detail": f"running, {len(names)} readers",
            "readers": names,
            "hint": None,
        }
    except Exception as exc:
        hint = "start it: `systemctl start pcscd`" if binary else "install it: `apt-get install pcscd`"
        return {"check": "pcscd", "ok": False, "detail": f"not reachable ({type(exc).__name__})", "hint": hint}


def _check_piv() -> dict[str, Any]:
    """Every PIV card in a PC/SC reader, YubiKey or not, and why kms-agent cannot use it if it cannot."""
    from agent.tokens.inventory import list_piv_cards

    cards = list_piv_cards()
    unsupported = [c for c in cards if not c.supported]
    lines = [c.summary() for c in cards]
    return {
        "check": "PIV cards",
        # Informational: a card kms-agent cannot use is not a fault of this machine.
        "ok": not unsupported,
        "detail": f"{len(cards)} found, {len(unsupported)} unsupported",
        "cards": [c.to_json() for c in cards],
        "lines": lines,
        "hint": "kms-agent enrols YubiKey 5.3+ PIV applets (docs/tokens.md)" if unsupported else None,
    }


def _check_vault(paths: Paths) -> dict[str, Any]:
    from agent.errors import KmsAgentError
    from agent.vault.vault import PublicVault

    if not paths.vault.exists():
        return {"check": "vault", "ok": True, "detail": f"none yet at {paths.vault}", "hint": "kms-agent init"}
    try:
        vault = PublicVault.load(paths.vault, paths.pin)
    except KmsAgentError as exc:
        return {"check": "vault", "ok": False, "detail": exc.message, "hint": exc.hint}
    return {
        "check": "vault",
        "ok": True,
        "detail": f"generation {vault.header.generation}, "
        f"{'SIMULATED tokens' if vault.simulated else 'hardware tokens'}",
        "hint": None,
    }


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
        """check token access (udev, pcscd), tokens present and the vault; exit 1 if something is wrong"""
        paths = Paths.resolve()
        checks = [_check_hidraw(), _check_fido2(), _check_pcscd(), _check_piv(), _check_vault(paths)]
        lines = []
        for c in checks:
            lines.append(f"[{'ok' if c['ok'] else '!!'}] {c['check']}: {c['detail']}")
            lines.extend(f"     {line}" for line in c.get("lines", []))
            if c["hint"] and not c["ok"]:
                lines.append(f"     hint: {c['hint']}")
        ok = all(c["ok"] for c in checks if c["check"] not in ("pcscd", "PIV cards"))
        emit({"ok": ok, "checks": checks}, as_json, "\n".join(lines))
        if not ok:
            raise typer.Exit(1)
