"""Operational security events (failed unlocks, PIN errors, refused touches), for anomaly reports.

Kept apart from the audit log on purpose: bad input must leave wallet.dat, the audit log and the
queue exactly as they were, yet operators still need to see "three wrong PINs for sim:alice last
night". One JSON line per event in ``$KMS_AGENT_HOME/state/events.jsonl`` (0600): the command,
the error class and its message. Messages never contain secrets (the error tree guarantees it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from agent.errors import ApprovalError, KmsAgentError, PolicyDenied, TokenError, VaultError

#: Which failures are worth a line: the ones an attacker or a failing token produces.
RECORDED = (TokenError, ApprovalError, VaultError)


def record(state_dir: Path, command: str, exc: KmsAgentError) -> None:
    """Best effort: an unwritable events file must never mask the real error."""
    if not isinstance(exc, RECORDED) or isinstance(exc, PolicyDenied):
        return
    note(state_dir, command, type(exc).__name__, exc.message)


def note(state_dir: Path, command: str, error: str, message: str) -> None:
    """Append one event that is not an exception (e.g. an alert no channel took). Best effort, never raises.

    ``message`` MUST hold no secret: the caller builds it from names and counts only.
    """
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(state_dir / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        line = (
            json.dumps({"ts": int(time.time()), "command": command, "error": error, "message": message}, sort_keys=True)
            + "\n"
        )
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def read(state_dir: Path, *, since: int | None = None) -> list[dict[str, Any]]:
    path = state_dir / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if since is None or event.get("ts", 0) >= since:
            out.append(event)
    return out
