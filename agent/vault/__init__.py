"""wallet.dat v1: the vault's public verbs (spec: docs/wallet-format.md).

``create_vault`` -> ``PendingVault.commit``; ``PublicVault.load`` (no token); ``PublicVault.unlock``
(a quorum of touches) or ``PublicVault.recover`` (recovery words) -> ``UnlockedVault``; ``save``.
This package never imports fido2 or yubikit: tokens come in through :mod:`agent.tokens.base`.
"""

from agent.vault.vault import (
    PendingVault,
    PublicVault,
    TokenFinder,
    Touch,
    UnlockedVault,
    create_vault,
    unlock_digest,
)

__all__ = ["PendingVault", "PublicVault", "TokenFinder", "Touch", "UnlockedVault", "create_vault", "unlock_digest"]
