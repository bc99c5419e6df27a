"""Shared helpers for the bench scripts: timing, percentiles, a child's own peak RSS, ready data directories.

Bench harness only: nothing here is product code, and nothing here asserts anything about speed.
"""

from __future__ import annotations

import math
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PHRASE = "abandon " * 11 + "about"
COLD = "0x00000000000000000000000000000000000c01D0"
SEPOLIA = 11155111
ETHER = 10**18
OPERATORS = ("alice", "bob", "carol")
os.environ.setdefault("KMS_AGENT_SIM_TOUCH", "auto")


# --- timing and statistics ------------------------------------------------------------------------
def time_ms(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def samples_ms(fn: Callable[[], object], runs: int) -> list[float]:
    return [time_ms(fn) for _ in range(runs)]


def median_ms(fn: Callable[[], object], runs: int) -> float:
    return statistics.median(samples_ms(fn, runs))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least p % of the samples at or below it.

    Always one of the samples (so never above the max nor below the min), and defined for a single
    sample. With n < 100, p99 is simply the max: say so next to it rather than interpolate.
    """
    if not values:
        raise ValueError("percentile of no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def spread(values: Sequence[float]) -> str:
    """``p50 X ms, p99 Y ms, max Z ms (n=N)`` with a note when p99 is just the max."""
    p99 = percentile(values, 99)
    note = " (n<100: p99 = max)" if len(values) < 100 else ""
    return f"p50 {percentile(values, 50):.1f} ms, p99 {p99:.1f} ms, max {max(values):.1f} ms (n={len(values)}){note}"


# --- a child's own peak RSS ---------------------------------------------------------------------
# Why not RUSAGE_CHILDREN, nor os.wait4 on a child of this process: when the kernel execs the new
# program it folds the *old* address space's high-water RSS into the child's maxrss (exec_mmap ->
# setmax_mm_hiwater_rss). After fork or vfork that old address space is this bench process's, so a
# CLI started from a bench holding a 25k-wallet vault "peaks" at the bench's size (98 MiB where the
# CLI uses ~70). Checked on this machine: a bench holding 400 MiB that runs a 60 MiB child gets
# 411 MiB from os.wait4 and 60 MiB from /usr/bin/time -f %M.
# Method: fork the command from a tiny trampoline interpreter (python -S, ~9 MiB, well under any
# kms-agent process, and maxrss is a max, not a sum), which reports the child's ru_maxrss from
# os.wait4 - exactly what /usr/bin/time -f %M does. bench-vault prints /usr/bin/time's figure for
# the same command next to ours when it is installed.
_TRAMPOLINE = """
import os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(out, "w") as f:
    f.write(f"{usage.ru_maxrss} {wall}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass
class Run:
    wall_ms: float
    rss_mib: float
    stdout: bytes


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None) -> Run:
    """Run ``cmd``; its own peak RSS, and its wall time from fork to reaping (timed in the trampoline,
    so the trampoline's own start-up is not counted)."""
    with tempfile.NamedTemporaryFile(prefix="kms-bench-rss-") as out:
        proc = subprocess.run(
            [sys.executable, "-S", "-c", _TRAMPOLINE, out.name, *cmd], env=env, capture_output=True, cwd=ROOT
        )
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()}")
        rss_kib, wall_s = Path(out.name).read_text().split()
    return Run(float(wall_s) * 1000, int(rss_kib) / 1024, proc.stdout)


