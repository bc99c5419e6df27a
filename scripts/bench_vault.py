"""Vault benchmark (see scripts/bench-vault). Prints figures; asserts nothing about speed.

Each CLI figure is the median of several runs (the machine is shared and noisy); peak RSS is each
CLI process's own, measured as benchlib.run_measured explains (not RUSAGE_CHILDREN).
"""

from __future__ import annotations

import statistics
import sys
import time

import benchlib
from benchlib import cli_cmd, cli_env, median_ms, run_measured

from agent.chains import get_chain
from agent.cli.context import Paths
from agent.tokens.discovery import find_token
from agent.tokens.sim.prompts import SimulatorPrompts
from agent.vault.vault import PublicVault

RUNS = 7


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 25_000
    home = benchlib.new_home("kms-bench-")
    paths = Paths(home)
    prompts = SimulatorPrompts(home)
    vault = benchlib.make_vault(home)
    t = time.perf_counter()
    ids = benchlib.fill_vault(vault, n)
    fill_s = time.perf_counter() - t
    sig_id = ids[n // 2] if ids else ""
    size_mib = paths.vault.stat().st_size / 2**20
    print(f"vault: {n} wallets, {size_mib:.1f} MiB, filled in {fill_s:.1f} s")

    def add_one() -> None:
        benchlib.add_eth_key(vault)
        vault.save()

    print(f"add one wallet + save (data key in memory), median of {RUNS}: {median_ms(add_one, RUNS):.1f} ms")
    print(
        f"add one wallet with transact (re-read under the writer lock + save), median of {RUNS}: "
        f"{median_ms(lambda: vault.transact(benchlib.add_eth_key), RUNS):.1f} ms"
    )
    vault.close()
    btc = get_chain("BTC")
    if not sig_id:
        return

    def open_and_derive() -> None:
        public = PublicVault.load(paths.vault, paths.pin)
        xpub = public.wallet(sig_id).xpub
        assert xpub is not None
        btc.address_from_xpub(xpub, 7, testnet=False)

    print(
        f"library: open vault + verify signature + derive one address, median of {RUNS}: "
        f"{median_ms(open_and_derive, RUNS):.1f} ms"
    )

    def unlock() -> None:
        public = PublicVault.load(paths.vault, paths.pin)
        with public.unlock(lambda slot: find_token(slot, home), prompts, operators=["alice", "bob"]):
            pass

    print(f"library: unlock with 2 simulated touches (open body), median of {RUNS}: {median_ms(unlock, RUNS):.1f} ms")

    env = cli_env(home)
    address = cli_cmd("wallet", "address", sig_id, "7", "--json")
    runs = [run_measured(address, env) for _ in range(RUNS)]
    rss = [r.rss_mib for r in runs]
    print(
        f"CLI: `kms-agent wallet address` on the {n}-wallet vault, median of {RUNS}: "
        f"{statistics.median(r.wall_ms for r in runs):.0f} ms, peak RSS (the CLI process's own) "
        f"median {statistics.median(rss):.1f} MiB, max {max(rss):.1f} MiB"
    )
    checked = benchlib.time_rss_mib(address, env)
    if checked is not None:
        print(f"  cross-check: /usr/bin/time -f %M on the same command: {checked:.1f} MiB")
    helps = [benchlib.run_plain(cli_cmd("--help"), env) for _ in range(15)]
    print(f"CLI: `kms-agent --help` start-up, median of 15: {statistics.median(helps):.0f} ms")
    generate = cli_cmd(
        "wallet", "generate", "ETH", "--testnet", "--private-key", "--operator", "alice", "--operator", "bob", "--json"
    )
    runs = [run_measured(generate, env) for _ in range(3)]
    print(
        f"CLI: `kms-agent wallet generate` (2 simulated touches + save), median of 3: "
        f"{statistics.median(r.wall_ms for r in runs):.0f} ms, peak RSS {max(r.rss_mib for r in runs):.1f} MiB"
    )
    bulk = run_measured(
        cli_cmd(
            "wallet",
            "generate",
            "ETH",
            "--testnet",
            "--count",
            "1000",
            "--operator",
            "alice",
            "--operator",
            "bob",
            "--json",
        ),
        env,
    )
    print(
        f"CLI: `kms-agent wallet generate ETH --count 1000` (24-word mnemonics + xpubs): {bulk.wall_ms / 1000:.1f} s, "
        f"peak RSS {bulk.rss_mib:.1f} MiB"
    )


if __name__ == "__main__":
    main()
