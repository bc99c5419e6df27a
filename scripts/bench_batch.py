"""Tatum-migration benchmark (see scripts/bench-batch). Prints figures; asserts nothing about speed.

Every figure is one real ``kms-agent`` process on a fresh 2-of-3 vault of simulated tokens (touches
answered automatically), timed from fork to exit; peak RSS is that process's own ``ru_maxrss``
from ``os.wait4`` in a small trampoline (benchlib explains why not RUSAGE_CHILDREN).
Tatum KMS, for scale (issue 13): 53 s for 1,000 batch keys, growing quadratically, and 3.7 s and
830 MiB just to read a 25,000-entry wallet.dat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import benchlib
from benchlib import cli_cmd, cli_env

PASSWORD = b"bench password"
#: Runs per batch size (the median is printed).
RUNS = 3


def measured(cmd: list[str], env: dict[str, str], *, stdin: bytes = b"", show_stderr: bool = False) -> benchlib.Run:
    """``cmd`` with ``stdin`` fed from a file; stderr to the terminal when asked (the progress bar)."""
    with tempfile.TemporaryFile() as feed, tempfile.NamedTemporaryFile(prefix="kms-bench-rss-") as out:
        feed.write(stdin)
        feed.seek(0)
        proc = subprocess.run(
            [sys.executable, "-S", "-c", benchlib._TRAMPOLINE, out.name, *cmd],
            env=env,
            stdin=feed,
            stdout=subprocess.PIPE,
            stderr=None if show_stderr else subprocess.PIPE,
            cwd=benchlib.ROOT,
        )
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stderr or b'').decode()}")
        rss_kib, wall_s = Path(out.name).read_text().split()
    return benchlib.Run(float(wall_s) * 1000, int(rss_kib) / 1024, proc.stdout)


def fresh_home(tag: str) -> Path:
    home = benchlib.new_home(f"kms-bench-{tag}-")
    benchlib.make_vault(home).close()
    return home


def batch(counts: list[int]) -> None:
    print("generatemanagedprivatekeybatch ETH N --testnet (one process: unlock, generate, one vault write):")
    ones = [
        measured(cli_cmd("generatemanagedprivatekeybatch", "ETH", "1", "--testnet"), cli_env(fresh_home("batch")))
        for _ in range(RUNS)
    ]
    one = sorted(ones, key=lambda x: x.wall_ms)[RUNS // 2]
    print(f"  {1:>6,} key : {one.wall_ms / 1000:6.2f} s  (start-up, unlock and one write: the fixed cost)")
    prev, prev_n = one, 1
    for i, n in enumerate(counts):
        home = fresh_home("batch")
        show = sys.stderr.isatty() and i == len(counts) - 1
        runs = [
            measured(
                cli_cmd("generatemanagedprivatekeybatch", "ETH", str(n), "--testnet"),
                cli_env(fresh_home("batch") if r else home),
                show_stderr=show and r == 0,
            )
            for r in range(RUNS)
        ]
        run = sorted(runs, key=lambda x: x.wall_ms)[RUNS // 2]  # the median run: the machine is shared
        lines = run.stdout.count(b"\n")
        assert lines == n, (lines, n)
        marginal = (run.wall_ms - prev.wall_ms) / (n - prev_n)
        print(
            f"  {n:>6,} keys: {run.wall_ms / 1000:6.2f} s  ({marginal:.3f} ms per key from the row above: "
            f"a flat column is linear), peak RSS {run.rss_mib:.0f} MiB"
        )
        prev, prev_n = run, n


def tatum_file(path: Path, keys: int, mnemonics: int) -> None:
    """A Tatum wallet.dat as Tatum writes it: ``keys`` ETH testnet private keys, ``mnemonics`` BTC ones."""
    from agent.chains import get_chain
    from agent.chains.wallets import generate_mnemonic_wallet, generate_private_key_wallet
    from agent.tatum.walletdat import encrypt

    eth, btc = get_chain("ETH"), get_chain("BTC")
    doc = {}
    for _ in range(keys):
        w = generate_private_key_wallet(eth, testnet=True)
        doc[str(uuid.uuid4())] = {"privateKey": w.private_key.decode(), "chain": "ETH", "testnet": True}
    # 200 distinct mnemonics, cycled: making 25,000 would cost as much as checking them. The import
    # caches nothing, so each entry costs it one full PBKDF2 + BIP-32 check all the same.
    pool = [generate_mnemonic_wallet(btc, testnet=True) for _ in range(min(mnemonics, 200))]
    for i in range(mnemonics):
        m = pool[i % len(pool)]
        doc[str(uuid.uuid4())] = {"mnemonic": m.mnemonic.decode(), "xpub": m.xpub, "chain": "BTC", "testnet": True}
    path.write_bytes(encrypt(doc, PASSWORD))


def import_figure(keys: int, mnemonics: int) -> None:
    home = fresh_home("import")
    src = home.parent / f"{home.name}-tatum.dat"
    t = time.perf_counter()
    tatum_file(src, keys, mnemonics)
    made = time.perf_counter() - t
    size = src.stat().st_size / 2**20
    run = measured(
        cli_cmd("import", "tatum", str(src), "--json"), cli_env(home), stdin=PASSWORD + b"\n", show_stderr=False
    )
    what = f"{keys:,} private keys" + (f" + {mnemonics:,} mnemonics" if mnemonics else "")
    print(
        f"import tatum, {keys + mnemonics:,} entries ({what}; file {size:.1f} MiB, made in {made:.1f} s): "
        f"{run.wall_ms / 1000:.2f} s, peak RSS {run.rss_mib:.0f} MiB (one vault write)"
    )
    os.unlink(src)


def main() -> None:
    quick = "--quick" in sys.argv
    batch([100, 500, 1000] if quick else [1000, 5000, 10000])
    import_figure(2500 if quick else 25_000, 0)
    # A mnemonic costs one PBKDF2 + BIP-32 derivation to check its xpub (~3 ms, on a process pool).
    import_figure(0, 1000 if quick else 25_000)


if __name__ == "__main__":
    main()
