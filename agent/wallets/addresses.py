"""Deposit addresses from the signed public index: no token, no secret (CLI and API alike)."""

from __future__ import annotations

from agent.errors import UsageError
from agent.vault.records import WalletRow

MAX_INDEX = 2**31 - 1


def deposit_address(wallet: WalletRow, index: int) -> str:
    """Address ``index`` of ``wallet``: derived from its xpub, or a private-key wallet's one address.

    :raises UsageError: an index out of range, or not 0 for a private-key wallet.
    """
    from agent.chains import get_chain

    if not 0 <= index <= MAX_INDEX:
        raise UsageError("index must be between 0 and 2^31-1")
    if wallet.xpub:
        address: str = get_chain(wallet.chain).address_from_xpub(wallet.xpub, index, testnet=wallet.testnet)
        return address
    if index == 0 and wallet.address is not None:
        return wallet.address
    raise UsageError("a private-key wallet has one address: use index 0")
