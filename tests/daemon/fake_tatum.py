"""A fake Tatum API over real HTTP on 127.0.0.1, in a thread, plus a fake ``--externalUrl`` system.

It behaves like the parts of Tatum that KMS talks to: ``POST /v3/kms/pending/{chain}`` answers the
pending transactions whose keys are among the posted signatureIds; a broadcast
(``POST /v3/<path>/broadcast``) or a failure report (``POST /v3/tatum/kms/batch``) completes the
pending transaction, which is then no longer returned. Every request is recorded (path, headers,
body) for the tests to check. The external system answers ``/external/<id>`` with a status chosen per
id, and can hang on a chosen call so a test can SIGKILL the daemon while it waits.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "test-api-key-0123"
PATHS = {"ethereum": "ETH", "bitcoin": "BTC", "litecoin": "LTC", "dogecoin": "DOGE", "bcash": "BCH"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeTatum:
    pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    #: HTTP status of the external system per pending id (default 200).
    external: dict[str, int] = field(default_factory=dict)
    #: id -> which call to /external/<id> hangs (1 = the first), for ``hang_seconds``.
    hang_on_call: dict[str, int] = field(default_factory=dict)
    hang_seconds: float = 60.0
    #: Status of every broadcast answer (200: accepted and completed).
    broadcast_status: int = 200
    #: Pending ids whose broadcast Tatum refuses with a 400 (and then completes as failed).
    broadcast_reject: set[str] = field(default_factory=set)
    #: Status of the pending endpoint (200: normal).
    pending_status: int = 200
    _external_calls: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # --- test side ------------------------------------------------------------------------------
    def add(self, chain: str, tx: dict[str, Any]) -> None:
        with self._lock:
            self.pending.setdefault(chain, []).append({"chain": chain, **tx})

    def seen(self, prefix: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def still_pending(self) -> set[str]:
        with self._lock:
            return {tx["id"] for txs in self.pending.values() for tx in txs}

    def wait_for(self, prefix: str, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen(prefix)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no request to {prefix} within {timeout} s")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def external_url(self) -> str:
        return self.url + "/external"

    # --- server side ----------------------------------------------------------------------------
    def _complete(self, pending_id: str) -> None:
        for txs in self.pending.values():
            txs[:] = [tx for tx in txs if tx["id"] != pending_id]

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(Seen(method, path, headers, body))
        if path.startswith("/external/"):
            pid = path.removeprefix("/external/")
            with self._lock:
                calls = self._external_calls[pid] = self._external_calls.get(pid, 0) + 1
            if self.hang_on_call.get(pid) == calls:
                time.sleep(self.hang_seconds)
            status = self.external.get(pid, 200)
            return status, {"ok": status < 300}
        if headers.get("x-api-key") != API_KEY:
            return 403, {"statusCode": 403, "message": "bad api key"}
        if method != "POST":
            return 405, {"message": "POST only"}
        if path.startswith("/v3/kms/pending/"):
            if self.pending_status != 200:
                return self.pending_status, {"message": "internal error"}
            chain = path.removeprefix("/v3/kms/pending/")
            ids = set(body.get("signatureIds", []))
            with self._lock:
                txs = self.pending.get(chain, [])
                mine = [
                    tx
                    for tx in txs
                    if ids & (set(tx.get("hashes", [])) | {s.get("id") for s in tx.get("signatures", [])})
                ]
            return 200, mine
        if path == "/v3/tatum/kms/batch":
            with self._lock:
                for error in body.get("errors", []):
                    self._complete(error["signatureId"])
            return 200, {}
        if path.endswith("/broadcast") and path.removeprefix("/v3/").removesuffix("/broadcast") in PATHS:
            if self.broadcast_status != 200:
                return self.broadcast_status, {"statusCode": self.broadcast_status, "message": "broadcast failed"}
            if body["signatureId"] in self.broadcast_reject:
                with self._lock:
                    self._complete(body["signatureId"])
                return 400, {"statusCode": 400, "message": "tx.inputs.missing-or-spent"}
            with self._lock:
                self._complete(body["signatureId"])
            txid = hashlib.sha256(str(body["txData"]).encode()).hexdigest()
            return 200, {"txId": txid, "completed": True}
        return 404, {"message": f"no route {path}"}

    def __enter__(self) -> FakeTatum:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as Tatum's API answers; TCP_NODELAY so the header and body writes are not held back.
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, answer = fake.handle(self.command, self.path, headers, body)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the daemon was killed while we answered

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def closed_port() -> str:
    """A loopback URL nobody listens on (connection refused)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
