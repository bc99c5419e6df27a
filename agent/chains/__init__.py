"""Chain registry: ``get_chain("btc")`` returns the module object for a Tatum chain name.

Importing this package is cheap (no chain library is loaded): each chain module imports embit or
eth-account inside the functions that need them, because the CLI must answer in well under 0.3 s.

Families:

* UTXO (embit): BTC, LTC, DOGE (:mod:`agent.chains.utxo`) and BCH (:mod:`agent.chains.bch`).
* EVM (eth-account): ETH, BSC, MATIC, CELO, KLAY, ONE, XDC, KCS (:mod:`agent.chains.evm`).
"""

from __future__ import annotations

from importlib import import_module

from agent.chains.base import (
    Chain,
    Family,
    FeeEstimate,
    Owned,
    SignedTx,
    TokenCall,
    TxInput,
    TxKind,
    TxOutput,
    TxSummary,
)
from agent.errors import UsageError

__all__ = [
    "Chain",
    "Family",
    "FeeEstimate",
    "Owned",
    "SignedTx",
    "TokenCall",
    "TxInput",
    "TxKind",
    "TxOutput",
    "TxSummary",
    "get_chain",
    "supported_chains",
]

#: Tatum name -> (module, attribute). Order is the order ``supported_chains()`` reports.
_REGISTRY: dict[str, tuple[str, str]] = {
    "BTC": ("agent.chains.utxo", "BTC"),
    "LTC": ("agent.chains.utxo", "LTC"),
    "DOGE": ("agent.chains.utxo", "DOGE"),
    "BCH": ("agent.chains.bch", "BCH"),
    "ETH": ("agent.chains.evm", "ETH"),
    "BSC": ("agent.chains.evm", "BSC"),
    "MATIC": ("agent.chains.evm", "MATIC"),
    "CELO": ("agent.chains.evm", "CELO"),
    "KLAY": ("agent.chains.evm", "KLAY"),
    "ONE": ("agent.chains.evm", "ONE"),
    "XDC": ("agent.chains.evm", "XDC"),
    "KCS": ("agent.chains.evm", "KCS"),
}


def supported_chains() -> list[str]:
    """Canonical (Tatum) names of every chain this agent can derive, decode and sign for."""
    return list(_REGISTRY)


def get_chain(name: str) -> Chain:
    """The chain object for ``name`` (case-insensitive).

    :raises UsageError: unknown chain.
    """
    key = name.strip().upper() if isinstance(name, str) else ""
    if key not in _REGISTRY:
        raise UsageError(f"unknown chain {name!r} (supported: {', '.join(_REGISTRY)})")
    module, attr = _REGISTRY[key]
    chain: Chain = getattr(import_module(module), attr)
    return chain
