"""The CLI's scripting contract: every command that prints data takes --json; exit codes are documented."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main

from agent.cli import app
from agent.errors import EXIT_CODES, KmsAgentError

#: Commands that print no data (only a notice on stderr), or whose output is JSON already.
NO_DATA = {"sim unplug", "sim plug", "sim pcsc", "policy show", "serve"}  # serve reports on stderr


def _commands(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        if hasattr(cmd, "commands"):
            out += _commands(cmd, full + " ")
        else:
            out.append((full, cmd))
    return out


def test_every_data_command_has_json() -> None:
    root = typer.main.get_command(app)
    assert len(_commands(root)) > 30
    missing = [
        name for name, cmd in _commands(root) if name not in NO_DATA and not any("--json" in p.opts for p in cmd.params)
    ]
    assert missing == []


def test_every_exit_code_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", readme, flags=re.M)}
    assert documented == set(EXIT_CODES)

    def classes(cls: type[Any]) -> list[type[Any]]:
        return [cls, *[c for sub in cls.__subclasses__() for c in classes(sub)]]

    assert {c.exit_code for c in classes(KmsAgentError)} <= set(EXIT_CODES)  # type: ignore[attr-defined]
