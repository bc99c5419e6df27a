"""Simulated tokens this process already found, kept open for its next touch (no re-open, no probe).

Finding a FIDO2 token costs a device open, a getInfo and an ``up=false`` probe assertion before
the real one. A process that approves many requests (a benchmark, a long-lived approver) finds the
same tokens again and again, so once a simulated token has proven it holds a slot's credential it
goes back here after each use, keyed by that credential and by which power-up of the simulator it
is (a reset or re-created token is a new key; an unplugged one is not looked up). Real devices are
not pooled: only enumerating them tells a token still present from one pulled out, which must read
as absent so that a backup token can stand in. Nothing about a decision depends on the cache: the
real assertion still names the credential, so a token swapped meanwhile fails that assertion
(and is dropped from the pool) instead of being trusted. A token whose use raised is closed, not
kept; a forked child starts empty (device handles and simulator threads do not cross a fork).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable
from typing import Protocol


class Poolable(Protocol):
    def discard(self) -> None:
        """Close the device for good."""


class TokenPool:
    def __init__(self, limit: int = 32) -> None:
        self._lock = threading.Lock()
        self._idle: dict[Hashable, list[Poolable]] = {}
        self._limit = limit
        os.register_at_fork(after_in_child=self._forget)

    def take(self, key: Hashable) -> Poolable | None:
        """An idle token for ``key``, now leased to the caller (one user at a time per device)."""
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give(self, key: Hashable, token: Poolable) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._limit:
                idle.append(token)
                return
        token.discard()

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for tokens in idle.values():
            for token in tokens:
                token.discard()

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._idle = {}


POOL = TokenPool()
