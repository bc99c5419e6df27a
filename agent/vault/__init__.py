"""wallet.dat (format v2; v1 is read and migrated): the vault's public verbs (spec: docs/wallet-format.md).

``create_vault`` -> ``PendingVault.commit``; ``PublicVault.load`` (no token); ``PublicVault.unlock``
(a quorum of touches) or ``PublicVault.recover`` (recovery words) -> ``UnlockedVault``; ``save``.
The header is a frozen :class:`VaultHeader` (operators, slots, recovery, the signed root of the
wallet index; the policy document stays an opaque map that :mod:`agent.policy` parses). Wallet rows
live in the index (:mod:`agent.vault.index`): ``wallet(id)`` reads one, ``wallets()`` streams all.
This package never imports fido2, yubikit or agent.policy: tokens come in through :mod:`agent.tokens.base`.
"""

from agent.vault.records import IndexRoot, OperatorEntry, RecoveryEntry, SlotEntry, VaultHeader, WalletRow
from agent.vault.vault import (
    PendingVault,
    PublicVault,
    TokenFinder,
    Touch,
    UnlockedVault,
    Wallets,
    create_vault,
    unlock_digest,
)

__all__ = [
    "IndexRoot",
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
    "Wallets",
    "create_vault",
    "unlock_digest",
]
