"""Simulated tokens keep their secrets in files: a vault enrolled with them holds no mainnet value.

Refused as early as possible (generate, store, request) unless the operator says otherwise with
``KMS_AGENT_ALLOW_SIMULATED_MAINNET=1`` (README, "Scripting contract").
"""

from __future__ import annotations

import os

from agent.errors import UsageError

ALLOW_SIM_MAINNET_ENV = "KMS_AGENT_ALLOW_SIMULATED_MAINNET"


def refuse_simulated_mainnet(*, simulated: bool, testnet: bool, what: str) -> None:
    """:raises UsageError: a mainnet ``what`` on a simulated vault, without the override."""
    if simulated and not testnet and os.environ.get(ALLOW_SIM_MAINNET_ENV) != "1":
        raise UsageError(
            f"this vault is enrolled with SIMULATED tokens: refusing a mainnet {what}",
            hint=f"use --testnet wallets, enrol hardware tokens, or set {ALLOW_SIM_MAINNET_ENV}=1 "
            "if you really mean it",
        )
