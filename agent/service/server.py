"""``kms-agent serve``: the API on a Unix socket (always) and, if asked, on a loopback TCP port.

* One agent per data directory: ``state/locks/agent.lock`` is held while it serves.
* The socket (default ``$KMS_AGENT_HOME/agent.sock``) is created 0600 (under a 0177 umask, so it is
  never wider, not even for an instant) in a 0700 directory. A stale socket is removed; a socket on
  which another agent answers makes this one refuse to start. Its file permissions are the access
  control: no token is asked there.
* ``--tcp HOST:PORT`` takes loopback addresses only, and every route but ``/health`` needs
  ``Authorization: Bearer <token>``, the token in ``state/api-token`` (0600, 32 random bytes in
  urlsafe base64, made at first start). Its path is printed on stderr. TLS with ``--tls-cert/--tls-key``.
* Each listener is its own uvicorn server in one event loop, over the same application; the listener
  marks each connection's scope (``deps.VIA``) so the token check knows where it came from.
* SIGTERM and SIGINT stop every listener gracefully (requests in flight finish), and serve returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import secrets
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.errors import KmsAgentError, StateError, UsageError
from agent.files import PRIVATE_FILE, ensure_private_dir
from agent.locks import locks_dir
from agent.service.deps import VIA

SOCKET_NAME = "agent.sock"
TOKEN_NAME = "api-token"
BACKLOG = 1024


@dataclass(frozen=True)
class Options:
    home: Path
    socket: Path
    tcp: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_inflight: int = 2
    max_queue: int = 256
    #: Seconds between passes of the confirmation watcher (docs/broadcast.md §7).
    watch_interval: float = 15.0


def parse_tcp(text: str) -> tuple[str, int]:
    """``127.0.0.1:8080``, ``[::1]:8080`` or ``localhost:8080``; anything not loopback is refused.

    :raises UsageError: not HOST:PORT, a host that is not a loopback IP address, a bad port.
    """
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise UsageError(f"--tcp wants HOST:PORT with a loopback HOST, not {text!r}")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--tcp: {host!r} is not an IP address (give 127.0.0.1 or ::1)") from None
    if not address.is_loopback:
        raise UsageError(
            f"--tcp: refusing {host}: the agent listens on loopback only",
            hint="reach it from elsewhere through an SSH tunnel or a reverse proxy you control",
        )
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise UsageError(f"--tcp: bad port {port_text!r} (0 to 65535; 0 picks a free one)")
    return str(address), port


def ensure_token(state: Path) -> tuple[str, Path]:
    """The API token, made (0600) at first start; the file is refused if others can read it."""
    ensure_private_dir(state)
    path = state / TOKEN_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StateError(f"cannot create the API token {path}: {exc.strerror or exc}") from None
    else:
        try:
            os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StateError(
                f"the API token {path} is not a private file (mode {stat.S_IMODE(info.st_mode):04o}); refusing it",
                hint=f"chmod 600 {path}, or delete it to have a new token made",
            )
        token = path.read_text().strip()
    except OSError as exc:
        raise StateError(f"cannot read the API token {path}: {exc.strerror or exc}") from None
    if len(token) < 32:
        raise StateError(f"the API token {path} is too short", hint="delete it to have a new token made")
    return token, path


@contextlib.contextmanager
def agent_lock(state: Path) -> Iterator[None]:
    """One agent per data directory, for as long as it serves."""
    path = locks_dir(state) / "agent.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"another kms-agent already serves the data directory {state.parent}",
                hint="stop it first (it answers on its socket)",
            ) from None
        yield
    finally:
        os.close(fd)


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, 0600; a stale one is replaced, a live one refused."""
    if path.parent != path.parent.parent:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        info: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise StateError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # stale: left by an agent that was killed
        else:
            raise StateError(f"another agent answers on {path}", hint="stop it first, or give --socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StateError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, PRIVATE_FILE)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StateError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def _say(message: str) -> None:
    print(f"kms-agent: {message}", file=sys.stderr, flush=True)


def serve(options: Options) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code (0)."""
    from agent.service.app import create_app, default_routers
    from agent.service.limits import Admission
    from agent.service.watch import start_alerting
    from agent.withdrawals.holding import ShareHolder

    if (options.tls_cert is None) != (options.tls_key is None):
        raise UsageError("give both --tls-cert and --tls-key, or neither")
    if options.tls_cert is not None and options.tcp is None:
        raise UsageError("TLS is for the TCP listener: give --tcp too")
    home = options.home
    ensure_private_dir(home)
    state = ensure_private_dir(home / "state")
    token: str | None = None
    if options.tcp is not None:
        token, token_path = ensure_token(state)
    with agent_lock(state):
        unix = bind_unix(options.socket)
        socket_id = os.stat(options.socket).st_ino
        listeners: list[tuple[str, socket.socket]] = [("unix", unix)]
        try:
            if options.tcp is not None:
                listeners.append(("tcp", bind_tcp(*options.tcp)))
            holder = ShareHolder()
            app = create_app(
                home,
                require_token=token,
                extra_routers=default_routers(holder),
                admission=Admission(inflight=options.max_inflight, queue=options.max_queue),
            )
            servers: list[tuple[uvicorn.Server, socket.socket]] = []
            for via, sock in listeners:
                tls = via == "tcp" and options.tls_cert is not None
                config = uvicorn.Config(
                    _Tagged(app, via),
                    lifespan="off",
                    log_config=None,
                    access_log=False,
                    server_header=False,
                    http="h11",
                    ws="none",
                    timeout_graceful_shutdown=30,
                    ssl_certfile=str(options.tls_cert) if tls else None,
                    ssl_keyfile=str(options.tls_key) if tls else None,
                )
                servers.append((_Server(config), sock))
            stop_alerting = start_alerting(home)
            stop_sweeping = _start_sweeper(home, holder)
            stop_watching = _start_chain_watch(home, options.watch_interval)
            # A signal that arrives between the announcement below and the event loop's own handlers
            # must still mean a clean stop, never the default (killed by SIGTERM).
            early: list[int] = []
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, _frame: early.append(signum))
            _say(f"serving the API on unix:{options.socket} (0600; no token on the socket)")
            if options.tcp is not None:
                host, port = listeners[1][1].getsockname()[:2]
                scheme = "https" if options.tls_cert is not None else "http"
                shown = f"[{host}]" if ":" in host else host
                _say(f"serving the API on {scheme}://{shown}:{port} (bearer token required)")
                _say(f"API token: {token_path}")
            try:
                asyncio.run(_run(servers, early))
            finally:
                stop_watching()
                stop_sweeping()
                holder.wipe_all()  # shares never outlive the agent
                stop_alerting()
        finally:
            for _, sock in listeners:
                sock.close()
            with contextlib.suppress(OSError):
                if os.stat(options.socket).st_ino == socket_id:
                    options.socket.unlink()
    _say("stopped")
    return 0


def _start_sweeper(home: Path, holder: Any, interval: float = 30.0) -> Callable[[], None]:
    """Every ``interval`` s, wipe held shares of requests that were signed, vetoed, denied or expired."""
    from agent.withdrawals.service import Withdrawals

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(KmsAgentError):
                Withdrawals(home).forget_dead(holder)

    thread = threading.Thread(target=loop, name="kms-agent-share-sweeper", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(timeout=5)

    return stopper


def _start_chain_watch(home: Path, interval: float) -> Callable[[], None]:
    """Every ``interval`` s, while nodes are configured, follow broadcast transactions (``kms-agent watch``).

    So ``GET /v1/withdrawals/{id}`` shows each transaction's confirmations without a second process.
    A ``watch`` loop may still run beside it: each change is recorded once (docs/broadcast.md §7).
    """
    from agent.broadcast import config
    from agent.broadcast.nodes import NodeClient
    from agent.broadcast.watcher import watch_once

    stop = threading.Event()
    clients: dict[tuple[str, bool], NodeClient] = {}

    def loop() -> None:
        while not stop.wait(interval):
            try:
                if config.load(home).nodes:
                    watch_once(home, clients=clients, progress=lambda text: _say(f"watch: {text}"))
            except KmsAgentError as exc:
                _say(f"watch: {exc.message}")
            except Exception as exc:  # a node's odd answer must not end the watcher for the agent's life
                _say(f"watch: pass failed ({type(exc).__name__}); trying again in {interval:g} s")
        for client in clients.values():
            client.close()

    thread = threading.Thread(target=loop, name="kms-agent-chain-watch", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(timeout=interval + 30)

    return stopper


class _Tagged:
    """The application as one listener serves it: each connection's scope says which listener."""

    def __init__(self, app: ASGIApp, via: str) -> None:
        self.app = app
        self.via = via

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app({**scope, VIA: self.via}, receive, send)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # _run handles SIGTERM/SIGINT for every listener at once, and serve() returns 0


async def _run(servers: list[tuple[uvicorn.Server, socket.socket]], early: list[int]) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server, _ in servers:
            if server.should_exit:
                server.force_exit = True  # a second signal: stop waiting for requests in flight
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if early:
        stop()  # asked to stop before the loop ran
    await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in servers))
