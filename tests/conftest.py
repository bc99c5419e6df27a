"""Shared fixtures: a private data directory, simulated tokens, and the CLI as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.tokens.sim.prompts import SimulatorPrompts

REPO = Path(__file__).resolve().parent.parent


#: Answers PIN prompts for simulated tokens and records touch notices, as an operator would.
AutoPrompts = SimulatorPrompts


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "kms"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("KMS_AGENT_HOME", str(path))
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "auto")
    return path


@pytest.fixture
def prompts(home: Path) -> AutoPrompts:
    return AutoPrompts(home)


@dataclass
class Cli:
    home: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, input: bytes | None = None, touch: str | None = "auto", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "KMS_AGENT_HOME": str(self.home)}
        if touch is None:
            env.pop("KMS_AGENT_SIM_TOUCH", None)
        else:
            env["KMS_AGENT_SIM_TOUCH"] = touch
        proc = subprocess.run(
            [sys.executable, "-m", "agent", *args],
            input=input if input is not None else b"",
            capture_output=True,
            env=env,
            timeout=timeout,
            cwd=REPO,
        )
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def json(self, *args: str, input: bytes | None = None, touch: str | None = "auto") -> dict:  # type: ignore[type-arg]
        import json

        proc = self(*args, "--json", input=input, touch=touch)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def cli(home: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_AGENT_")}
    # Many CLI tests check mainnet derivations (bc1..., chain id 1) on simulated tokens: allowed here
    # by the documented override; tests/cli/test_cli.py checks the refusal without it.
    env["KMS_AGENT_ALLOW_SIMULATED_MAINNET"] = "1"
    return Cli(home, env)


def init_args(operators: Sequence[str] = ("alice", "bob", "carol"), quorum: int = 2) -> list[str]:
    args = ["init"]
    for name in operators:
        args += ["--operator", f"{name}=sim:{name}"]
    return [*args, "--quorum", str(quorum)]
