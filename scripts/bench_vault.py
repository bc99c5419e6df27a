"""Vault benchmark (see scripts/bench-vault). Prints figures; asserts nothing about speed.

For each vault size (1, 25k, 100k wallets; 1M with --full) it builds a wallet.dat v2 through the
product's bulk path (``UnlockedVault.fill``: every entry sealed, the index built bottom-up), then
measures, on CLI child processes:

* ``kms-agent wallet address ID 7 --json`` (no token): wall time and the CLI process's *own* peak
  RSS (benchlib.run_measured: a tiny trampoline forks and execs it and reads ``ru_maxrss`` from
  ``os.wait4``, so the bench's own memory is not counted), and
* ``kms-agent wallet generate ETH --private-key`` (two simulated touches, then one add + save under
  the writer lock),

and, in this process with the data key already in memory, one ``add_wallet`` + ``save`` (the vault's
own cost: O(log n) node hashes and a streamed, fsynced write). Each figure is a median (the machine
is shared and noisy); "today" is the v1 figure from issue 11, measured on this machine class.

Usage: scripts/bench-vault [--full] [--sizes 1,25000,100000] [--runs 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator

import benchlib
from benchlib import cli_cmd, cli_env, median_ms, ratio, run_measured, table

from agent.chains import get_chain
from agent.cli.context import Paths
from agent.vault.records import WalletRow
from agent.vault.vault import UnlockedVault

#: v1 figures (issue 11): `wallet address` seconds, and adding one wallet at 1M.
TODAY_ADDRESS_S = {1: 0.13, 25_000: 0.24, 100_000: 0.62, 1_000_000: 7.2}
TODAY_RSS_MIB = {1_000_000: 1.65 * 1024}
TODAY_ADD_S = {1_000_000: 20.0}


def _add_one(vault: UnlockedVault) -> None:
    benchlib.add_eth_key(vault)
    vault.save()


def build(n: int) -> tuple[Paths, str, float, UnlockedVault]:
    """A 2-of-3 vault on simulated tokens with ``n`` BTC mnemonic wallets (shared xpub); returns
    (paths, a signatureId in the middle, seconds to build, the open UnlockedVault)."""
    home = benchlib.new_home("kms-bench-vault-")
    paths = Paths(home)
    vault: UnlockedVault = benchlib.make_vault(home)
    xpub = get_chain("BTC").xpub_from_mnemonic(benchlib.PHRASE, testnet=False)
    ids = sorted(str(uuid.uuid4()) for _ in range(n))
    phrase = benchlib.PHRASE.encode()
    now = int(time.time())

    def rows() -> Iterator[tuple[WalletRow, bytearray]]:
        for sig in ids:
            yield WalletRow(sig, "MNEMONIC", "BTC", False, now, xpub, None), bytearray(phrase)

    t = time.perf_counter()
    vault.fill(rows())
    vault.save()
    return paths, ids[n // 2], time.perf_counter() - t, vault


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also 1,000,000 wallets (several minutes, ~0.5 GB disk)")
    parser.add_argument("--sizes", help="comma-separated wallet counts instead of 1,25000,100000")
    parser.add_argument("--runs", type=int, default=7, help="runs per CLI figure (median)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [1, 25_000, 100_000]
    if args.full and 1_000_000 not in sizes:
        sizes.append(1_000_000)
    rows: list[list[str]] = []
    for n in sizes:
        paths, sig_id, build_s, vault = build(n)
        size_mib = paths.vault.stat().st_size / 2**20
        print(f"{n:>9,} wallets: wallet.dat v2 {size_mib:.1f} MiB, built in {build_s:.1f} s", file=sys.stderr)
        env = cli_env(paths.home)
        address = cli_cmd("wallet", "address", sig_id, "7", "--json")
        runs = [run_measured(address, env) for _ in range(args.runs)]
        wall_ms = statistics.median(r.wall_ms for r in runs)
        rss = max(r.rss_mib for r in runs)
        checked = benchlib.time_rss_mib(address, env)

        add_ms = median_ms(lambda v=vault: _add_one(v), 5)
        vault.close()
        generate = cli_cmd(
            "wallet", "generate", "ETH", "--testnet", "--private-key", "--operator", "alice", "--operator", "bob"
        )
        gen_ms = statistics.median(run_measured(generate, env).wall_ms for _ in range(3))
        today = TODAY_ADDRESS_S.get(n)
        rows.append(
            [
                f"{n:,}",
                f"{size_mib:.0f} MiB",
                f"{wall_ms:.0f} ms",
                ratio(wall_ms / 1000, today),
                f"{rss:.1f} MiB" + (f" (time -f %M: {checked:.1f})" if checked is not None else ""),
                ratio(rss, TODAY_RSS_MIB.get(n)),
                f"{add_ms:.1f} ms",
                ratio(add_ms / 1000, TODAY_ADD_S.get(n)),
                f"{gen_ms:.0f} ms",
            ]
        )
        shutil.rmtree(paths.home, ignore_errors=True)
    print(
        table(
            [
                "wallets",
                "file",
                "`wallet address` (CLI)",
                "vs v1",
                "its peak RSS",
                "vs v1",
                "add one + save (key in memory)",
                "vs v1",
                "`wallet generate` one (CLI, 2 touches)",
            ],
            rows,
        )
    )
    print(
        f"medians: `wallet address` of {args.runs} runs (RSS: max of them), add one of 5, generate of 3. "
        "Goals (issue 11): address <= 150 ms at every size, RSS <= 100 MiB at 1M, add one <= 0.5 s at 1M."
    )


if __name__ == "__main__":
    main()
