"""``kms-agent vault ...``: checks that need no token, and trusting a restored vault."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agent.cli.context import Paths, emit, err

app = typer.Typer(help="check and trust wallet.dat", no_args_is_help=True)


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
