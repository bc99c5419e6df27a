"""Opening the vault with the recovery officers' shares: a decision like any other, so it is audited.

Recovery bypasses the operator quorum entirely, so whoever holds a threshold of shares holds every
key. The moment shares open the vault, an ``recovery`` row and an ``alert`` row are committed
together, before anything else happens with the opened vault (wrong shares open nothing and leave
the log as it was; their failure goes to the events log like a wrong PIN).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from agent.audit import AuditKind, AuditLog
from agent.vault.vault import PublicVault, UnlockedVault


def open_with_recovery(vault: PublicVault, shares: Sequence[str], *, state_dir: Path, purpose: str) -> UnlockedVault:
    """:raises KmsAgentError: the shares do not open the vault (nothing is written)."""
    opened = vault.recover(shares)
    try:
        detail = f"the vault was opened with {len(shares)} recovery shares ({purpose})"
        with AuditLog(state_dir).transaction() as rows:
            rows.append(
                AuditKind.RECOVERY,
                {"purpose": purpose, "shares_used": len(shares), "generation": vault.header.generation},
            )
            rows.append(AuditKind.ALERT, {"rule": "recovery-used", "detail": detail})
    except BaseException:
        opened.close()
        raise
    print(f"kms-agent: ALERT: {detail}; this is logged", file=sys.stderr, flush=True)
    return opened
