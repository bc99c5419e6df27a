"""The node client for a configured node (one per chain and network; docs/broadcast.md §2)."""

from __future__ import annotations

import importlib

from agent.broadcast.config import NodeConfig, NodeConfigError
from agent.broadcast.nodes import NodeClient, NodeKind


def client_for(config: NodeConfig) -> NodeClient:
    """A new client for ``config``'s node (the caller closes it).

    :raises NodeConfigError: a kind this agent cannot broadcast through directly (``tatum`` is the
        daemon's own path, through Tatum's API).
    """
    if config.kind is NodeKind.EVM_RPC:
        from agent.broadcast.evm_rpc import EvmRpcClient

        return EvmRpcClient(config.url)
    if config.kind is NodeKind.BITCOIN_RPC:
        from agent.broadcast.bitcoin_rpc import BitcoinRpcClient

        return BitcoinRpcClient(config.url)
    if config.kind is NodeKind.ESPLORA:
        # Imported by name: the Esplora client lives in its own module (agent/broadcast/esplora.py).
        try:
            module = importlib.import_module("agent.broadcast.esplora")
        except ModuleNotFoundError:
            raise NodeConfigError("this kms-agent has no Esplora client") from None
        client: NodeClient = module.EsploraClient(config.url)
        return client
    raise NodeConfigError(f"a {config.kind.value} node cannot be used for direct broadcasts")
