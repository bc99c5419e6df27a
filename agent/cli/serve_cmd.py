"""``kms-agent serve``: the local API (docs/api.md). FastAPI and uvicorn load only when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.cli.context import Paths, err


def register(root: typer.Typer) -> None:
    @root.command("serve")
    def serve(
        socket: Annotated[
            Path | None, typer.Option("--socket", help="the Unix socket (default: $KMS_AGENT_HOME/agent.sock)")
        ] = None,
        tcp: Annotated[
            str | None,
            typer.Option("--tcp", metavar="HOST:PORT", help="also listen on loopback TCP (bearer token required)"),
        ] = None,
        tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate (PEM) for --tcp")] = None,
        tls_key: Annotated[Path | None, typer.Option("--tls-key", help="TLS private key (PEM) for --tcp")] = None,
        max_inflight: Annotated[int, typer.Option(min=1, max=1024, help="state-changing requests decided at once")] = 2,
        max_queue: Annotated[
            int, typer.Option(min=0, max=100_000, help="state-changing requests waiting; beyond, HTTP 429")
        ] = 256,
        watch_interval: Annotated[
            float,
            typer.Option(
                min=0.05, max=86400, help="seconds between confirmation-watcher passes (when nodes are configured)"
            ),
        ] = 15.0,
    ) -> None:
        """serve the local API for applications until SIGTERM or Ctrl-C (Unix socket; --tcp for loopback)"""
        from agent.service.server import SOCKET_NAME, Options, parse_tcp
        from agent.service.server import serve as run

        paths = Paths.resolve()
        options = Options(
            home=paths.home,
            socket=(socket or paths.home / SOCKET_NAME).expanduser().absolute(),
            tcp=parse_tcp(tcp) if tcp is not None else None,
            tls_cert=tls_cert,
            tls_key=tls_key,
            max_inflight=max_inflight,
            max_queue=max_queue,
            watch_interval=watch_interval,
        )
        code = run(options)
        if code:
            err(f"kms-agent: serve stopped with code {code}")
            raise typer.Exit(code)
