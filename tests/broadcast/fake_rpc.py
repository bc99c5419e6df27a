"""A JSON-RPC server on loopback whose answers a test scripts (Bitcoin Core's shapes, or a failing EVM node)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: ``(method, params) -> (http status, JSON document)``; a str document is sent as-is.
Answer = Callable[[str, list[Any]], tuple[int, Any]]


class FakeRpc:
    def __init__(self, answer: Answer, *, auth: tuple[str, str] | None = None) -> None:
        self.calls: list[tuple[str, list[Any], str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                doc = json.loads(raw)
                given = self.headers.get("Authorization")
                fake.calls.append((doc["method"], doc["params"], given))
                if auth is not None and given != "Basic " + base64.b64encode(":".join(auth).encode()).decode():
                    status, body = 401, ""
                else:
                    status, out = answer(doc["method"], doc["params"])
                    body = out if isinstance(out, str) else json.dumps({"id": doc["id"], **out})
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
