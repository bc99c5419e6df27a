"""wallet.dat's file helpers live in :mod:`agent.files` (neutral: audit, queue and simulators use them too)."""

from __future__ import annotations

from agent.files import PRIVATE_DIR, PRIVATE_FILE, atomic_write, check_private, ensure_private_dir, read_private

__all__ = ["PRIVATE_DIR", "PRIVATE_FILE", "atomic_write", "check_private", "ensure_private_dir", "read_private"]
