"""Load on the local API (see scripts/bench-service): concurrent clients submitting and polling over loopback.

Starts ``kms-agent serve --tcp 127.0.0.1:0`` on a fresh data directory (simulated tokens), runs CLIENTS
threads for SECONDS, each submitting a withdrawal and then polling it, and prints p50/p99 latency and
requests/s. Fails (exit 1) on any error, and on any lost or duplicated withdrawal: the ids the clients
were given must be exactly the withdrawal ``request`` rows of the audit log.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import AutoPrompts
from tests.service.agent_proc import start_agent
from tests.withdrawals.helpers import ETHER, ready_home


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-inflight", type=int, default=None, help="passed to `kms-agent serve`")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="kms-bench-svc-")) / "kms"
    home.mkdir(mode=0o700)
    os.environ["KMS_AGENT_HOME"] = str(home)
    os.environ["KMS_AGENT_SIM_TOUCH"] = "auto"
    ready = ready_home(home, AutoPrompts(home), per_day=10**9 * ETHER)
    agent = start_agent(home, *(["--max-inflight", str(args.max_inflight)] if args.max_inflight else []))
    lock = threading.Lock()
    submit_ms: list[float] = []
    poll_ms: list[float] = []
    created: list[str] = []
    errors: list[str] = []
    start = time.monotonic()
    stop = start + args.seconds

    def client_loop(n: int) -> None:
        with agent.tcp(timeout=120) as client:
            i = 0
            while time.monotonic() < stop:
                body = {"chain": "ETH", "signatureId": ready.sig_id, "tx": ready.tx(ETHER // 1000, n * 1_000_000 + i)}
                i += 1
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/withdrawals", json=body, headers={"Idempotency-Key": f"bench-{n}-{i}"})
                except Exception as exc:
                    errors.append(f"submit: {type(exc).__name__}: {exc}")
                    continue
                t1 = time.perf_counter()
                if r.status_code != 201:
                    errors.append(f"submit: HTTP {r.status_code}: {r.text[:200]}")
                    continue
                rid = r.json()["id"]
                try:
                    p = client.get(f"/v1/withdrawals/{rid}")
                except Exception as exc:
                    errors.append(f"poll: {type(exc).__name__}: {exc}")
                    continue
                t2 = time.perf_counter()
                with lock:
                    created.append(rid)
                    submit_ms.append((t1 - t0) * 1000)
                    poll_ms.append((t2 - t1) * 1000)
                if p.status_code != 200 or p.json().get("id") != rid:
                    errors.append(f"poll: HTTP {p.status_code}: {p.text[:200]}")

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    code = agent.stop()
    logged = [str(r.request_id) for r in ready.service.audit.rows(kinds=["request"]) if "payload_cbor" in r.payload]
    lost = set(created) - set(logged)
    unexpected = set(logged) - set(created)
    duplicated = len(created) - len(set(created))
    requests = len(submit_ms) + len(poll_ms)
    all_ms = submit_ms + poll_ms

    print(f"kms-agent serve on loopback TCP: {args.clients} clients for {elapsed:.1f} s (submit, then poll)")
    print(f"  requests: {requests} ({requests / elapsed:.1f}/s); withdrawals submitted: {len(created)}")
    print(f"  all:    p50 {statistics.median(all_ms):7.1f} ms   p99 {percentile(all_ms, 99):7.1f} ms")
    print(f"  submit: p50 {statistics.median(submit_ms):7.1f} ms   p99 {percentile(submit_ms, 99):7.1f} ms")
    print(f"  poll:   p50 {statistics.median(poll_ms):7.1f} ms   p99 {percentile(poll_ms, 99):7.1f} ms")
    print(
        f"  errors: {len(errors)}; audit request rows: {len(logged)}; lost: {len(lost)}; "
        f"duplicated: {duplicated}; in the log but never answered: {len(unexpected)}; server exit: {code}"
    )
    for line in errors[:10]:
        print(f"  error: {line}")
    ok = not errors and not lost and not duplicated and not unexpected and code == 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
