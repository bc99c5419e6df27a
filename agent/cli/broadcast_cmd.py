"""``kms-agent node``, ``callback``, ``broadcast`` and ``watch``: from a signature to the chain (docs/broadcast.md).

Exit codes: 0 when the node has the transaction (or, for ``watch --once``, when the pass ran);
2 for bad input (unknown request, no node configured, invalid nodes.json); 5 for a request that is
not signed; 8 when no node accepted the transaction (rejected, or unreachable after every retry);
9 when the audit log cannot be written. Every attempt is in the audit log whatever the exit code.
"""

from __future__ import annotations

import json
import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.context import Paths, emit, err
from agent.errors import UsageError

node_app = typer.Typer(help="the node each chain's signed transactions are sent to", no_args_is_help=True)
callback_app = typer.Typer(help="the application's callback for on-chain changes (HMAC-signed)", no_args_is_help=True)


class Kind(StrEnum):
    EVM_RPC = "evm-rpc"
    ESPLORA = "esplora"
    BITCOIN_RPC = "bitcoin-rpc"


def _home() -> Path:
    return Paths.resolve().home


def _need_vault() -> Path:
    """The data directory, with a vault in it (exit 7 otherwise): nothing to broadcast without one."""
    from agent.cli.session import load_public

    paths = Paths.resolve()
    load_public(paths, quiet=True)
    return paths.home


