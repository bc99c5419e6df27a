"""Withdrawal benchmark (see scripts/bench-withdrawal). Prints figures; asserts nothing about speed."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.chains.evm import ETH
from agent.cli.context import Paths
from agent.policy import AssetLimits, Policy, Rule, UnknownDestination, initial_policy
from agent.tokens.discovery import find_token, open_token
from agent.tokens.sim.prompts import SimulatorPrompts
from agent.vault.vault import create_vault
from agent.withdrawals.service import Withdrawals

MNEMONIC = "abandon " * 11 + "about"
COLD = "0x00000000000000000000000000000000000c01D0"


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    os.environ["KMS_AGENT_SIM_TOUCH"] = "auto"
    home = Path(tempfile.mkdtemp(prefix="kms-bench-wd-"))
    paths, prompts = Paths(home), SimulatorPrompts(home)
    tokens = [(n, open_token(f"sim:{n}", home)) for n in ("alice", "bob", "carol")]
    vault = create_vault(paths.vault, paths.pin, tokens, 2, prompts, policy=initial_policy(2)).commit()
    sig = vault.add_wallet(
        wallet_type="MNEMONIC",
        chain="ETH",
        testnet=True,
        secret=bytearray(MNEMONIC.encode()),
        xpub=ETH.xpub_from_mnemonic(MNEMONIC, testnet=True),
    ).signature_id
    vault.save()
    vault.close()
    service = Withdrawals(home)
    finder = lambda slot: find_token(slot, home)  # noqa: E731
    service.change_policy(
        Policy(
            generation=2,
            default=Rule(
                approvals_required=2,
                allowlist=frozenset([COLD]),
                unknown_destination=UnknownDestination.DENY,
                assets={"ETH": AssetLimits(per_tx=10**18, per_hour=None, per_day=None)},
            ),
            admin_approvals=2,
        ),
        finder=finder,
        prompts=prompts,
    )
    times, phases = [], {"create": [], "approve+sign": []}
    start = time.perf_counter()
    for nonce in range(count):
        tx = ETH.build_transfer(to=COLD, value=10**17, nonce=nonce, chain_id=11155111, max_fee_per_gas=10**10)
        t0 = time.perf_counter()
        req = service.create(chain="ETH", signature_id=sig, index=0, tx=tx, initiator="app:bench")
        t1 = time.perf_counter()
        rec = service.approve(req.request_id, finder=finder, prompts=prompts, operators=["alice", "bob"])
        t2 = time.perf_counter()
        assert rec.status == "signed"
        times.append((t2 - t0) * 1000)
        phases["create"].append((t1 - t0) * 1000)
        phases["approve+sign"].append((t2 - t1) * 1000)
        if (nonce + 1) % 100 == 0:
            print(f"  {nonce + 1}/{count}", file=sys.stderr)
    wall = time.perf_counter() - start
    q = statistics.quantiles(times, n=100)
    print(f"{count} approved ETH withdrawals (2-of-3, simulated tokens, automatic touch), one process:")
    print(f"  per withdrawal: p50 {statistics.median(times):.1f} ms, p99 {q[98]:.1f} ms, max {max(times):.1f} ms")
    for name, values in phases.items():
        print(f"    {name:<13} p50 {statistics.median(values):.1f} ms")
    print(f"  throughput: {count / wall:.1f} withdrawals/s ({wall:.1f} s)")
    print(f"  audit rows: {len(service.audit.rows())}, audit verify ok: {service.audit.verify().ok}")


if __name__ == "__main__":
    main()
