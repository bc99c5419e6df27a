"""Durable, private files: the only way wallet.dat and agent state reach the disk.

A write never touches the live file: temp file in the same directory (0600) -> write -> fsync ->
rename over the target -> fsync the directory. A crash at any instant leaves either the old or the
new file, never a mix (tested by killing a saver with SIGKILL at random points).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from agent.errors import VaultNotFound, VaultPermissions

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    return path


def remove_stale_temps(path: Path) -> None:
    """Temp files left by a writer that was killed mid-save; the live file was never touched."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        except PermissionError:
            pass  # alive, another user's process


@contextlib.contextmanager
def replacing(path: Path, *, keep_open: bool = False) -> Iterator[int]:
    """Write a new ``path`` through the yielded descriptor: temp file (0600), fsync, rename, fsync dir.

    An exception inside the block removes the temp file and leaves ``path`` as it was.

    :param keep_open: leave the descriptor open after the rename (the caller reads back what it
        wrote, and closes it).
    """
    ensure_private_dir(path.parent)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # the umask could have narrowed it; never wider than 0600
        yield fd
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not keep_open:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path: Path, data: bytes) -> None:
    with replacing(path) as fd:
        write_all(fd, data)


def check_private(path: Path) -> None:
    """Refuse a file that other users could read or write (as ssh refuses a loose private key)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VaultPermissions(
            f"{path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); refusing to use it",
            hint=f"chmod 600 {path}",
        )


def read_private(path: Path, *, what: str = "wallet.dat") -> bytes:
    try:
        check_private(path)
        return path.read_bytes()
    except FileNotFoundError:
        raise VaultNotFound(f"no {what} at {path}", hint="create one with `kms-agent init`") from None


def inode_of(path: Path | str) -> int | None:
    """The file's inode, or None when it does not exist (to notice a file replaced under an open handle)."""
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None
