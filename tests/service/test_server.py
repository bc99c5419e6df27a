"""The server's contract: listeners, the bearer token, the socket's permissions, clean stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path

from tests.conftest import REPO, Cli
from tests.service.agent_proc import AgentProcess, start_agent
from tests.withdrawals.helpers import COLD, Ready


def test_tcp_needs_the_token_but_health_does_not(agent: AgentProcess, ready: Ready) -> None:
    rows = len(ready.service.audit.rows())
    token_file = ready.home / "state" / "api-token"
    assert f"API token: {token_file}" in agent.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(agent.token or "") >= 43  # 32 random bytes, urlsafe base64
    with agent.tcp(token=None) as anonymous, agent.tcp(token="wrong" + (agent.token or "")) as wrong:
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/health").json() == {"status": "ok", "vault": "ok"}
        for client in (anonymous, wrong):
            for method, path in [
                ("GET", "/metrics"),
                ("GET", "/openapi.json"),
                ("GET", "/v1/wallets"),
                ("GET", "/v1/withdrawals"),
                ("POST", "/v1/withdrawals"),
            ]:
                response = client.request(method, path, json={"chain": "ETH"} if method == "POST" else None)
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"]["code"] == "unauthorized"
    with agent.tcp() as client:
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert client.get("/v1/wallets").status_code == 200
    assert len(ready.service.audit.rows()) == rows  # refused requests left nothing


def test_socket_is_private_and_needs_no_token(agent: AgentProcess, ready: Ready) -> None:
    mode = agent.socket.lstat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    with agent.unix() as client:
        wallets = client.get("/v1/wallets").json()["wallets"]
        assert [w["signatureId"] for w in wallets] == [ready.sig_id]
        address = client.get(f"/v1/wallets/{ready.sig_id}/addresses/5").json()
        assert address["address"] == ready.eth.address_from_xpub(wallets[0]["xpub"], 5, testnet=True)
        assert client.get(f"/v1/wallets/{ready.sig_id}/addresses/-1").status_code == 422
        assert client.get("/v1/wallets/nope/addresses/0").status_code == 404


def test_sigterm_and_sigint_stop_cleanly_and_remove_the_socket(ready: Ready) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        running = start_agent(ready.home, tcp=False)
        assert running.stop(sig) == 0, running.stderr
        assert not running.socket.exists()


def test_a_fresh_directory_is_created_private_and_a_stale_socket_replaced(tmp_path: Path) -> None:
    home = tmp_path / "fresh" / "kms"
    home.parent.mkdir()
    home.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(home / "agent.sock"))  # bound, never listening, never removed: a killed agent's
    stale.close()
    running = start_agent(home, tcp=False)
    try:
        assert stat.S_IMODE((home / "state").stat().st_mode) == 0o700
        with running.unix() as client:
            assert client.get("/health").json() == {"status": "degraded", "vault": "not-found"}
            error = client.get("/v1/wallets")
            assert error.status_code == 503 and error.json()["error"]["code"] == "vault-not-found"
        second = start_agent_expecting_failure(home)
        assert second[0] == 9 and "already serves" in second[1]
    finally:
        assert running.stop() == 0


def start_agent_expecting_failure(home: Path, *args: str) -> tuple[int, str]:
    import subprocess
    import sys

    env = {**os.environ, "KMS_AGENT_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "serve", *args], capture_output=True, env=env, cwd=REPO, timeout=60
    )
    return proc.returncode, proc.stderr.decode()


def test_non_loopback_addresses_are_refused(cli: Cli) -> None:
    for address in ("0.0.0.0:8080", "10.1.2.3:80", "[::]:80", "example.com:80", "127.0.0.1", "127.0.0.1:99999"):
        proc = cli("serve", "--tcp", address)
        assert proc.returncode == 2, (address, proc.stderr)
        assert "Traceback" not in proc.stderr
    proc = cli("serve", "--tls-cert", "x.pem")
    assert proc.returncode == 2


def test_another_agent_on_the_socket_is_refused(agent: AgentProcess, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    code, err = start_agent_expecting_failure(other, "--socket", str(agent.socket))
    assert code == 9 and "another agent answers" in err, err


def test_committed_schema_is_the_served_one(agent: AgentProcess) -> None:
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    with agent.tcp() as client:
        served = client.get("/openapi.json").json()
    assert served == committed, "regenerate it: python -m agent.service.app > docs/openapi.json"
    assert "/v1/withdrawals" in served["paths"]


def test_serve_help_does_not_load_the_web_stack(cli: Cli) -> None:
    proc = cli("-l", "debug", "serve", "--help")
    assert proc.returncode == 0
    import subprocess
    import sys

    code = "import sys; from agent.cli import app; assert not {'fastapi', 'pydantic', 'uvicorn'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert COLD  # the ready helpers are shared with the other service tests
