"""``kms-agent status``: what this agent has, without touching any token."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agent.cli.context import Paths, emit


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
        """show the data directory, the vault and its operators (no token needed)"""
        from agent.cli.session import load_public
        from agent.errors import VaultNotFound

        paths = Paths.resolve()
        result: dict[str, Any] = {"home": str(paths.home), "vault": str(paths.vault), "exists": paths.vault.exists()}
        try:
            vault = load_public(paths)
        except VaultNotFound:
            emit(result, as_json, f"home: {paths.home}\nno vault yet: create one with `kms-agent init`")
            return
        h = vault.header
        result.update(
            {
                "vault_id": h.vault_id.hex(),
                "fingerprint": vault.fingerprint,
                "generation": h.generation,
                "quorum": h.quorum,
                "operators": len(h.operators),
                "tokens": len(h.slots),
                "wallets": h.wallet_count,
                "simulated": vault.simulated,
            }
        )
        emit(
            result,
            as_json,
            "\n".join(
                [
                    f"home:        {paths.home}",
                    f"vault:       {paths.vault} (generation {h.generation})",
                    f"fingerprint: {vault.fingerprint}",
                    f"quorum:      {h.quorum} of {len(h.operators)} operators ({len(h.slots)} tokens)",
                    f"wallets:     {h.wallet_count}",
                    f"simulated:   {'yes (INSECURE)' if vault.simulated else 'no'}",
                ]
            ),
        )
