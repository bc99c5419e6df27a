"""Scale benchmark (see scripts/bench-scale): the tables of issue 11, each figure next to the issue's.

Prints figures; asserts nothing about speed. The machine is shared, so every time is a median of
several runs (the count is printed with it). "today" is the figure written in issue 11 (measured
before any of its work), not re-measured here; "x today" is measured / today.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib
from benchlib import cli_cmd, cli_env, median_ms, ratio, run_measured, table

from agent.audit import AuditKind
from agent.cli.context import Paths
from agent.vault.vault import PublicVault
from agent.withdrawals.velocity import tally_for

MIB = 2**20
# Issue 11's "today" figures.
TODAY_ADDRESS_S = {1: 0.29, 25_000: 0.41, 100_000: 0.80, 1_000_000: 7.2}
TODAY_RSS_MIB = {25_000: 72.0, 1_000_000: 1.65 * 1024}
TODAY_ADD_S = {1_000_000: 19.5}
TODAY_CREATE_S = {10_000: 0.320, 100_000: 3.8}
GOAL_ADDRESS_S, GOAL_RSS_MIB, GOAL_ADD_S, GOAL_CREATE_MS = 0.15, 100.0, 0.5, 20.0


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def count_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k" if n >= 1000 else str(n)


# --- vault size ---------------------------------------------------------------------------------------
def vault_case(n: int, runs: int) -> dict[str, Any]:
    home = benchlib.new_home("kms-bench-scale-vault-")
    try:
        paths = Paths(home)
        vault = benchlib.make_vault(home)
        t = time.perf_counter()
        ids = benchlib.fill_vault(vault, n)
        fill_s = time.perf_counter() - t
        sig_id = ids[len(ids) // 2]
        header = median_ms(lambda: PublicVault.load(paths.vault, paths.pin), runs)
        add_runs = 3 if n < 1_000_000 else 2
        add = median_ms(lambda: vault.transact(benchlib.add_eth_key), add_runs)
        vault.close()
        cmd = cli_cmd("wallet", "address", sig_id, "7", "--json")
        env = cli_env(home)
        cli_runs = runs if n < 1_000_000 else 3
        measured = [run_measured(cmd, env) for _ in range(cli_runs)]
        return {
            "n": n,
            "size_mib": paths.vault.stat().st_size / MIB,
            "fill_s": fill_s,
            "header_ms": header,
            "header_runs": runs,
            "add_ms": add,
            "add_runs": add_runs,
            "address_s": statistics.median(r.wall_ms for r in measured) / 1000,
            "rss_mib": statistics.median(r.rss_mib for r in measured),
            "rss_max_mib": max(r.rss_mib for r in measured),
            "cli_runs": cli_runs,
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def print_vault(cases: list[dict[str, Any]]) -> None:
    print("\n== Vault size (BTC mnemonic wallets, one shared xpub, built with the product's add_wallet + save) ==")
    print(
        "wallet.dat sizes: "
        + ", ".join(f"{count_label(c['n'])} {c['size_mib']:.1f} MiB (filled in {c['fill_s']:.1f} s)" for c in cases)
    )
    rows = []
    for c in cases:
        today = TODAY_ADDRESS_S.get(c["n"])
        rows.append(
            [
                count_label(c["n"]),
                f"{c['address_s']:.3f} s",
                f"{today} s" if today else "-",
                ratio(c["address_s"], today),
                f"<= {GOAL_ADDRESS_S} s",
                yes(c["address_s"] <= GOAL_ADDRESS_S),
                str(c["cli_runs"]),
            ]
        )
    print("\n`kms-agent wallet address SIG 7 --json` (CLI process wall time, median)")
    print(table(["wallets", "measured", "today", "x today", "goal", "met", "runs"], rows))
    rows = []
    for c in cases:
        today = TODAY_RSS_MIB.get(c["n"])
        rows.append(
            [
                count_label(c["n"]),
                f"{c['rss_mib']:.1f} MiB",
                f"{c['rss_max_mib']:.1f} MiB",
                f"{today:.0f} MiB" if today else "-",
                ratio(c["rss_mib"], today),
                f"<= {GOAL_RSS_MIB:.0f} MiB",
                yes(c["rss_max_mib"] <= GOAL_RSS_MIB),
            ]
        )
    print("\npeak RSS of that CLI process (its own: forked from a small trampoline, ru_maxrss from wait4)")
    print(table(["wallets", "median", "max", "today", "x today", "goal", "met"], rows))
    rows = []
    for c in cases:
        today = TODAY_ADD_S.get(c["n"])
        rows.append(
            [
                count_label(c["n"]),
                f"{c['add_ms'] / 1000:.3f} s",
                f"{today} s" if today else "-",
                ratio(c["add_ms"] / 1000, today),
                f"<= {GOAL_ADD_S} s",
                yes(c["add_ms"] / 1000 <= GOAL_ADD_S),
                str(c["add_runs"]),
            ]
        )
    print("\nadd one wallet: UnlockedVault.transact (data key in memory; re-read under the writer lock + save)")
    print(table(["wallets", "measured", "today", "x today", "goal", "met", "runs"], rows))
    rows = [[count_label(c["n"]), f"{c['header_ms']:.1f} ms", str(c["header_runs"])] for c in cases]
    print("\nheader open: PublicVault.load (read wallet.dat, check the pin and signature, decode the header)")
    print("  issue: no figure today; it should not grow with the vault (goal of part 3)")
    print(table(["wallets", "median", "runs"], rows))


# --- history ----------------------------------------------------------------------------------------
def signature_template(ready: benchlib.Ready) -> dict[str, Any]:
    """The payload of a real ``signature`` row, written by one real withdrawal (so its shape, and its
    ``velocity`` field, are exactly what Withdrawals._sign writes)."""
    req = ready.create(0)
    rec = ready.service.approve(req.request_id, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    if rec.status != "signed":
        raise SystemExit(f"template withdrawal ended {rec.status}")
    rows = ready.service.audit.rows(kinds=[AuditKind.SIGNATURE], request_id=req.request_id)
    payload: dict[str, Any] = rows[-1].payload
    if "velocity" not in payload or "tally" not in payload:
        raise SystemExit("signature rows carry no velocity or tally field any more: update bench_scale.py")
    return payload


def velocity_summary_of(payload: dict[str, Any]) -> Any:
    from agent.audit import AuditRow
    from agent.withdrawals.velocity import velocity_summary

    return velocity_summary(AuditRow(0, 0, "signature", None, None, "", b"", b"", payload))


def write_signature_rows(ready: benchlib.Ready, template: dict[str, Any], first: int, last: int, total: int) -> float:
    """Append signature rows ``first``..``last - 1`` (of ``total``) through the real audit API, in large
    transactions (bench harness, not product code). Timestamps rise evenly over the last ~22 h."""
    start_ts = int(time.time()) - 80_000
    summary = velocity_summary_of(template)
    t = time.perf_counter()
    batch = 50_000
    for lo in range(first, last, batch):
        with ready.service.audit.transaction() as tx:
            for i in range(lo, min(last, lo + batch)):
                ts = start_ts + i * 79_000 // total
                # Running totals through the product's own function, as _sign computes them.
                payload = {**template, "txid": "0x" + os.urandom(32).hex(), "tally": tally_for(tx.index, summary, ts)}
                tx.append(AuditKind.SIGNATURE, payload, request_id=None, ts=ts)
    return time.perf_counter() - t


def history_cases(levels: list[int], runs_for: Callable[[int], int]) -> list[dict[str, Any]]:
    # A daily limit so large it never denies, so velocity is evaluated on every create.
    ready = benchlib.ready_home(benchlib.new_home("kms-bench-scale-hist-"), per_day=10**12 * benchlib.ETHER)
    try:
        template = signature_template(ready)
        total = max(levels)
        have, nonce, out = 0, 1, []
        for level in levels:
            write_s = write_signature_rows(ready, template, have, level, total) if level > have else 0.0
            if level > have:
                print(f"  history: wrote {level - have} signature rows in {write_s:.1f} s", file=sys.stderr)
            have = level
            ready.service.sync()
            runs = runs_for(level)
            times = []
            for _ in range(runs):
                times.append(benchlib.time_ms(lambda n=nonce: ready.create(n)))  # type: ignore[misc]
                nonce += 1
            out.append({"rows": level, "create_ms": statistics.median(times), "runs": runs, "write_s": write_s})
        return out
    finally:
        shutil.rmtree(ready.home, ignore_errors=True)


def print_history(cases: list[dict[str, Any]]) -> None:
    print("\n== `request create` against N signature rows in the last 24 h ==")
    print("  Withdrawals.create through the real service (decode, policy with a never-denying daily ETH limit, audit);")
    print(
        "  the N rows were appended by this harness through AuditLog.transaction() in 50k-row transactions,"
        " each a copy of a real signature row's payload (velocity field as _sign writes it, running totals from"
        " the product's tally_for) with a new txid"
        " and request_id None (a bench shortcut: no request rows behind them). Every level also has the one"
        " real withdrawal that gave the template."
    )
    rows = []
    for c in cases:
        today = TODAY_CREATE_S.get(c["rows"])
        rows.append(
            [
                count_label(c["rows"]),
                f"{c['create_ms']:.1f} ms",
                f"{today * 1000:.0f} ms" if today else "-",
                ratio(c["create_ms"], today * 1000 if today else None),
                f"<= {GOAL_CREATE_MS:.0f} ms",
                yes(c["create_ms"] <= GOAL_CREATE_MS),
                str(c["runs"]),
            ]
        )
    print(table(["rows", "measured", "today", "x today", "goal", "met", "runs"], rows))


# --- withdrawals, start-up ----------------------------------------------------------------------------
def print_withdrawals(count: int) -> None:
    ready = benchlib.ready_home(benchlib.new_home("kms-bench-scale-wd-"))
    try:
        run = benchlib.run_withdrawals(ready, count)
        parallel = {workers: benchlib.run_parallel(ready, workers, count) for workers in (2, 4)}
    finally:
        shutil.rmtree(ready.home, ignore_errors=True)
    agent50, agent99 = benchlib.percentile(run.agent_ms, 50), benchlib.percentile(run.agent_ms, 99)
    rate = count / run.wall_s
    per_kb = run.disk_bytes / count / 1000
    print(f"\n== Withdrawals: {count} approved ETH withdrawals, 2-of-3, two simulated touches each, one process ==")
    print(f"  (after one warm-up withdrawal of {run.warmup_ms:.0f} ms; nearest-rank percentiles)")
    print(f"  wall per withdrawal:        {benchlib.spread(run.total_ms)}")
    print(
        f"  inside simulated tokens:    {benchlib.spread(run.token_ms)} "
        f"({run.token_opens / count:.0f} device opens + {run.token_calls / count:.0f} CTAPHID calls per withdrawal)"
    )
    print(
        f"  agent's token layer:        {benchlib.spread(run.layer_ms)} "
        "(find_token + Fido2Token.unwrap: FIDO2 client work + the simulator time above)"
    )
    print(f"  agent's own (wall - token): {benchlib.spread(run.agent_ms)}")
    print(f"    of which create:          p50 {benchlib.percentile(run.create_ms, 50):.1f} ms (wall, no token calls)")
    rows = [
        [
            "agent time per withdrawal, p50",
            f"{agent50:.1f} ms",
            "65-95 ms",
            f"{agent50 / 95:.2f}-{agent50 / 65:.2f}x",
            "<= 5 ms",
            yes(agent50 <= 5),
        ],
        [
            "agent time per withdrawal, p99",
            f"{agent99:.1f} ms",
            "65-95 ms",
            f"{agent99 / 95:.2f}-{agent99 / 65:.2f}x",
            "<= 20 ms",
            yes(agent99 <= 20),
        ],
        [
            "end-to-end withdrawals/s",
            f"{rate:.1f}/s",
            "4-13/s",
            f"{rate / 13:.1f}-{rate / 4:.1f}x (higher is better)",
            ">= 100/s",
            yes(rate >= 100),
        ],
        *[
            [
                f"withdrawals/s, {workers} processes at once",
                f"{rate:.1f}/s",
                "4-13/s",
                f"{rate / 13:.1f}-{rate / 4:.1f}x (higher is better)",
                ">= 100/s",
                yes(rate >= 100),
            ]
            for workers, rate in parallel.items()
        ],
        [
            "disk per withdrawal (queue + audit)",
            f"{per_kb:.1f} KB",
            "21 KB",
            ratio(per_kb, 21),
            "<= 5 KB",
            yes(per_kb <= 5),
        ],
    ]
    print(table(["measure", "measured", "today", "x today", "goal", "met"], rows))
    detail = ", ".join(f"{name} {size / 1024:.0f} KiB" for name, size in run.disk_detail.items())
    print(f"  disk: growth of audit.sqlite + queue.sqlite (+ -wal) after a WAL checkpoint, / {count}; now: {detail}")


def print_help() -> None:
    env = cli_env(benchlib.new_home("kms-bench-scale-help-"))
    times = [benchlib.run_plain(cli_cmd("--help"), env) for _ in range(15)]
    help_s = statistics.median(times) / 1000
    print("\n== Start-up ==")
    rows = [["`kms-agent --help`", f"{help_s:.3f} s", "0.28 s", ratio(help_s, 0.28), "<= 0.12 s", yes(help_s <= 0.12)]]
    print(table(["measure (median of 15)", "measured", "today", "x today", "goal", "met"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also 1M wallets and 1M signature rows (slow)")
    parser.add_argument("--runs", type=int, default=5, help="runs per median for the quick cases (default 5)")
    parser.add_argument("--withdrawals", type=int, default=200, help="withdrawals for the agent-time table")
    parts = ("vault", "history", "withdrawals", "help")
    parser.add_argument("--only", choices=parts, action="append", help="run only these tables (repeat)")
    args = parser.parse_args()
    run = set(args.only or parts)
    started = time.perf_counter()
    sizes = [1, 1_000, 25_000, 100_000] + ([1_000_000] if args.full else [])
    levels = [0, 10_000, 100_000] + ([1_000_000] if args.full else [])
    print(f"kms-agent bench-scale ({'full' if args.full else 'without --full: no 1M cases'}); {os.cpu_count()} CPUs,")
    print("shared and noisy: every time is a median of the runs shown. today = issue 11's figure.")
    if "vault" in run:
        vault_results = []
        for n in sizes:
            print(f"  vault: {n} wallets", file=sys.stderr)
            vault_results.append(vault_case(n, args.runs))
        print_vault(vault_results)
    if "history" in run:
        print_history(history_cases(levels, lambda rows: args.runs if rows < 1_000_000 else 3))
    if "withdrawals" in run:
        print_withdrawals(args.withdrawals)
    if "help" in run:
        print_help()
    print(f"\n(bench-scale ran for {time.perf_counter() - started:.0f} s; data directories under {Path('/tmp')})")


if __name__ == "__main__":
    main()
