"""Private, atomic, locked JSON files under ``<home>/sim`` for the simulated FIDO2 tokens.

Readers never lock: a writer replaces the whole file with ``rename``, so a reader sees the old or
the new version, never half of one. Read-modify-write sequences hold an exclusive ``flock`` on a
sidecar ``.lock`` file, so two processes (or two connections in one process) never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: How often a blocked ``locked()`` retries and calls its ``waiting`` callback.
LOCK_POLL_SECONDS = 0.05


def sim_dir(home: Path) -> Path:
    """``<home>/sim``, created 0700 if missing (it holds simulator private keys and PINs)."""
    directory = Path(home) / "sim"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


@contextlib.contextmanager
def locked(lock_path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``; call ``waiting`` about every 50 ms while blocked.

    ``waiting`` may raise to give up (the authenticator uses it to answer a host CANCEL).
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if waiting is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waiting()
                    time.sleep(LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Replace ``path`` atomically with mode 0600 (the same durable write wallet.dat gets)."""
    from agent.files import atomic_write

    atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode())
