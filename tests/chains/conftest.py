"""Fixtures for the chain tests: a real local EVM node (anvil), installed from npm on first use.

anvil comes from the npm registry as a prebuilt static binary (``@foundry-rs/anvil-<os>-<arch>``;
the wrapper package ``@foundry-rs/anvil`` only downloads the same binary in a postinstall step). It
is installed once into ``<repo>/.tools`` under a file lock, so two xdist workers do not race, and
each worker then starts its own node on a free loopback port.
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools"
ANVIL_VERSION = "1.7.1"
#: Sepolia's chain id, so transactions are checked by our ETH *testnet* rules end to end.
CHAIN_ID = 11155111


def _anvil_package() -> str:
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system())
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    if system is None or arch is None:
        pytest.fail(f"no prebuilt anvil for {platform.system()}/{platform.machine()}")
    return f"@foundry-rs/anvil-{system}-{arch}"


def anvil_binary() -> Path:
    """Path to anvil, installing it with npm into <repo>/.tools if needed."""
    if os.environ.get("KMS_AGENT_ANVIL"):
        return Path(os.environ["KMS_AGENT_ANVIL"])
    pkg = _anvil_package()
    binary = TOOLS / "node_modules" / pkg / "bin" / "anvil"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to install anvil (apt-get install npm, or set KMS_AGENT_ANVIL)")
    TOOLS.mkdir(exist_ok=True)
    with open(TOOLS / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            subprocess.run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(TOOLS),
                    "--no-audit",
                    "--no-fund",
                    "--ignore-scripts",
                    "--no-save",
                    f"{pkg}@{ANVIL_VERSION}",
                ],
                check=True,
                capture_output=True,
                timeout=300,
            )
    binary.chmod(0o755)
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Node:
    """A running anvil and a JSON-RPC client for it (httpx, loopback only)."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        import httpx

        self.url = url
        self.proc = proc
        self.client = httpx.Client(timeout=10)
        self._id = 0

    def rpc(self, method: str, *params: Any) -> Any:
        self._id += 1
        r = self.client.post(
            self.url, json={"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)}
        )
        r.raise_for_status()
        body = r.json()
        if "error" in body:
            raise RpcError(body["error"].get("message", str(body["error"])))
        return body["result"]

    def wait_receipt(self, tx_hash: str) -> dict[str, Any]:
        for _ in range(200):
            receipt = self.rpc("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                return dict(receipt)
            time.sleep(0.01)
        raise AssertionError(f"no receipt for {tx_hash}")


class RpcError(Exception):
    pass


@pytest.fixture(scope="session")
def anvil() -> Iterator[Node]:
    binary = anvil_binary()
    last = ""
    for _attempt in range(3):
        port = _free_port()
        proc = subprocess.Popen(
            [str(binary), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(CHAIN_ID), "--silent"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        node = Node(f"http://127.0.0.1:{port}", proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if int(node.rpc("eth_chainId"), 16) == CHAIN_ID:
                    break
            except Exception:
                time.sleep(0.02)
        else:
            last = proc.stderr.read().decode(errors="replace") if proc.stderr and proc.poll() is not None else ""
            proc.kill()
            proc.wait()
            continue
        try:
            yield node
        finally:
            node.client.close()
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    pytest.fail(f"anvil did not start: {last}")
