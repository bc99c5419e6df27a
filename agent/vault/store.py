"""Reading wallet.dat by offset, and writing it as a stream, durably (docs/wallet-format.md §7, §10.3).

The write is :func:`agent.files.atomic_write` streamed: temp file in the same directory (0600) ->
header, body, nodes (unchanged ones copied from the old file by offset, in the kernel where it can)
-> node table -> fsync -> rename over wallet.dat -> fsync the directory. A crash at any instant
leaves the old or the new file. The temp file is opened read-write and kept open, so after the
rename the writer reads the file it wrote (not whatever a later rename put at the path).

Reads use ``pread`` on a descriptor held open for the vault's lifetime rather than ``mmap``: the same
few pages per lookup, but a file truncated under us becomes a clean format error, not SIGBUS.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from agent.errors import VaultFormatError, VaultNotFound, VaultPermissions
from agent.files import replacing, write_all

_COPY_CHUNK = 1 << 24


class FileBuffer:
    """A read-only view of an open file: ``len()`` and ``buf[a:b]`` (``pread``), as the parser wants."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size

    @classmethod
    def open_private(cls, path: Path, *, what: str = "wallet.dat") -> FileBuffer:
        """Open ``path`` for reading after refusing it if group or others can access it."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VaultNotFound(f"no {what} at {path}", hint="create one with `kms-agent init`") from None
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            os.close(fd)
            raise VaultPermissions(
                f"{path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); refusing to use it",
                hint=f"chmod 600 {path}",
            )
        return cls(fd)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes:
        start, stop, _ = key.indices(self.size)
        if stop <= start:
            return b""
        data = os.pread(self.fd, stop - start, start)
        if len(data) != stop - start:
            raise VaultFormatError("wallet.dat changed size while it was read (truncated?)")
        return data

    def read_all(self) -> bytes:
        return self[0 : self.size]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()


def _copy(src: int, dst: int, offset: int, length: int) -> None:
    """``length`` bytes of ``src`` from ``offset`` to ``dst``'s position: in the kernel when it can."""
    while length:
        try:
            done = os.copy_file_range(src, dst, min(length, _COPY_CHUNK), offset)
        except OSError:
            done = 0
        if done <= 0:  # not supported here (or a short source): plain reads and writes
            data = os.pread(src, min(length, _COPY_CHUNK), offset)
            if not data:
                raise VaultFormatError("wallet.dat is shorter than its index says")
            write_all(dst, data)
            done = len(data)
        offset += done
        length -= done


def write_stream(path: Path, parts: Iterable[bytes | tuple[int, int]], source: int | None) -> FileBuffer:
    """Write ``parts`` (bytes, or ``(offset, length)`` ranges of ``source``) as the new ``path``, atomically.

    Returns a reader of the file just written (its descriptor is the one written through).
    """
    with replacing(path, keep_open=True) as fd:
        pending: tuple[int, int] | None = None  # adjacent copies are merged into one
        for part in parts:
            if isinstance(part, tuple):
                if pending is not None and pending[0] + pending[1] == part[0]:
                    pending = (pending[0], pending[1] + part[1])
                    continue
                if pending is not None:
                    _copy_from(source, fd, pending)
                pending = part
                continue
            if pending is not None:
                _copy_from(source, fd, pending)
                pending = None
            write_all(fd, part)
        if pending is not None:
            _copy_from(source, fd, pending)
    return FileBuffer(fd)


def _copy_from(source: int | None, fd: int, span: tuple[int, int]) -> None:
    if source is None:
        raise RuntimeError("a copied range needs a source file")
    _copy(source, fd, span[0], span[1])
