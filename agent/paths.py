"""Where one agent's data lives: the data directory and the files in it (README, "Scripting contract")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "KMS_AGENT_HOME"


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "kms-agent"


@dataclass(frozen=True)
class Paths:
    home: Path

    @classmethod
    def resolve(cls, home: Path | None = None) -> Paths:
        env = os.environ.get(HOME_ENV)
        return cls((home or (Path(env) if env else default_home())).expanduser().absolute())

    @property
    def vault(self) -> Path:
        return self.home / "wallet.dat"

    @property
    def state(self) -> Path:
        return self.home / "state"

    @property
    def pin(self) -> Path:
        return self.state / "vault-pin.json"
