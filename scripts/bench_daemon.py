"""Tatum-compatible daemon benchmark (see scripts/bench-daemon). Prints figures; asserts nothing about speed.

One real ``kms-agent daemon --runOnce`` process against a fake Tatum API served over HTTP on
loopback by this process (tests/daemon/fake_tatum.py), with COUNT pending ETH transfers from one
wallet (nonces 0..COUNT-1). Two operators' simulated tokens are attached (``--operator``), so the
daemon approves the batch itself: one touch per operator per request, then one vault opening signs
them all, then each signed transaction goes to Tatum's broadcast endpoint. Tatum KMS, for scale: 63.5
signed tx/s on this machine class with no approvals at all (issue 14).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import benchlib
from benchlib import COLD, ETHER, SEPOLIA

sys.path.insert(0, str(benchlib.ROOT))
from tests.daemon.fake_tatum import API_KEY, FakeTatum  # the same fake the tests use


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    if count < 1:
        raise SystemExit("usage: scripts/bench-daemon [COUNT]   (COUNT >= 1)")
    home = benchlib.new_home("kms-bench-daemon-")
    ready = benchlib.ready_home(home, per_day=10**9 * ETHER)
    with FakeTatum() as fake:
        for nonce in range(count):
            config = {
                "to": COLD,
                "value": str(ETHER // 10),  # the fee stays under the policy's 10 % (above it needs a third operator)
                "gas": 21000,
                "maxFeePerGas": hex(30 * 10**9),
                "maxPriorityFeePerGas": hex(10**9),
                "nonce": nonce,
                "chainId": SEPOLIA,
            }
            pid = f"{nonce:024x}"
            fake.add(
                "ETH", {"id": pid, "serializedTransaction": json.dumps(config), "hashes": [ready.sig_id], "index": 0}
            )
        env = {**benchlib.cli_env(home), "TATUM_API_URL": fake.url, "TATUM_API_KEY": API_KEY}
        cmd = benchlib.cli_cmd(
            "daemon",
            "--testnet",
            "--runOnce",
            "--chain",
            "ETH",
            "--operator",
            "alice",
            "--operator",
            "bob",
            "--max-batch",
            str(count),
            "--json",
        )
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=benchlib.ROOT)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"the daemon failed (exit {proc.returncode})")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        broadcasts = len(fake.seen("/v3/ethereum/broadcast"))
    after_approval = report["sign_seconds"] + report["broadcast_seconds"]
    print(f"{count} pending ETH transfers from a fake Tatum API, one `kms-agent daemon --runOnce` (2 of 3 operators):")
    print(f"  signed {report['signed']}, broadcast {report['broadcast']} (the fake API received {broadcasts})")
    print(f"  process wall time, start to exit:        {wall:.2f} s")
    print(
        f"  the pass (poll to last broadcast):       {report['seconds']:.2f} s -> {count / report['seconds']:.1f} tx/s"
    )
    print(f"    approvals (2 simulated touches each):  {report['approve_seconds']:.2f} s")
    print(f"    'approved' to all signatures durable:  {report['sign_seconds']:.3f} s")
    print(f"    broadcast to Tatum + audit rows:       {report['broadcast_seconds']:.3f} s")
    print(f"  'approved' to 'broadcast':               {after_approval:.3f} s -> {count / after_approval:.0f} tx/s")
    print("  Tatum KMS daemon, same machine class, no approvals: 63.5 tx/s")
    audit = ready.service.audit
    print(f"  audit rows: {len(audit.rows())}, audit verify ok: {audit.verify().ok}")


if __name__ == "__main__":
    main()
