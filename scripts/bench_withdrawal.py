"""Withdrawal benchmark (see scripts/bench-withdrawal). Prints figures; asserts nothing about speed.

Percentiles are nearest-rank (always one of the samples; with fewer than 100 samples p99 is the max).
The agent's own time is the wall time of create + approve minus the time spent inside the simulated
tokens (benchlib.TokenClock: opening the simulated device and every CTAPHID call to it).
"""

from __future__ import annotations

import sys

import benchlib
from benchlib import spread


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    if count < 1:
        raise SystemExit("usage: scripts/bench-withdrawal [COUNT]   (COUNT >= 1)")
    ready = benchlib.ready_home(benchlib.new_home("kms-bench-wd-"))
    run = benchlib.run_withdrawals(ready, count)
    print(f"{count} approved ETH withdrawals (2-of-3, simulated tokens, automatic touch), one process:")
    print(f"  warm-up withdrawal before them (first in the process, not counted): {run.warmup_ms:.0f} ms")
    print(f"  per withdrawal, wall:            {spread(run.total_ms)}")
    print(f"    create                         {spread(run.create_ms)}")
    print(f"    approve + sign                 {spread(run.approve_ms)}")
    print(
        f"    inside the simulated tokens    {spread(run.token_ms)} "
        f"({run.token_opens / count:.1f} device opens, {run.token_calls / count:.1f} CTAPHID calls each)"
    )
    print(f"    agent's token layer, all in    {spread(run.layer_ms)} (find_token + Fido2Token.unwrap, incl. above)")
    print(f"  agent's own time (wall - tokens): {spread(run.agent_ms)}")
    print(f"  throughput: {count / run.wall_s:.1f} withdrawals/s ({run.wall_s:.1f} s)")
    detail = ", ".join(f"{name} {size / 1024:.0f} KiB" for name, size in run.disk_detail.items())
    print(f"  disk: {run.disk_bytes / count / 1000:.1f} KB per withdrawal after a WAL checkpoint ({detail})")
    audit = ready.service.audit
    print(f"  audit rows: {len(audit.rows())}, audit verify ok: {audit.verify().ok}")


if __name__ == "__main__":
    main()
