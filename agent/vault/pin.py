"""What this agent remembers about its vault, kept outside wallet.dat (DESIGN §3, rollback refusal).

Restoring an old wallet.dat would revive revoked token slots and old policy, and swapping in a
vault built with an attacker's own data key would pass every MAC. So the agent pins the vault id,
the header-signing key and the newest (generation, header MAC) it has seen, and refuses anything
older, forked, or signed by another key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StateError, VaultRollback, VaultUntrusted
from agent.files import atomic_write, check_private
from agent.vault.primitives import fingerprint


@dataclass(frozen=True)
class VaultPin:
    vault_id: bytes
    signing_key: bytes
    generation: int
    header_mac: bytes

    def to_json(self) -> dict[str, object]:
        return {
            "vault_id": self.vault_id.hex(),
            "signing_key": self.signing_key.hex(),
            "fingerprint": fingerprint(self.signing_key),
            "generation": self.generation,
            "header_mac": self.header_mac.hex(),
        }


def load_pin(path: Path) -> VaultPin | None:
    if not path.exists():
        return None
    check_private(path)
    try:
        raw = json.loads(path.read_text())
        return VaultPin(
            bytes.fromhex(raw["vault_id"]),
            bytes.fromhex(raw["signing_key"]),
            int(raw["generation"]),
            bytes.fromhex(raw["header_mac"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"the vault pin file {path} is corrupt ({type(exc).__name__})") from None


def save_pin(path: Path, pin: VaultPin) -> None:
    atomic_write(path, (json.dumps(pin.to_json(), indent=2, sort_keys=True) + "\n").encode())


def check_pin(pin: VaultPin | None, *, vault_id: bytes, signing_key: bytes, generation: int, header_mac: bytes) -> None:
    """Raise unless the file is the pinned vault at the pinned generation or newer."""
    if pin is None:
        raise VaultUntrusted(
            "this agent has not pinned a vault yet, so it cannot tell this wallet.dat from an impostor",
            hint=f"if {fingerprint(signing_key)} is the fingerprint printed at init, "
            "run `kms-agent vault trust` with it",
        )
    if vault_id != pin.vault_id or signing_key != pin.signing_key:
        raise VaultUntrusted(
            "wallet.dat is not the vault this agent trusts "
            f"(its signing key {fingerprint(signing_key)}, pinned {fingerprint(pin.signing_key)})"
        )
    if generation < pin.generation:
        raise VaultRollback(
            f"wallet.dat is generation {generation}, older than generation {pin.generation} "
            "that this agent has already seen: refusing a rolled-back vault",
            hint="restore the newest backup; an old file can revive revoked tokens",
        )
    if generation == pin.generation and header_mac != pin.header_mac:
        raise VaultRollback(
            f"wallet.dat generation {generation} differs from the copy this agent saw at that generation "
            "(a forked or replayed vault)"
        )
