"""An Esplora-style REST server on 127.0.0.1 over a :class:`tests.broadcast.regtest.Regtest` chain.

It serves the subset of Blockstream's API.md that :class:`agent.broadcast.esplora.EsploraClient` uses,
with the answers Esplora gives (Esplora relays bitcoind's ``sendrawtransaction`` errors as HTTP 400):

* ``POST /tx`` (hex body): 200 + txid; 400 ``sendrawtransaction RPC error: {"code":N,"message":...}``
  where the message is the kernel's validation state verbatim; -25 for missing or spent inputs, -26 for
  every other refusal, -22 for bytes that are no transaction, and -27 "Transaction outputs already in
  utxo set" for a transaction already mined (bitcoind checks that before its mempool);
* ``GET /tx/:txid/status``: ``{"confirmed": true, "block_height", "block_hash", "block_time"}``, or 404
  "Transaction not found" (automine: nothing is ever unconfirmed here);
* ``GET /blocks/tip/height`` and ``GET /blocks/tip/hash``: text;
* test only: ``POST /mine/:n`` mines n empty blocks (JSON list of their hashes).

:meth:`EsploraServer.fail_next` makes the next answers a given HTTP status (a 503 from a proxy, say).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.broadcast.regtest import Regtest, txid_of

_STATUS = re.compile(r"^/tx/([0-9a-fA-F]{64})/status$")
_MINE = re.compile(r"^/mine/(\d{1,4})$")


@dataclass
class Seen:
    method: str
    path: str
    body: str


@dataclass
class _Failures:
    status: int = 0
    body: str = ""
    left: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[int, str] | None:
        with self.lock:
            if self.left <= 0:
                return None
            self.left -= 1
            return self.status, self.body


def rpc_error(code: int, message: str) -> str:
    """Esplora's body for a refused broadcast: bitcoind's JSON-RPC error after a fixed prefix."""
    return "sendrawtransaction RPC error: " + json.dumps({"code": code, "message": message}, separators=(",", ":"))


class EsploraServer:
    """``with EsploraServer(chain) as server: server.url``: a real HTTP server on a free loopback port."""

    def __init__(self, chain: Regtest) -> None:
        self.chain = chain
        self.seen: list[Seen] = []
        self._failures = _Failures()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="esplora", daemon=True)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def fail_next(self, status: int, body: str = "Service Unavailable", count: int = 1) -> None:
        with self._failures.lock:
            self._failures.status, self._failures.body, self._failures.left = status, body, count

    def __enter__(self) -> EsploraServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- the API ---------------------------------------------------------------------------------

    def answer(self, method: str, path: str, body: str) -> tuple[int, str, str]:
        """``(status, content type, body)`` for one request."""
        self.seen.append(Seen(method, path, body))
        failure = self._failures.take()
        if failure is not None:
            return failure[0], "text/plain", failure[1]
        if method == "POST" and path == "/tx":
            return self._broadcast(body.strip())
        if method == "GET" and (found := _STATUS.match(path)):
            loc = self.chain.tx_status(found.group(1).lower())
            if loc is None:
                return 404, "text/plain", "Transaction not found"
            doc = {
                "confirmed": True,
                "block_height": loc.height,
                "block_hash": loc.block_hash,
                "block_time": loc.block_time,
            }
            return 200, "application/json", json.dumps(doc)
        if method == "GET" and path == "/blocks/tip/height":
            return 200, "text/plain", str(self.chain.tip_height())
        if method == "GET" and path == "/blocks/tip/hash":
            return 200, "text/plain", self.chain.tip_hash()
        if method == "POST" and (found := _MINE.match(path)):
            mined = self.chain.mine(int(found.group(1)))
            return 200, "application/json", json.dumps([m.block_hash for m in mined])
        return 404, "text/plain", "Not Found"

    def _broadcast(self, raw_hex: str) -> tuple[int, str, str]:
        try:
            raw = bytes.fromhex(raw_hex)
            txid = txid_of(raw)
        except Exception:  # not hex, or not a transaction: bitcoind's answer either way
            return 400, "text/plain", rpc_error(-22, "TX decode failed")
        if self.chain.tx_status(txid) is not None:
            return 400, "text/plain", rpc_error(-27, "Transaction outputs already in utxo set")
        accepted, reason = self.chain.submit(raw)
        if accepted:
            return 200, "text/plain", reason
        code = -25 if reason.startswith("bad-txns-inputs-missingorspent") else -26
        return 400, "text/plain", rpc_error(code, reason)

    def _handler(self) -> Any:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
                status, ctype, text = server.answer(method, self.path.split("?")[0], body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
