"""``kms-agent serve`` as a real subprocess, and HTTP clients for its socket and its loopback port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import REPO

UDS_BASE = "http://kms-agent"


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    home: Path
    socket: Path
    stderr_path: Path
    base_url: str | None = None
    token: str | None = None

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def unix(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url=UDS_BASE, timeout=timeout)

    def tcp(self, token: str | None = "", timeout: float = 60) -> httpx.Client:
        """A TCP client sending ``token`` (default: the right one; None: no Authorization header)."""
        assert self.base_url is not None
        token = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def start_agent(home: Path, *args: str, tcp: bool = True, env: dict[str, str] | None = None) -> AgentProcess:
    """Start ``python -m agent serve`` on ``home``; returns once it answers on its socket."""
    socket = home / "agent.sock"
    stderr_path = home.parent / f"serve-{time.monotonic_ns()}.err"
    argv = [sys.executable, "-m", "agent", "serve", *(["--tcp", "127.0.0.1:0"] if tcp else []), *args]
    child_env = {**os.environ, "KMS_AGENT_HOME": str(home), **(env or {})}
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=child_env, cwd=REPO)
    agent = AgentProcess(proc, home, socket, stderr_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kms-agent serve exited with {proc.returncode}: {agent.stderr}")
        text = agent.stderr
        if "serving the API on unix:" in text and (not tcp or "API token: " in text):
            break
        time.sleep(0.05)
    else:
        agent.stop(signal.SIGKILL)
        raise TimeoutError(f"kms-agent serve did not start: {agent.stderr}")
    if tcp:
        found = re.search(r"serving the API on (http://127\.0\.0\.1:\d+)", agent.stderr)
        assert found, agent.stderr
        agent.base_url = found.group(1)
        agent.token = (home / "state" / "api-token").read_text().strip()
    return agent