def run_plain(cmd: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall time (ms) of ``cmd`` started directly (no trampoline), for start-up figures."""
    t = time.perf_counter()
    proc = subprocess.run(list(cmd), env=env, capture_output=True, cwd=ROOT)
    wall = (time.perf_counter() - t) * 1000
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()}")
    return wall


def time_rss_mib(cmd: Sequence[str], env: dict[str, str] | None = None) -> float | None:
    """Peak RSS of ``cmd`` as /usr/bin/time -f %M reports it (None when it is not installed)."""
    if not Path("/usr/bin/time").exists():
        return None
    with tempfile.NamedTemporaryFile(prefix="kms-bench-time-") as out:
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out.name, *cmd], env=env, capture_output=True, check=True)
        return int(Path(out.name).read_text().split()[-1]) / 1024


def cli_env(home: Path) -> dict[str, str]:
    return {**os.environ, "KMS_AGENT_HOME": str(home), "KMS_AGENT_SIM_TOUCH": "auto"}


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


# --- data directories -----------------------------------------------------------------------------
def new_home(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def make_vault(home: Path) -> Any:
    """A 2-of-3 vault on simulated tokens alice, bob, carol; returns the open UnlockedVault."""
    from agent.cli.context import Paths
    from agent.policy import initial_policy
    from agent.tokens.discovery import open_token
    from agent.tokens.sim.prompts import SimulatorPrompts
    from agent.vault.vault import create_vault

    paths = Paths(home)
    tokens = [(name, open_token(f"sim:{name}", home)) for name in OPERATORS]
    pending = create_vault(paths.vault, paths.pin, tokens, 2, SimulatorPrompts(home), policy=initial_policy(2))
    return pending.commit()


def fill_vault(vault: Any, n: int, *, progress: bool = True) -> list[str]:
    """Add ``n`` BTC mnemonic wallets (one shared xpub: the product's add_wallet, as bench-vault does) and save.

    Returns the signature ids in insertion order.
    """
    from agent.chains import get_chain

    btc = get_chain("BTC")
    xpub = btc.xpub_from_mnemonic(PHRASE, testnet=False)
    ids = []
    for i in range(n):
        row = vault.add_wallet(
            wallet_type="MNEMONIC",
            chain="BTC",
            testnet=False,
            secret=bytearray(PHRASE.encode()),
            xpub=xpub,
        )
        ids.append(row.signature_id)
        if progress and i and i % 25_000 == 0:
            print(f"  filling: {i}/{n}", file=sys.stderr)
    vault.save()
    return ids


def add_eth_key(vault: Any) -> Any:
    """One more wallet (an ETH private key), as a change for ``transact``."""
    return vault.add_wallet(
        wallet_type="PRIVATE_KEY", chain="ETH", testnet=False, secret=bytearray(b"11" * 32), address="0x" + "11" * 20
    )


@dataclass
class Ready:
    """A data directory ready for withdrawals (as tests/withdrawals/helpers.py ready_home builds one)."""

    home: Path
    service: Any
    finder: Callable[[Any], Any]
    prompts: Any
    sig_id: str

    def tx(self, nonce: int, value: int = 10**17) -> str:
        from agent.chains.evm import ETH

        unsigned: str = ETH.build_transfer(to=COLD, value=value, nonce=nonce, chain_id=SEPOLIA, max_fee_per_gas=10**10)
        return unsigned

    def create(self, nonce: int) -> Any:
        return self.service.create(
            chain="ETH", signature_id=self.sig_id, index=0, tx=self.tx(nonce), initiator="app:bench"
        )


def ready_home(home: Path, *, per_day: int | None = None) -> Ready:
    """2-of-3 vault, the test mnemonic as a Sepolia ETH wallet, a policy allowing COLD up to 1 ETH per tx.

    :param per_day: a daily ETH limit (pass a huge one so velocity is evaluated but never denies).
    """
    from agent.chains.evm import ETH
    from agent.policy import AssetLimits, Policy, Rule, UnknownDestination
    from agent.tokens.discovery import find_token
    from agent.tokens.sim.prompts import SimulatorPrompts
    from agent.withdrawals.service import Withdrawals

    vault = make_vault(home)
    sig = vault.add_wallet(
        wallet_type="MNEMONIC",
        chain="ETH",
        testnet=True,
        secret=bytearray(PHRASE.encode()),
        xpub=ETH.xpub_from_mnemonic(PHRASE, testnet=True),
    ).signature_id
    vault.save()
    vault.close()
    service = Withdrawals(home)
    prompts = SimulatorPrompts(home)

    def finder(slot: Any) -> Any:
        return find_token(slot, home)

    service.change_policy(
        Policy(
            generation=2,
            default=Rule(
                approvals_required=2,
                allowlist=frozenset([ETH.normalize_address(COLD, testnet=True)]),
                unknown_destination=UnknownDestination.DENY,
                assets={"ETH": AssetLimits(per_tx=ETHER, per_hour=None, per_day=per_day)},
            ),
            admin_approvals=2,
        ),
        finder=finder,
        prompts=prompts,
        operators=["alice", "bob"],
    )
    return Ready(home, service, finder, prompts, sig)


# --- time inside the token simulator ------------------------------------------------------------------
@dataclass
class TokenClock:
    """Seconds spent inside the simulated token: opening its device and every CTAPHID call to it.

    Wraps, in this process only, ``agent.tokens.sim.open_sim_hid_device`` (the simulator's power-up,
    state file read, CTAPHID INIT) and python-fido2's ``CtapHidDevice.call`` (one request/response
    with the simulated authenticator, which runs its protocol work, signs and persists its state).
    Nested calls are counted once. Host-side FIDO2 client work (CBOR, PIN/UV protocol ECDH,
    hmac-secret decryption, assertion checks) stays in the agent's share.
    """

    seconds: float = 0.0
    calls: int = 0
    opens: int = 0
    #: Wider: all time in the agent's token layer (the finder, i.e. discovery.find_token, and
    #: Fido2Token.unwrap), host-side FIDO2 client work included; ``seconds`` is a part of it.
    layer_seconds: float = 0.0
    _depth: int = field(default=0, repr=False)
    _layer_depth: int = field(default=0, repr=False)

    def _timed(self, fn: Callable[..., Any], *, is_open: bool) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
                self._depth -= 1
                if is_open:
                    self.opens += 1
                else:
                    self.calls += 1

        return wrapper

    def layer(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._layer_depth:
                return fn(*args, **kwargs)
            self._layer_depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.layer_seconds += time.perf_counter() - t
                self._layer_depth -= 1

        return wrapper

    @contextmanager
    def installed(self) -> Iterator[TokenClock]:
        from fido2.hid import CtapHidDevice

        import agent.tokens.sim as sim
        from agent.tokens.fido2_token import Fido2Token

        saved_open, saved_call, saved_unwrap = sim.open_sim_hid_device, CtapHidDevice.call, Fido2Token.unwrap
        sim.open_sim_hid_device = self._timed(saved_open, is_open=True)  # type: ignore[assignment]
        CtapHidDevice.call = self._timed(saved_call, is_open=False)  # type: ignore[method-assign]
        Fido2Token.unwrap = self.layer(saved_unwrap)  # type: ignore[method-assign]
        try:
            yield self
        finally:
            sim.open_sim_hid_device = saved_open  # type: ignore[assignment]
            CtapHidDevice.call = saved_call  # type: ignore[method-assign]
            Fido2Token.unwrap = saved_unwrap  # type: ignore[method-assign]


# --- withdrawals ----------------------------------------------------------------------------------
@dataclass
class WithdrawalRun:
    count: int
    warmup_ms: float
    wall_s: float
    total_ms: list[float]
    agent_ms: list[float]
    token_ms: list[float]
    layer_ms: list[float]
    create_ms: list[float]
    approve_ms: list[float]
    token_calls: int
    token_opens: int
    disk_bytes: int
    disk_detail: dict[str, int]


def state_bytes(state: Path) -> dict[str, int]:
    """Bytes of queue.sqlite and audit.sqlite (and their -wal files) after a full WAL checkpoint.

    The -shm files (SQLite's shared-memory WAL index, a fixed 32 KiB each) are left out.
    """
    for db in ("audit.sqlite", "queue.sqlite"):
        path = state / db
        if path.exists():
            conn = sqlite3.connect(path)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                conn.close()
    return {
        p.name: p.stat().st_size
        for p in sorted(state.iterdir())
        if p.name.startswith(("audit.sqlite", "queue.sqlite")) and not p.name.endswith("-shm") and p.is_file()
    }


def _one(ready: Ready, nonce: int) -> None:
    req = ready.create(nonce)
    rec = ready.service.approve(req.request_id, finder=ready.finder, prompts=ready.prompts, operators=["alice", "bob"])
    if rec.status != "signed":
        raise SystemExit(f"withdrawal {nonce} ended {rec.status}, not signed")


def run_parallel(ready: Ready, workers: int, count: int) -> float:
    """``workers`` processes (forked), each approving its share of ``count`` withdrawals on the same data
    directory, with a different pair of operators each (so the three simulated tokens share the load);
    returns withdrawals per second over the whole run."""
    import multiprocessing

    from agent.withdrawals.service import Withdrawals

    pairs = [("alice", "bob"), ("bob", "carol"), ("alice", "carol")]
    per_worker = count // workers

    def work(k: int) -> None:
        service = Withdrawals(ready.home)
        mine = Ready(ready.home, service, ready.finder, ready.prompts, ready.sig_id)
        for i in range(per_worker):
            req = mine.create(1_000_000 * (k + 1) + i)
            rec = service.approve(req.request_id, finder=ready.finder, prompts=ready.prompts, operators=pairs[k % 3])
            if rec.status != "signed":
                raise SystemExit(f"worker {k}: withdrawal {i} ended {rec.status}, not signed")

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=work, args=(k,)) for k in range(workers)]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - start
    if any(proc.exitcode for proc in procs):
        raise SystemExit("a parallel worker failed")
    return per_worker * workers / wall


def run_withdrawals(ready: Ready, count: int, *, progress: bool = True) -> WithdrawalRun:
    """One warm-up withdrawal (imports, first connections; timed, not counted), then ``count`` approved
    withdrawals one after another in this process, two simulated touches each."""
    warmup = time_ms(lambda: _one(ready, 0))
    before = sum(state_bytes(ready.home / "state").values())
    clock = TokenClock()
    finder = clock.layer(ready.finder)
    totals, agents, tokens, layers, creates, approves = [], [], [], [], [], []
    with clock.installed():
        start = time.perf_counter()
        for nonce in range(1, count + 1):
            token_before, layer_before = clock.seconds, clock.layer_seconds
            t0 = time.perf_counter()
            req = ready.create(nonce)
            t1 = time.perf_counter()
            rec = ready.service.approve(req.request_id, finder=finder, prompts=ready.prompts, operators=OPERATORS[:2])
            t2 = time.perf_counter()
            if rec.status != "signed":
                raise SystemExit(f"withdrawal {nonce} ended {rec.status}, not signed")
            token = (clock.seconds - token_before) * 1000
            totals.append((t2 - t0) * 1000)
            tokens.append(token)
            layers.append((clock.layer_seconds - layer_before) * 1000)
            agents.append((t2 - t0) * 1000 - token)
            creates.append((t1 - t0) * 1000)
            approves.append((t2 - t1) * 1000)
            if progress and nonce % 100 == 0:
                print(f"  {nonce}/{count}", file=sys.stderr)
        wall = time.perf_counter() - start
    after = state_bytes(ready.home / "state")
    return WithdrawalRun(
        count,
        warmup,
        wall,
        totals,
        agents,
        tokens,
        layers,
        creates,
        approves,
        clock.calls,
        clock.opens,
        sum(after.values()) - before,
        after,
    )


# --- "next to today's figure" -----------------------------------------------------------------------
def ratio(measured: float, today: float | None) -> str:
    """measured / today as ``0.42x`` (lower is better for times, sizes)."""
    if today is None or today == 0:
        return "-"
    return f"{measured / today:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)
