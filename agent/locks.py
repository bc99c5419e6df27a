"""Cross-process locks on the data directory: one writer at a time, and one touch per operator at a time.

Two kinds, both ``flock`` on 0600 files under ``<home>/state/locks/`` (the kernel drops a lock
when its holder dies, so a SIGKILL never leaves the directory locked):

* the **writer lock** (``writer.lock``) serialises every state change: each read-modify-write of
  wallet.dat and each decision on a request (approve, reject, sign, expire). Holders keep it for
  milliseconds: never across a PIN prompt or a touch.
* an **operator lock** (``operator-<id>.lock``) is held from just before an operator's token is
  asked to sign an approval until that approval is committed, so that the order in which a token's
  signCount rises is the order in which the agent records it. Without it, two processes approving
  for the same person could commit out of order and look like a cloned token.

Locks are taken with a deadline: past it the caller gets :class:`~agent.errors.StateError` naming
what was busy, never a hang.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from agent.errors import StateError
from agent.files import PRIVATE_FILE, ensure_private_dir

#: Seconds a writer waits for another one. Writers hold the lock for milliseconds, so reaching this
#: means something is wrong (a hung process, a stalled disk) and the operator should hear about it.
WRITER_TIMEOUT = float(os.environ.get("KMS_AGENT_LOCK_TIMEOUT", "60"))
_POLL = 0.002


def locks_dir(state_dir: Path) -> Path:
    return ensure_private_dir(Path(state_dir) / "locks")


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    except OSError as exc:
        raise StateError(f"cannot open the lock file {path}: {exc.strerror or exc}") from None


def _acquire(fd: int, deadline: float | None) -> bool:
    """Poll for the lock until ``deadline`` (monotonic); None means try once."""
    delay = _POLL
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if deadline is None or time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.01)


_held = threading.local()


@contextlib.contextmanager
def writer_lock(state_dir: Path, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the data directory's single-writer lock for the duration of the block.

    Re-entrant within a thread, so a decision that saves wallet.dat (a policy change) can call code
    that takes the lock itself.
    """
    key = str(Path(state_dir).absolute())
    depth: dict[str, int] = getattr(_held, "depth", None) or {}
    _held.depth = depth
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    fd = _open(locks_dir(state_dir) / "writer.lock")
    try:
        wait = WRITER_TIMEOUT if timeout is None else timeout
        if not _acquire(fd, time.monotonic() + wait):
            raise StateError(
                f"another kms-agent process has held the data directory's writer lock for {wait:.0f} s",
                hint="check for a hung kms-agent process (nothing was written)",
            )
        depth[key] = 1
        try:
            yield
        finally:
            depth[key] = 0
    finally:
        os.close(fd)


class OperatorLocks:
    """Operator locks held by this process until :meth:`release` (see the module docstring)."""

    def __init__(self, state_dir: Path, *, timeout: float | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.timeout = WRITER_TIMEOUT if timeout is None else timeout
        self._held: dict[bytes, int] = {}

    def acquire(self, operator_id: bytes, *, wait: bool = True) -> bool:
        """Take ``operator_id``'s lock; with ``wait=False`` give up at once if another process holds it."""
        if operator_id in self._held:
            return True
        fd = _open(locks_dir(self.state_dir) / f"operator-{operator_id.hex()}.lock")
        if not _acquire(fd, time.monotonic() + self.timeout if wait else None):
            os.close(fd)
            if wait:
                raise StateError(
                    f"operator {operator_id.hex()[:8]} is approving in another kms-agent process",
                    hint="wait for that approval to finish, then retry",
                )
            return False
        self._held[operator_id] = fd
        return True

    def release(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()

    def __enter__(self) -> OperatorLocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
