"""Child process for the crash-safety tests: opens the vault with recovery words, then saves.

Prints "ready" once, then one line per completed save: the generation now on disk. Saves forever,
or once with ``once`` as the second argument (a migration, killed at a named crash point).
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent.vault.vault import PublicVault


def main() -> None:
    home = Path(sys.argv[1])
    once = sys.argv[2:] == ["once"]
    words = sys.stdin.read().strip().split("\n")
    vault = PublicVault.load(home / "wallet.dat", home / "state" / "vault-pin.json").recover(words)
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        vault.add_wallet(
            wallet_type="PRIVATE_KEY", chain="ETH", testnet=True, secret=bytearray(b"%064x" % n), address=f"0x{n:040x}"
        )
        vault.save()
        print(vault.header.generation, flush=True)
        if once:
            return


if __name__ == "__main__":
    main()
