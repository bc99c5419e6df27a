"""Alerts end to end: real withdrawals, the real watcher and dispatcher, real HTTP to a loopback receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent import events
from agent.errors import PinBlocked, PinInvalid, PolicyDenied, QuorumNotMet
from agent.service.alerts import AlertConfigError, load_config, verify_signature
from agent.service.notify import notify_waiting
from agent.service.watch import AlertWatcher, start_alerting
from tests.conftest import REPO, AutoPrompts
from tests.withdrawals.helpers import ETHER, Ready, ready_home

STRANGER = "0x000000000000000000000000000000000000dEaD"
SECRET = b"0123456789abcdef-webhook-key"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST; the first ``fail_first`` get a 500."""

    fail_first: int = 0
    got: list[Received] = field(default_factory=list)
    ok: list[Received] = field(default_factory=list)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                item = Received(self.path, dict(self.headers.items()), body)
                receiver.got.append(item)
                status = 500 if len(receiver.got) <= receiver.fail_first else 200
                if status == 200:
                    receiver.ok.append(item)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kinds(self) -> list[str]:
        return [r.json()["kind"] for r in self.ok]

    def wait_for(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ok) < n and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def ready(home: Path, prompts: AutoPrompts) -> Ready:
    return ready_home(home, prompts)


def write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, data)
    os.close(fd)
    return path


def configure(home: Path, channels: list[dict[str, Any]], **extra: Any) -> None:
    write_private(home / "webhook.key", SECRET + b"\n")
    doc = {"v": 1, "channels": channels, "retry": {"attempts": 3, "base_seconds": 0.05, "max_seconds": 5}, **extra}
    write_private(home / "alerts.json", json.dumps(doc).encode())