@node_app.command("set")
def node_set(
    chain: Annotated[str, typer.Argument(help="the chain (ETH, BTC, ...)")],
    kind: Annotated[Kind, typer.Option("--kind", help="the node's API")],
    url: Annotated[str, typer.Option("--url", help="the node's URL (user:password@ for Bitcoin Core)")],
    testnet: Annotated[bool, typer.Option("--testnet", help="the chain's testnet")] = False,
    confirmations: Annotated[int, typer.Option(help="depth at which a transaction counts as confirmed")] = 1,
    stuck_after: Annotated[int, typer.Option(help="seconds without confirmation before a tx-stuck alert")] = 1800,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """set the node for a chain and network (replaces the one configured before)"""
    from agent.broadcast import config
    from agent.broadcast.nodes import NodeKind
    from agent.chains import get_chain

    try:
        name = get_chain(chain).name
    except Exception:
        raise UsageError(f"unknown chain {chain!r} (see `kms-agent wallet chains`)") from None
    home = _home()
    book = config.load(home)
    node = config.NodeConfig(name, testnet, NodeKind(kind.value), url, confirmations, stuck_after)
    config.save(home, book.with_node(node))
    emit(node.public(), as_json, f"{name} {'testnet' if testnet else 'mainnet'}: {kind.value} {node.public()['url']}")


@node_app.command("list")
def node_list(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """list the configured nodes (URLs without credentials) and the callback"""
    from agent.broadcast import config
    from agent.broadcast.rows import public_url

    book = config.load(_home())
    callback = (
        {"url": public_url(book.callback.url), "secret_file": str(book.callback.secret_file)} if book.callback else None
    )
    doc = {"nodes": [n.public() for n in book.nodes], "callback": callback}
    lines = [
        f"{n.chain:6} {'testnet' if n.testnet else 'mainnet'}  {n.kind.value:11} {n.public()['url']}  "
        f"confirmations={n.confirmations} stuck_after={n.stuck_after}s"
        for n in book.nodes
    ] or ["no nodes configured (kms-agent node set CHAIN --kind KIND --url URL)"]
    if callback:
        lines.append(f"callback: {callback['url']}")
    emit(doc, as_json, "\n".join(lines))


@node_app.command("remove")
def node_remove(
    chain: Annotated[str, typer.Argument(help="the chain")],
    testnet: Annotated[bool, typer.Option("--testnet", help="the chain's testnet")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """forget the node of a chain and network"""
    from agent.broadcast import config

    home = _home()
    config.save(home, config.load(home).without_node(chain, testnet))
    emit({"removed": {"chain": chain.upper(), "testnet": testnet}}, as_json, f"removed the {chain.upper()} node")


@callback_app.command("set")
def callback_set(
    url: Annotated[str, typer.Argument(help="where each on-chain change is POSTed")],
    secret_file: Annotated[Path, typer.Option("--secret-file", help="a 0600 file holding the HMAC secret")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """POST each recorded on-chain change to URL, signed with HMAC-SHA256 (secret read from a 0600 file)"""
    from agent.broadcast import config
    from agent.broadcast.rows import public_url

    home = _home()
    callback = config.Callback(url, secret_file.resolve())
    callback.secret()  # readable, private and long enough, or one clear error now
    config.save(home, config.load(home).with_callback(callback))
    emit({"url": public_url(url), "secret_file": str(callback.secret_file)}, as_json, f"callback: {public_url(url)}")


@callback_app.command("remove")
def callback_remove(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """stop POSTing on-chain changes"""
    from agent.broadcast import config

    home = _home()
    book = config.load(home)
    if book.callback is not None:
        config.save(home, book.with_callback(None))
    emit({"removed": book.callback is not None}, as_json, "callback removed" if book.callback else "no callback")


def register(app: typer.Typer) -> None:
    @app.command("broadcast")
    def broadcast(
        request_id: Annotated[str | None, typer.Argument(help="the signed request to send")] = None,
        send_all: Annotated[bool, typer.Option("--all", help="every signed request no node has accepted yet")] = False,
        chain: Annotated[str | None, typer.Option(help="with --all: only this chain")] = None,
        attempts: Annotated[int, typer.Option(help="attempts while the node is unreachable")] = 5,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """send signed transactions to their chain's node, recording every attempt in the audit log"""
        from agent.broadcast import config
        from agent.broadcast.broadcaster import BroadcastFailed, RetryPolicy, broadcast_request, broadcast_signed

        home = _need_vault()
        config.load(home)  # an invalid nodes.json is one clear error before anything else
        if (request_id is None) == (not send_all):
            raise UsageError("give a REQUEST_ID or --all (not both)")
        if not 1 <= attempts <= 20:
            raise UsageError("--attempts must be from 1 to 20")
        retry = RetryPolicy(attempts=attempts)
        if request_id is not None:
            result = broadcast_request(home, request_id, retry=retry)
            text = (
                f"{result.txid}: {result.skipped}"
                if result.skipped
                else f"{result.txid}: {result.outcome.value if result.outcome else '-'}"
                + (f" ({result.reason})" if result.reason else "")
                + f" after {result.attempts} attempt(s)"
            )
            emit(result.to_json(), as_json, text)
            if not result.ok and not result.skipped:
                raise BroadcastFailed(
                    f"request {result.request_id} was not accepted: {result.reason or 'no answer'} "
                    "(every attempt is in the audit log)",
                    request_id=result.request_id,
                )
            return
        results = broadcast_signed(home, chain=chain, retry=retry)
        emit(
            {"results": [r.to_json() for r in results]},
            as_json,
            "\n".join(
                f"{r.request_id} {r.txid}: {r.skipped or (r.outcome.value if r.outcome else '-')}" for r in results
            )
            or "nothing to broadcast",
        )
        failed = [r for r in results if not r.ok and not r.skipped]
        if failed:
            raise BroadcastFailed(f"{len(failed)} of {len(results)} request(s) were not accepted (see the audit log)")

    @app.command("watch")
    def watch(
        once: Annotated[bool, typer.Option("--once", help="one pass, then exit")] = False,
        interval: Annotated[float, typer.Option(help="seconds between passes")] = 15.0,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON (one document per pass)")] = False,
    ) -> None:
        """follow broadcast transactions to a final state and record confirmations (until SIGTERM or Ctrl-C)"""
        from agent.broadcast import config
        from agent.broadcast.nodes import NodeClient
        from agent.broadcast.watcher import watch_once

        home = _need_vault()
        if not 0.05 <= interval <= 86400:
            raise UsageError("--interval must be from 0.05 to 86400 seconds")
        if not config.load(home).nodes:
            raise UsageError("no node configured: nothing to watch with", hint="kms-agent node set CHAIN ...")
        stop = threading.Event()
        if not once:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        clients: dict[tuple[str, bool], NodeClient] = {}
        try:
            while True:
                events = watch_once(home, clients=clients, progress=err)
                doc: dict[str, Any] = {"events": [e.to_json() for e in events]}
                if as_json:
                    print(json.dumps(doc, indent=2) if once else json.dumps(doc), flush=True)
                else:
                    for e in events:
                        depth = f" depth {e.depth}" if e.depth is not None else ""
                        print(f"{e.request_id} {e.txid}: {e.event}{depth}" + (f" ({e.reason})" if e.reason else ""))
                if once:
                    return
                err(f"watch: {sum(e.recorded for e in events)} change(s) recorded; next pass in {interval:g} s")
                if stop.wait(interval):
                    return
        finally:
            for c in clients.values():
                c.close()
