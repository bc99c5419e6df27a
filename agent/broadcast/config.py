"""Which node each chain's signed transactions go to, and the application's callback (docs/broadcast.md §2).

``$KMS_AGENT_HOME/nodes.json`` (0600, replaced atomically) holds one entry per chain and network, and
at most one callback. Node URLs may carry credentials (``http://user:pass@host`` for Bitcoin Core),
so the file is private and the audit log only ever sees :func:`agent.broadcast.rows.public_url`.
The callback's HMAC secret is never in this file: it names a 0600 file that holds it, so the
secret is never in argv, the environment or a log.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.broadcast.nodes import NodeKind
from agent.errors import UsageError, VaultPermissions
from agent.files import atomic_write, check_private

FILE_NAME = "nodes.json"
#: The file's format version; any other is refused (never guessed at).
VERSION = 1
DEFAULT_CONFIRMATIONS = 1
#: Seconds after an accepted broadcast without a confirmation before one ``tx-stuck`` alert.
DEFAULT_STUCK_AFTER = 1800


class NodeConfigError(UsageError):
    """nodes.json or a ``node set`` argument is invalid (exit 2); nothing was changed."""


@dataclass(frozen=True)
class NodeConfig:
    chain: str
    testnet: bool
    kind: NodeKind
    url: str = field(repr=False)  # may hold user:password (Bitcoin Core)
    #: Depth at which the transaction counts as confirmed (below it: ``pending`` with its depth).
    confirmations: int = DEFAULT_CONFIRMATIONS
    stuck_after: int = DEFAULT_STUCK_AFTER

    def __post_init__(self) -> None:
        _check_url(self.url, "url")
        if not self.chain or not self.chain.replace("_", "").isalnum():
            raise NodeConfigError(f"chain {self.chain!r} is not a chain name (ETH, BTC, ...)")
        if type(self.confirmations) is not int or not 1 <= self.confirmations <= 1000:
            raise NodeConfigError(f"confirmations must be an integer from 1 to 1000, not {self.confirmations!r}")
        if type(self.stuck_after) is not int or not 1 <= self.stuck_after <= 30 * 86400:
            raise NodeConfigError(f"stuck_after must be seconds from 1 to 2592000, not {self.stuck_after!r}")

    @property
    def key(self) -> tuple[str, bool]:
        return (self.chain, self.testnet)

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "testnet": self.testnet,
            "kind": self.kind.value,
            "url": self.url,
            "confirmations": self.confirmations,
            "stuck_after": self.stuck_after,
        }

    def public(self) -> dict[str, Any]:
        """What ``node list`` prints: the URL without credentials."""
        from agent.broadcast.rows import public_url

        return {**self.to_json(), "url": public_url(self.url)}


@dataclass(frozen=True)
class Callback:
    """Where the watcher POSTs each recorded change, signed with HMAC-SHA256 over a secret in a 0600 file."""

    url: str = field(repr=False)
    secret_file: Path

    def __post_init__(self) -> None:
        _check_url(self.url, "callback url")

    def secret(self) -> bytes:
        """The HMAC key, read when needed; a file others can read is refused, as ssh refuses a loose key."""
        try:
            check_private(self.secret_file)
            data = self.secret_file.read_bytes().strip()
        except VaultPermissions as exc:
            raise NodeConfigError(exc.message, hint=exc.hint) from None
        except OSError as exc:
            raise NodeConfigError(
                f"cannot read the callback secret {self.secret_file}: {exc.strerror or exc}"
            ) from None
        if len(data) < 16:
            raise NodeConfigError(f"the callback secret in {self.secret_file} is shorter than 16 bytes")
        return data

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "secret_file": str(self.secret_file)}


def _check_url(url: str, what: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise NodeConfigError(f"{what} {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodeConfigError(f"{what} must be an http:// or https:// URL with a host")


@dataclass(frozen=True)
class NodeBook:
    """Every configured node, by (chain, testnet), and the optional callback."""

    nodes: tuple[NodeConfig, ...] = ()
    callback: Callback | None = None

    def node(self, chain: str, testnet: bool) -> NodeConfig | None:
        return next((n for n in self.nodes if n.key == (chain.upper(), testnet)), None)

    def with_node(self, node: NodeConfig) -> NodeBook:
        rest = tuple(n for n in self.nodes if n.key != node.key)
        return NodeBook(tuple(sorted((*rest, node), key=lambda n: n.key)), self.callback)

    def without_node(self, chain: str, testnet: bool) -> NodeBook:
        if self.node(chain, testnet) is None:
            net = "testnet" if testnet else "mainnet"
            raise NodeConfigError(f"no node configured for {chain.upper()} {net} (see `kms-agent node list`)")
        return NodeBook(tuple(n for n in self.nodes if n.key != (chain.upper(), testnet)), self.callback)

    def with_callback(self, callback: Callback | None) -> NodeBook:
        return NodeBook(self.nodes, callback)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "nodes": [n.to_json() for n in self.nodes],
            "callback": self.callback.to_json() if self.callback else None,
        }


def path_for(home: Path) -> Path:
    return home / FILE_NAME


def load(home: Path) -> NodeBook:
    """The node book; an empty one when the file does not exist.

    :raises NodeConfigError: the file is unreadable, not private, or not what ``node set`` writes.
    """
    path = path_for(home)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return NodeBook()
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NodeConfigError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); refusing to use it",
            hint=f"chmod 600 {path}",
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NodeConfigError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    return parse(doc, where=str(path))


def parse(doc: Any, *, where: str = FILE_NAME) -> NodeBook:
    def bad(what: str) -> NodeConfigError:
        return NodeConfigError(f"{where}: {what}", hint="rewrite it with `kms-agent node set`")

    if not isinstance(doc, dict) or doc.get("version") != VERSION or set(doc) - {"version", "nodes", "callback"}:
        raise bad(f"expected {{'version': {VERSION}, 'nodes': [...], 'callback': ...}}")
    nodes = doc.get("nodes", [])
    if not isinstance(nodes, list):
        raise bad("'nodes' must be a list")
    out: list[NodeConfig] = []
    for i, raw in enumerate(nodes):
        if not isinstance(raw, dict) or set(raw) - {"chain", "testnet", "kind", "url", "confirmations", "stuck_after"}:
            raise bad(f"nodes[{i}] must be an object with chain, testnet, kind, url[, confirmations, stuck_after]")
        try:
            kind = NodeKind(str(raw.get("kind")))
        except ValueError:
            raise bad(f"nodes[{i}].kind must be one of {', '.join(k.value for k in NodeKind)}") from None
        if not isinstance(raw.get("chain"), str) or not isinstance(raw.get("testnet"), bool):
            raise bad(f"nodes[{i}] needs a chain (text) and testnet (true/false)")
        if not isinstance(raw.get("url"), str):
            raise bad(f"nodes[{i}].url must be text")
        try:
            out.append(
                NodeConfig(
                    chain=raw["chain"].upper(),
                    testnet=raw["testnet"],
                    kind=kind,
                    url=raw["url"],
                    confirmations=raw.get("confirmations", DEFAULT_CONFIRMATIONS),
                    stuck_after=raw.get("stuck_after", DEFAULT_STUCK_AFTER),
                )
            )
        except NodeConfigError as exc:
            raise bad(f"nodes[{i}]: {exc.message}") from None
    if len({n.key for n in out}) != len(out):
        raise bad("two nodes for the same chain and network")
    callback = None
    raw_cb = doc.get("callback")
    if raw_cb is not None:
        if (
            not isinstance(raw_cb, dict)
            or set(raw_cb) != {"url", "secret_file"}
            or not all(isinstance(v, str) for v in raw_cb.values())
        ):
            raise bad("'callback' must be {'url': ..., 'secret_file': ...}")
        try:
            callback = Callback(raw_cb["url"], Path(raw_cb["secret_file"]))
        except NodeConfigError as exc:
            raise bad(exc.message) from None
    return NodeBook(tuple(out), callback)


def save(home: Path, book: NodeBook) -> None:
    """Replace nodes.json atomically, 0600."""
    if not home.is_dir():
        raise NodeConfigError(f"the data directory {home} does not exist (run `kms-agent init`)")
    atomic_write(path_for(home), (json.dumps(book.to_json(), indent=2) + "\n").encode())
    os.chmod(path_for(home), 0o600)
