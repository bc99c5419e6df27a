"""Named crash points: where a test may SIGKILL the agent between two durable writes.

``KMS_AGENT_CRASH_AT=NAME`` makes the process kill itself (SIGKILL, as the kernel's OOM killer or
a power cut would stop it) when it reaches the point called NAME. Tests use it to prove that every
state change survives a crash at each boundary between writes; random kills cover the rest. It
can only stop this process, never change what it does, so it is harmless in production.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "KMS_AGENT_CRASH_AT"

#: Every named point, in the order a withdrawal reaches them (docs/withdrawals.md §6).
POINTS = (
    "after-touch",  # approvals and shares are in memory; nothing written yet
    "before-commit",  # the decision's audit rows are written but not committed (a signature may be computed)
    "after-commit",  # the decision (and any signature) is durable; the queue index is not updated yet
    "after-queue",  # the queue index is level with the audit log
    "before-vault-save",  # wallet.dat change computed under the writer lock, not yet written
    "after-vault-save",  # wallet.dat written; its pin not yet moved forward
)


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
