"""Vault benchmark (see scripts/bench-vault). Prints figures; asserts nothing about speed."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.cli.context import Paths
from agent.policy import initial_policy
from agent.tokens.discovery import find_token, open_token
from agent.tokens.sim.prompts import SimulatorPrompts
from agent.vault.vault import PublicVault, create_vault

RUNS = 7
PHRASE = "abandon " * 11 + "about"


def median_ms(fn, runs: int = RUNS) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def cli(home: Path, *args: str) -> tuple[float, int]:
    """Wall time (ms) and peak RSS (MiB) of one CLI process."""
    env = {**os.environ, "KMS_AGENT_HOME": str(home), "KMS_AGENT_SIM_TOUCH": "auto"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "agent", *args], env=env, capture_output=True)
    elapsed = (time.perf_counter() - t) * 1000
    if proc.returncode:
        raise SystemExit(proc.stderr.decode())
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    return elapsed, rss


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 25_000
    os.environ["KMS_AGENT_SIM_TOUCH"] = "auto"
    home = Path(tempfile.mkdtemp(prefix="kms-bench-"))
    paths = Paths(home)
    prompts = SimulatorPrompts(home)
    tokens = [(name, open_token(f"sim:{name}", home)) for name in ("alice", "bob", "carol")]
    pending = create_vault(paths.vault, paths.pin, tokens, 2, prompts, policy=initial_policy(2))
    vault = pending.commit()
    from agent.chains import get_chain

    btc = get_chain("BTC")
    xpub = btc.xpub_from_mnemonic(PHRASE, testnet=False)
    t = time.perf_counter()
    for i in range(n):
        vault.add_wallet(
            wallet_type="MNEMONIC", chain="BTC", testnet=False, secret=bytearray(PHRASE.encode()), xpub=xpub
        )
        if i and i % 5000 == 0:
            print(f"  filling: {i}/{n}", file=sys.stderr)
    vault.save()
    fill_s = time.perf_counter() - t
    sig_id = vault.header.wallets[n // 2].signature_id
    size_mib = paths.vault.stat().st_size / 2**20
    print(f"vault: {n} wallets, {size_mib:.1f} MiB, filled in {fill_s:.1f} s")

    def add_one() -> None:
        vault.add_wallet(
            wallet_type="PRIVATE_KEY",
            chain="ETH",
            testnet=False,
            secret=bytearray(b"11" * 32),
            address="0x" + "11" * 20,
        )
        vault.save()

    print(f"add one wallet + save (data key in memory), median of {RUNS}: {median_ms(add_one):.1f} ms")
    vault.close()

    def open_and_derive() -> None:
        public = PublicVault.load(paths.vault, paths.pin)
        w = public.wallet(sig_id)
        btc.address_from_xpub(w.xpub, 7, testnet=False)

    print(
        f"library: open vault + verify signature + derive one address, median of {RUNS}: "
        f"{median_ms(open_and_derive):.1f} ms"
    )

    def unlock() -> None:
        public = PublicVault.load(paths.vault, paths.pin)
        with public.unlock(lambda slot: find_token(slot, home), prompts, operators=["alice", "bob"]):
            pass

    print(f"library: unlock with 2 simulated touches (open body), median of {RUNS}: {median_ms(unlock):.1f} ms")

    runs = [cli(home, "wallet", "address", sig_id, "7", "--json") for _ in range(RUNS)]
    print(
        f"CLI: `kms-agent wallet address` on the {n}-wallet vault, median of {RUNS}: "
        f"{statistics.median(r[0] for r in runs):.0f} ms, peak RSS {max(r[1] for r in runs)} MiB"
    )
    runs = [cli(home, "--help") for _ in range(RUNS)]
    print(f"CLI: `kms-agent --help` start-up, median of {RUNS}: {statistics.median(r[0] for r in runs):.0f} ms")
    runs = [
        cli(
            home,
            "wallet",
            "generate",
            "ETH",
            "--testnet",
            "--private-key",
            "--operator",
            "alice",
            "--operator",
            "bob",
            "--json",
        )
        for _ in range(3)
    ]
    print(
        f"CLI: `kms-agent wallet generate` (2 simulated touches + save), median of 3: "
        f"{statistics.median(r[0] for r in runs):.0f} ms"
    )
    elapsed, _ = cli(
        home,
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
    )
    print(f"CLI: `kms-agent wallet generate ETH --count 1000` (24-word mnemonics + xpubs): {elapsed / 1000:.1f} s")


if __name__ == "__main__":
    main()
