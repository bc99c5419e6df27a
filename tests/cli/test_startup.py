"""Start-up imports only what the command at hand needs (issue 11, "Start-up").

``kms-agent --help`` imports no command module, no token, chain, crypto or web library, and no rich
(typer's rich help formatting costs more than the rest of start-up); ``kms-agent wallet address
--help`` imports only its own command module. Each case runs the real CLI in a fresh interpreter and
reads ``sys.modules`` at exit. Speed itself is measured by benchmarks, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from agent.cli import COMMANDS, app
from tests.conftest import REPO

#: What no ``--help`` (and no usage error) may import: heavy third-party stacks, and rich.
HEAVY = (
    "fastapi",
    "pydantic",
    "uvicorn",
    "httpx",
    "eth_account",
    "embit",
    "coincurve",
    "cryptography",
    "fido2",
    "ykman",
    "yubikit",
    "smartcard",
    "cbor2",
    "mnemonic",
    "shamir_mnemonic",
    "prometheus_client",
    "apprise",
    "rich",
    "markdown_it",
    "pygments",
)

#: The agent's own layers below the CLI.
LAYERS = ("agent.vault", "agent.tokens", "agent.chains", "agent.withdrawals", "agent.audit", "agent.service")

_PROBE = """
import contextlib, io, sys
from agent.cli import main
out = io.StringIO()
try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
modules = sorted(sys.modules)  # before this probe imports json
import json
print(json.dumps({"exit": code, "stdout": out.getvalue(), "modules": modules}))
"""


def _run(tmp_path: Path, *args: str) -> tuple[int, str, set[str]]:
    """``kms-agent ARGS`` in a fresh interpreter: its exit code, its stdout and every module it imported."""
    env = {**os.environ, "KMS_AGENT_HOME": str(tmp_path / "kms")}
    env.pop("KMS_AGENT_LOG_LEVEL", None)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=True
    )
    result = json.loads(proc.stdout)
    return result["exit"], result["stdout"], set(result["modules"])


def _under(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def _command_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith("agent.cli.") and m.endswith("_cmd"))


def test_help_imports_no_command_module_and_nothing_heavy(tmp_path: Path) -> None:
    code, stdout, modules = _run(tmp_path, "--help")
    assert code == 0
    assert "Usage: kms-agent" in stdout
    assert _under(modules, HEAVY) == []
    assert _under(modules, LAYERS) == []
    assert _command_modules(modules) == []
    # Needed only by some commands (or by --version, --json and logging): imported where they are used.
    assert _under(modules, ("logging", "json", "getpass", "importlib.metadata", "agent.cli.context")) == []


def test_no_arguments_prints_the_help_without_loading_commands(tmp_path: Path) -> None:
    code, stdout, modules = _run(tmp_path)
    assert code == 2
    assert "Usage: kms-agent" in stdout
    assert _command_modules(modules) == []
    assert _under(modules, HEAVY) == []


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (("wallet", "address", "--help"), "agent.cli.wallet_cmd"),
        (("wallet", "--help"), "agent.cli.wallet_cmd"),
        (("serve", "--help"), "agent.cli.serve_cmd"),
        (("request", "create", "--help"), "agent.cli.withdraw_cmd"),
        (("report", "withdrawals", "--help"), "agent.cli.audit_cmd"),
    ],
)
def test_command_help_imports_only_its_own_module(tmp_path: Path, args: tuple[str, ...], module: str) -> None:
    code, stdout, modules = _run(tmp_path, *args)
    assert code == 0
    assert f"Usage: kms-agent {' '.join(a for a in args if a != '--help')}" in stdout
    assert _command_modules(modules) == [module]
    assert _under(modules, HEAVY) == []
    assert _under(modules, LAYERS) == []


def test_a_mistyped_command_loads_nothing_heavy(tmp_path: Path) -> None:
    code, _, modules = _run(tmp_path, "wallt")
    assert code == 2
    assert _under(modules, HEAVY) == []


def test_the_listed_commands_are_the_commands() -> None:
    """``COMMANDS`` (what ``kms-agent --help`` lists without importing) matches the real commands."""
    root = typer.main.get_command(app)
    built = dict(root.commands.items())  # type: ignore[attr-defined]
    assert list(built) == list(COMMANDS)
    for name, cmd in built.items():
        assert cmd.name == name
        assert cmd.get_short_help_str(limit=sys.maxsize) == COMMANDS[name].help, name
    modules = {p.stem for p in (REPO / "agent" / "cli").glob("*_cmd.py")}
    assert modules == {entry.module for entry in COMMANDS.values()}, "a command module that nothing registers"


def test_help_lists_every_command_with_its_whole_first_sentence(tmp_path: Path) -> None:
    _, stdout, _ = _run(tmp_path, "--help")
    listing = " ".join(stdout.partition("Commands:")[2].split())
    for name, entry in COMMANDS.items():
        assert f"{name} {entry.help}" in listing
