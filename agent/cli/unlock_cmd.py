"""``kms-agent unlock``: prove a quorum can open the vault, and report who touched."""

from __future__ import annotations

import typer

from agent.cli.context import Paths, emit
from agent.cli.options import Json, Operators, PinStdin


def register(app: typer.Typer) -> None:
    @app.command("unlock")
    def unlock_cmd(
        operator: Operators = None,
        pin_stdin: PinStdin = False,
        as_json: Json = False,
    ) -> None:
        """open the vault with a quorum of touches, check it, and close it again"""
        from agent.cli.session import unlock

        paths = Paths.resolve()
        with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
            touches = [
                {
                    "operator": t.operator,
                    "token": t.token_label,
                    "sign_count": t.approval.sign_count,
                    "user_verified": t.approval.user_verified,
                }
                for t in vault.touches
            ]
            result = {
                "unlocked": True,
                "quorum": vault.header.quorum,
                "touched": touches,
                "wallets": vault.header.wallet_count,
            }
        emit(
            result,
            as_json,
            "Unlocked with "
            + ", ".join(f"{t['operator']} ({t['token']})" for t in touches)
            + f"; quorum {result['quorum']} met. The key was wiped again.",
        )