def webhook(port: int, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": f"http://127.0.0.1:{port}/hook", "secret_file": "webhook.key", **extra}


def watcher(home: Path) -> AlertWatcher:
    config = load_config(home)
    assert config is not None
    w = AlertWatcher(home, config)
    w.start()
    return w


def deny(ready: Ready, nonce: int = 0) -> str:
    """A withdrawal to an address off the allowlist, through the real service: recorded, then refused."""
    with pytest.raises(PolicyDenied) as caught:
        ready.service.create(
            chain="ETH",
            signature_id=ready.sig_id,
            index=0,
            tx=ready.tx(ETHER // 10, nonce, to=STRANGER),
            initiator="app:exchange",
        )
    assert caught.value.request_id
    return caught.value.request_id


def test_webhook_gets_a_signed_policy_denial(ready: Ready, receiver: Receiver) -> None:
    configure(ready.home, [webhook(receiver.port, kinds=["policy-deny"])])
    w = watcher(ready.home)
    rid = deny(ready)
    alerts = w.poll_once()
    assert {a.kind for a in alerts} >= {"policy-deny", "new-destination"}

    assert len(receiver.ok) == 1
    got = receiver.ok[0]
    assert got.path == "/hook"
    # The scheme as docs/monitoring.md states it, computed here independently of agent code.
    ts = got.headers["X-KMS-Timestamp"]
    expected = hmac.new(SECRET, ts.encode() + b"." + got.body, hashlib.sha256).hexdigest()
    assert got.headers["X-KMS-Signature"] == f"sha256={expected}"
    assert abs(int(ts) - time.time()) < 60
    assert verify_signature(SECRET, got.headers, got.body)
    assert not verify_signature(SECRET, got.headers, got.body + b" ")
    assert not verify_signature(SECRET, got.headers, got.body, now=int(ts) + 3600)  # a replay, later
    payload = got.json()
    assert payload["kind"] == "policy-deny"
    assert payload["request_id"] == rid
    assert payload["id"] == got.headers["X-KMS-Alert-Id"]
    assert "not-allowlisted" in payload["detail"] or STRANGER.lower() in payload["detail"].lower()


def test_a_receiver_that_fails_twice_gets_the_alert_once(ready: Ready, receiver: Receiver) -> None:
    receiver.fail_first = 2
    configure(ready.home, [webhook(receiver.port, kinds=["policy-deny"])])
    w = watcher(ready.home)
    rid = deny(ready)
    w.poll_once()
    assert len(receiver.got) == 3
    assert len(receiver.ok) == 1
    assert receiver.ok[0].json()["request_id"] == rid
    assert len({r.headers["X-KMS-Alert-Id"] for r in receiver.got}) == 1  # one alert, retried
    assert not [e for e in events.read(ready.home / "state") if e["error"] == "AlertUndelivered"]


def test_an_undeliverable_alert_lands_in_the_events_log(ready: Ready) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    configure(ready.home, [webhook(port, kinds=["policy-deny"])])
    w = watcher(ready.home)
    rid = deny(ready)
    started = time.monotonic()
    w.poll_once()
    assert time.monotonic() - started < 10
    lost = [e for e in events.read(ready.home / "state") if e["error"] == "AlertUndelivered"]
    assert len(lost) == 1
    assert rid in lost[0]["message"] and "policy-deny" in lost[0]["message"]
    assert "3 attempts" in lost[0]["message"]
    text = (ready.home / "state" / "events.jsonl").read_text()
    assert SECRET.decode() not in text and str(port) not in text  # neither the key nor the URL


def test_a_storm_of_denials_is_a_bounded_number_of_deliveries(ready: Ready, receiver: Receiver) -> None:
    configure(ready.home, [webhook(receiver.port)])
    w = watcher(ready.home)
    for nonce in range(200):
        deny(ready, nonce)
    alerts = w.poll_once()
    assert sum(a.kind == "policy-deny" for a in alerts) == 200
    # Default buckets: 5 per kind (policy-deny, new-destination), then one summary of the rest.
    assert len(receiver.ok) <= 11
    kinds = receiver.kinds()
    assert kinds.count("policy-deny") == 5
    assert kinds[-1] == "summary"
    summary = receiver.ok[-1].json()
    assert summary["extra"]["suppressed"]["policy-deny"] == 195
    # A second poll with nothing new sends nothing (the next summary waits for new suppressions).
    w.poll_once()
    assert len(receiver.ok) == len(kinds)


def test_a_restart_neither_repeats_nor_loses_alerts(ready: Ready, receiver: Receiver) -> None:
    configure(ready.home, [webhook(receiver.port, kinds=["policy-deny"])])
    w = watcher(ready.home)
    first = deny(ready, 0)
    w.poll_once()
    assert [r.json()["request_id"] for r in receiver.ok] == [first]

    # Denials while no watcher runs, then a new watcher in a new process.
    second = deny(ready, 1)
    third = deny(ready, 2)
    code = "from agent.service.watch import AlertWatcher; from agent.service.alerts import load_config; " + (
        f"import pathlib; h = pathlib.Path({str(ready.home)!r}); AlertWatcher(h, load_config(h)).poll_once()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
    assert [r.json()["request_id"] for r in receiver.ok] == [first, second, third]

    watcher(ready.home).poll_once()  # and once more in this process: nothing new, nothing repeated
    assert len(receiver.ok) == 3
    position = ready.home / "state" / "alerts-position.json"
    assert position.stat().st_mode & 0o777 == 0o600


def test_apprise_json_and_slack_compatible_channels(ready: Ready, receiver: Receiver) -> None:
    write_private(ready.home / "mm.token", b"kmsagenttesttoken0123456789\n")
    configure(
        ready.home,
        [
            {"type": "apprise", "url": f"json://127.0.0.1:{receiver.port}/apprise", "kinds": ["policy-deny"]},
            # Mattermost's incoming webhook speaks Slack's payload; Apprise's mmost:// plugin posts it.
            {
                "type": "slack",
                "url": f"mmost://127.0.0.1:{receiver.port}/{{secret}}",
                "secret_file": "mm.token",
                "kinds": ["policy-deny"],
            },
        ],
    )
    w = watcher(ready.home)
    rid = deny(ready)
    w.poll_once()
    by_path = {r.path: r.json() for r in receiver.ok}
    assert set(by_path) == {"/apprise", "/hooks/kmsagenttesttoken0123456789"}
    assert "denied by policy" in by_path["/apprise"]["title"]
    assert rid in by_path["/apprise"]["message"]
    assert rid in by_path["/hooks/kmsagenttesttoken0123456789"]["text"]


def test_events_log_failed_unlock_and_low_pin(ready: Ready, receiver: Receiver) -> None:
    configure(ready.home, [webhook(receiver.port)])
    w = watcher(ready.home)
    state = ready.home / "state"
    events.record(state, "unlock", QuorumNotMet("only 1 of 2 operators touched"))
    events.record(state, "approve", PinInvalid("wrong PIN for sim:alice: 7 tries left", attempts_remaining=7))
    events.record(state, "approve", PinInvalid("wrong PIN for sim:bob: 1 try left", attempts_remaining=1))
    events.record(state, "approve", PinBlocked("the PIN of sim:carol is blocked"))
    alerts = w.poll_once()
    assert [a.kind for a in alerts] == ["failed-unlock", "pin-low", "pin-low"]
    assert receiver.kinds() == ["failed-unlock", "pin-low", "pin-low"]
    assert "sim:bob" in receiver.ok[1].json()["detail"]
    assert receiver.ok[2].json()["severity"] == "critical"
    assert w.poll_once() == []


def test_overdue_request_alerts_once(ready: Ready, receiver: Receiver) -> None:
    configure(ready.home, [webhook(receiver.port, kinds=["approval-overdue"])], overdue_minutes=10)
    w = watcher(ready.home)
    rid = ready.create(ETHER // 10)
    now = time.time()
    assert [a.kind for a in w.poll_once(now)] == ["new-destination"]
    assert [a.kind for a in w.poll_once(now + 601)] == ["approval-overdue"]
    assert w.poll_once(now + 700) == []
    assert [r.json()["request_id"] for r in receiver.ok] == [rid]


def test_audit_tampering_alerts_once(ready: Ready, receiver: Receiver) -> None:
    import sqlite3

    configure(ready.home, [webhook(receiver.port, kinds=["audit-failure"])])
    w = watcher(ready.home)
    ready.create(ETHER // 10)
    db = sqlite3.connect(ready.home / "state" / "audit.sqlite")
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("UPDATE audit_log SET ts = ts + 1 WHERE seq = (SELECT MAX(seq) FROM audit_log)")
    db.commit()
    db.close()
    w.poll_once()
    w.poll_once()
    assert receiver.kinds() == ["audit-failure"]
    assert receiver.ok[0].json()["severity"] == "critical"


def test_start_alerting_runs_in_the_background(ready: Ready, receiver: Receiver) -> None:
    configure(ready.home, [webhook(receiver.port, kinds=["policy-deny"])], poll_seconds=0.1)
    stop = start_alerting(ready.home)
    try:
        rid = deny(ready)
        receiver.wait_for(1)
    finally:
        stop()
    assert [r.json()["request_id"] for r in receiver.ok] == [rid]


def test_without_a_config_alerting_is_off(home: Path) -> None:
    stop = start_alerting(home)
    stop()
    assert not (home / "state" / "alerts-position.json").exists()


def test_notify_waiting_desktop_and_channel(
    ready: Ready, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(ready.home, [webhook(receiver.port, kinds=["approval-waiting"])])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    notifier = bin_dir / "notify-send"
    notifier.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/desktop.txt\n')
    notifier.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    rid = ready.create(ETHER // 10)
    notify_waiting(ready.home, rid, "0.1 ETH to 0x…c01d0 <b>", wait=True)
    assert rid in (tmp_path / "desktop.txt").read_text()
    assert "&lt;b&gt;" in (tmp_path / "desktop.txt").read_text()
    assert [(r.json()["kind"], r.json()["request_id"]) for r in receiver.ok] == [("approval-waiting", rid)]

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no notifier at all: still no failure
    notify_waiting(ready.home, rid, "again", wait=True)
    assert len(receiver.ok) == 2


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"channels": []}, "channels: must be a non-empty list"),
        ({"channels": [{"type": "pager", "url": "x"}]}, "channels[0].type: must be one of"),
        ({"channels": [{"type": "webhook", "url": "http://127.0.0.1:1/"}]}, "channels[0].secret_file: a webhook"),
        (
            {"channels": [{"type": "email", "url": "http://x/"}]},
            "channels[0].url: a URL of a 'email' channel starts with mailto://",
        ),
        ({"channels": [{"type": "apprise", "url": "bogus://x"}]}, "channels[0].url: Apprise does not accept"),
        ({"channels": [{"type": "apprise", "url": "json://x", "kinds": ["nope"]}]}, "unknown alert kind 'nope'"),
        ({"channels": [{"type": "apprise", "url": "json://x", "token": "t"}]}, "channels[0].token: unknown key"),
        ({"channels": [{"type": "apprise", "url": "json://x"}], "rate_limit": {"overall": {"burst": 0}}}, "burst"),
    ],
)
def test_bad_config_is_one_clear_error(home: Path, doc: dict[str, Any], message: str) -> None:
    write_private(home / "alerts.json", json.dumps(doc).encode())
    with pytest.raises(AlertConfigError) as caught:
        load_config(home)
    assert message in caught.value.message
    assert "alerts.json" in caught.value.message


def test_config_and_secret_files_must_be_private(home: Path) -> None:
    key = write_private(home / "webhook.key", SECRET)
    path = write_private(
        home / "alerts.json",
        json.dumps(
            {"channels": [{"type": "webhook", "url": "http://127.0.0.1:1/", "secret_file": "webhook.key"}]}
        ).encode(),
    )
    assert load_config(home) is not None
    key.chmod(0o644)
    with pytest.raises(AlertConfigError, match="accessible by other users"):
        load_config(home)
    key.chmod(0o600)
    path.chmod(0o640)
    with pytest.raises(AlertConfigError, match="accessible by other users"):
        load_config(home)


def test_the_documented_signature_example() -> None:
    """docs/monitoring.md's worked example is what agent.service.alerts.sign computes."""
    from agent.service.alerts import sign

    doc = (REPO / "docs" / "monitoring.md").read_text()
    body = next(line for line in doc.splitlines() if line.startswith('{"audit_seq":42')).encode()
    signature = sign(b"example-webhook-key-0123456789", 1767225600, body)
    assert f"X-KMS-Signature: {signature}" in doc
    headers = {"X-KMS-Timestamp": "1767225600", "X-KMS-Signature": signature}
    assert verify_signature(b"example-webhook-key-0123456789", headers, body, now=1767225600 + 299)
    assert not verify_signature(b"example-webhook-key-0123456789", headers, body, now=1767225600 + 301)


def test_an_apprise_channel_that_is_down_lands_in_the_events_log(ready: Ready) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_private(ready.home / "token", b"apprisetoken0123456789\n")
    configure(
        ready.home,
        [{"type": "apprise", "url": f"json://127.0.0.1:{port}/{{secret}}", "secret_file": "token", "name": "ops"}],
    )
    w = watcher(ready.home)
    rid = deny(ready)
    w.poll_once()
    lost = [e for e in events.read(ready.home / "state") if e["error"] == "AlertUndelivered"]
    assert {e["message"].split(" ")[0] for e in lost} == {"policy-deny", "new-destination"}
    assert all("channel 'ops' (apprise) after 3 attempts" in e["message"] for e in lost[:1])
    assert any(rid in e["message"] for e in lost)
    assert "apprisetoken" not in (ready.home / "state" / "events.jsonl").read_text()
