"""wallet.dat v1: the vault's public verbs (spec: docs/wallet-format.md).

``create_vault`` -> ``PendingVault.commit``; ``PublicVault.load`` (no token); ``PublicVault.unlock``
(a quorum of touches) or ``PublicVault.recover`` (recovery words) -> ``UnlockedVault``; ``save``.
The header is a frozen :class:`VaultHeader` (operators, slots, recovery, wallet rows; the policy
document stays an opaque map that :mod:`agent.policy` parses). This package never imports fido2,
yubikit or agent.policy: tokens come in through :mod:`agent.tokens.base`.
"""

from agent.vault.records import OperatorEntry, RecoveryEntry, SlotEntry, VaultHeader, WalletRow
from agent.vault.vault import (
    PendingVault,
    PublicVault,
    TokenFinder,
    Touch,
    UnlockedVault,
    create_vault,
    unlock_digest,
)

__all__ = [
    "OperatorEntry",
    "PendingVault",
    "PublicVault",
    "RecoveryEntry",
    "SlotEntry",
    "TokenFinder",
    "Touch",
    "UnlockedVault",
    "VaultHeader",
    "WalletRow",
    "create_vault",
    "unlock_digest",
]
