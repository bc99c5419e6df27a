"""Shares released by approval touches, held in the running agent's memory until the quorum signs.

An operator's touch over a request's digest both approves it and unwraps that operator's share of
the vault's data key. The one-shot CLI forgets the share when it exits, so the last approver used to
need the earlier approvers present again. A running agent keeps each share, bound to the request it
approved, until that request is signed, vetoed, denied, expires, or the agent stops; then it is
wiped. It never reaches disk. The trade-off (a compromised agent holding shares of k operators could
rebuild the data key while they are held) is in docs/threat-model.md; the policy's ``hold_shares``
turns holding off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.vault.primitives import wipe


@dataclass
class _Held:
    share: bytearray
    #: Unix seconds after which the share is wiped whatever happens (the request's expiry).
    until: int


class ShareHolder:
    """Per request, per operator: one share each. Thread-safe; every copy handed out is the caller's to wipe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, dict[bytes, _Held]] = {}

    def keep(self, request_id: str, operator_id: bytes, share: bytearray, *, until: int) -> None:
        """Hold a copy of ``share`` (the caller still wipes its own)."""
        with self._lock:
            old = self._held.setdefault(request_id, {}).pop(operator_id, None)
            if old is not None:
                wipe(old.share)
            self._held[request_id][operator_id] = _Held(bytearray(share), until)

    def copies(self, request_id: str) -> dict[bytes, bytearray]:
        """Fresh copies of the live shares held for ``request_id``."""
        now = int(self._clock())
        with self._lock:
            held = self._held.get(request_id, {})
            return {op: bytearray(h.share) for op, h in held.items() if h.until > now}

    def held_by(self, request_id: str) -> list[bytes]:
        """Operator ids whose live shares are held for ``request_id``."""
        now = int(self._clock())
        with self._lock:
            return [op for op, h in self._held.get(request_id, {}).items() if h.until > now]

    def drop(self, request_id: str) -> None:
        """Wipe everything held for ``request_id`` (signed, vetoed, denied, expired)."""
        with self._lock:
            for held in self._held.pop(request_id, {}).values():
                wipe(held.share)

    def sweep(self) -> int:
        """Wipe shares past their time; returns how many."""
        now = int(self._clock())
        wiped = 0
        with self._lock:
            for rid in list(self._held):
                for op, held in list(self._held[rid].items()):
                    if held.until <= now:
                        wipe(held.share)
                        del self._held[rid][op]
                        wiped += 1
                if not self._held[rid]:
                    del self._held[rid]
        return wiped

    def wipe_all(self) -> None:
        with self._lock:
            for per_request in self._held.values():
                for held in per_request.values():
                    wipe(held.share)
            self._held.clear()

    def requests(self) -> list[str]:
        with self._lock:
            return list(self._held)
