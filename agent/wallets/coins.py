"""Coins a caller says a wallet owns, read from a JSON file (the agent talks to no node).

``[{"txid", "vout", "amount", "address" | "index"[, "prev_tx"]}]``: ``index`` derives the address
from the wallet's xpub; ``prev_tx`` (hex) lets legacy inputs be checked against the previous output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.errors import UsageError
from agent.vault.records import WalletRow


def read_utxos(path: Path, chain: Any, wallet: WalletRow) -> list[Any]:
    """:raises UsageError: the file is missing, not JSON, or a coin lacks a field (never a traceback)."""
    from agent.chains.utxo import Utxo

    try:
        raw = json.loads(path.read_text())
        coins = []
        for c in raw:
            address = c.get("address")
            if address is None:  # derive from the wallet index the caller names
                if wallet.xpub is None:
                    raise KeyError("xpub")  # a private-key wallet: each coin must name its address
                address = chain.address_from_xpub(wallet.xpub, int(c["index"]), testnet=wallet.testnet)
            prev = bytes.fromhex(c["prev_tx"]) if c.get("prev_tx") else None
            coins.append(Utxo(str(c["txid"]), int(c["vout"]), int(c["amount"]), address, prev))
        return coins
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"cannot read UTXOs from {path}: {type(exc).__name__} {exc}") from None
