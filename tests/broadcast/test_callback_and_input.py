"""The HMAC-signed application callback, the documented test vector, and bad input that changes nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.broadcast import config
from agent.broadcast.broadcaster import broadcast_request
from agent.broadcast.callback import EVENT_ID_HEADER, body_bytes, post
from agent.broadcast.watcher import watch_once
from agent.service.alerts import sign, verify_signature
from tests.broadcast.helpers import World
from tests.conftest import REPO
from tests.withdrawals.helpers import ETHER

SECRET = b"kms-agent-callback-test-secret"


class Receiver:
    """An application's callback endpoint on loopback: answers 500 to the first POST, then 200."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = True
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append((dict(self.headers), body))
                status = 500 if receiver.fail_first else 200
                receiver.fail_first = False
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/chain-events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_callback_gets_hmac_signed_json_for_each_recorded_change(world: World, receiver: Receiver) -> None:
    secret_file = world.home.parent / "callback.secret"
    secret_file.write_bytes(SECRET)
    secret_file.chmod(0o600)
    out = world.cli_json("callback", "set", receiver.url, "--secret-file", str(secret_file))
    assert out["url"] == receiver.url and SECRET.decode() not in json.dumps(out)
    assert SECRET.decode() not in (world.home / "nodes.json").read_text()
    world.set_node()
    world.fund(7)
    state = world.transfer(7, ETHER // 10)
    assert state.signed is not None
    try:
        assert broadcast_request(world.home, state.request_id).ok
        events = [e for e in watch_once(world.home) if e.request_id == state.request_id]
        assert [(e.event, e.callback) for e in events] == [("confirmed", "delivered")]
    finally:
        world.cli_json("callback", "remove")
    mine = [(h, b) for h, b in receiver.got if json.loads(b)["request_id"] == state.request_id]
    assert len(mine) == 2  # a 500, then the retry with the same body
    (h1, b1), (h2, b2) = mine
    assert b1 == b2 and h1[EVENT_ID_HEADER] == h2[EVENT_ID_HEADER]
    assert verify_signature(SECRET, h2, b2)
    assert not verify_signature(b"another-secret-of-some-length", h2, b2)
    assert not verify_signature(SECRET, h2, b2.replace(b'"confirmed"', b'"failed"'))
    doc = json.loads(b2)
    assert (doc["v"], doc["event"], doc["txid"], doc["depth"]) == (1, "confirmed", state.signed.txid, 1)
    assert (
        doc["audit_seq"] == world.ready.service.audit.rows(kinds=["confirmation"], request_id=state.request_id)[-1].seq
    )


def test_an_unreachable_callback_never_undoes_the_rows(tmp_path: Path) -> None:
    secret_file = tmp_path / "s"
    secret_file.write_bytes(SECRET)
    secret_file.chmod(0o600)
    slept: list[float] = []
    delivery = post(config.Callback("http://127.0.0.1:9/x", secret_file), {"event": "x"}, sleep=slept.append)
    assert not delivery.ok and delivery.attempts == 3 and len(slept) == 2
    secret_file.chmod(0o644)
    assert "other users" in post(config.Callback("http://127.0.0.1:9/x", secret_file), {"event": "x"}).detail


#: The worked example of docs/broadcast.md §8.
VECTOR_EVENT = {
    "v": 1,
    "event": "confirmed",
    "request_id": "0123456789abcdef0123456789abcdef",
    "external": None,
    "chain": "ETH",
    "testnet": True,
    "txid": "0x" + "ab" * 32,
    "depth": 3,
    "block_height": 120,
    "block_hash": "0x" + "cd" * 32,
    "reason": None,
    "replaced_by": None,
    "audit_seq": 42,
    "ts": 1700000000,
}
VECTOR_TS = 1700000000


def test_the_documented_signature_vector() -> None:
    body = body_bytes(VECTOR_EVENT)
    signature = sign(SECRET, VECTOR_TS, body)
    docs = (REPO / "docs" / "broadcast.md").read_text()
    assert body.decode() in docs and signature in docs and SECRET.decode() in docs
    assert signature == "sha256=" + __import__("hmac").new(SECRET, b"1700000000." + body, "sha256").hexdigest()


def test_bad_input_changes_nothing(world: World) -> None:
    audit = world.ready.service.audit
    seq = audit.last_seq()
    nodes = world.home / "nodes.json"
    world.set_node()
    before = nodes.read_bytes()
    pending = world.request(world.ready.tx(ETHER // 10, nonce=900), 8)

    cases = [
        (("broadcast", "f" * 32), 2, "no withdrawal request"),
        (("broadcast", pending), 5, "only a signed request can be broadcast"),
        (("broadcast",), 2, "REQUEST_ID or --all"),
        (("node", "set", "ETH", "--kind", "carrier-pigeon", "--url", "http://x"), 2, "Invalid value"),
        (("node", "set", "ETH", "--kind", "evm-rpc", "--url", "ftp://x"), 2, "http:// or https://"),
        (("node", "set", "NOPE", "--kind", "evm-rpc", "--url", "http://x"), 2, "unknown chain"),
        (("node", "remove", "BTC"), 2, "no node configured for BTC"),
        (
            ("callback", "set", "http://127.0.0.1:1/", "--secret-file", str(world.home.parent / "missing")),
            2,
            "callback secret",
        ),
    ]
    seq = audit.last_seq()
    for args, code, message in cases:
        proc = world.cli(*args)
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("kms-agent: error:") == 1
    assert audit.last_seq() == seq and nodes.read_bytes() == before

    try:
        nodes.write_text('{"version": 1, "nodes": [{"chain": "ETH", "testnet": true, "kind": "evm-rpc"}]}')
        for args in (("broadcast", pending), ("watch", "--once"), ("node", "list")):
            proc = world.cli(*args)
            assert proc.returncode == 2 and "nodes.json" in proc.stderr and "Traceback" not in proc.stderr, proc
        nodes.write_bytes(before)
        nodes.chmod(0o644)
        proc = world.cli("node", "list")
        assert proc.returncode == 2 and "other users" in proc.stderr
    finally:
        nodes.write_bytes(before)
        nodes.chmod(0o600)
    assert audit.last_seq() == seq


def test_watch_loops_until_sigterm(world: World) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    world.set_node()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_AGENT_")}
    env["KMS_AGENT_HOME"] = str(world.home)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "watch", "--interval", "0.1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(2)]  # two passes reported
        assert all("next pass in 0.1 s" in line for line in lines), lines
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - start < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    passes = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(passes) >= 2 and all("events" in p for p in passes)
