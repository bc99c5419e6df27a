"""Building real vaults on simulated tokens for the vault tests (no shortcut past the token layer)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.cli.context import Paths
from agent.files import atomic_write
from agent.policy import initial_policy
from agent.tokens.discovery import find_token, open_token
from agent.vault import format as fmt
from agent.vault.index import IndexReader
from agent.vault.pin import VaultPin, save_pin
from agent.vault.sealed import check_file_signature
from agent.vault.vault import PublicVault, UnlockedVault, create_vault
from tests.conftest import AutoPrompts
from tests.vault import reference as ref


def make_vault(
    home: Path, prompts: AutoPrompts, operators: Sequence[str] = ("alice", "bob", "carol"), quorum: int = 2
) -> tuple[Paths, list[str]]:
    paths = Paths(home)
    tokens = [(name, open_token(f"sim:{name}", home)) for name in operators]
    pending = create_vault(paths.vault, paths.pin, tokens, quorum, prompts, policy=initial_policy(quorum))
    words = pending.recovery_shares
    pending.check_recovery(words[:2])
    pending.commit().close()
    return paths, words


def load(paths: Paths) -> PublicVault:
    return PublicVault.load(paths.vault, paths.pin)


def unlock(paths: Paths, prompts: AutoPrompts, operators: Sequence[str] | None = None) -> UnlockedVault:
    home = paths.home
    return load(paths).unlock(lambda slot: find_token(slot, home), prompts, operators=operators)


def snapshot(paths: Paths) -> dict[str, bytes]:
    """Every file under the data directory except simulator state: what must not change on failure."""
    return {
        str(p.relative_to(paths.home)): p.read_bytes()
        for p in sorted(paths.home.rglob("*"))
        if p.is_file() and "sim" not in p.relative_to(paths.home).parts
    }


# --- editing files as an attacker (or an old agent) would ------------------------------------------
def nodes_of(data: bytes) -> list[bytes]:
    """The index nodes of a v2 file, in number order."""
    vf = fmt.parse(data)
    return [vf.node_bytes(k) for k in range(vf.header.index.nodes)]


def with_nodes(data: bytes, nodes: list[bytes]) -> bytes:
    """``data`` with its node region replaced by ``nodes`` and a node table that matches them."""
    vf = fmt.parse(data)
    offsets, at = [], 0
    for node in nodes:
        offsets.append(at.to_bytes(8, "big"))
        at += len(node)
    return data[: vf.nodes_start] + b"".join(nodes) + b"".join(offsets)


def with_header(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """``data`` with its header map edited, keeping the old MAC and signature (no data key needed)."""
    vf = fmt.parse(data)
    header = fmt.decode_canonical(vf.header_bytes, "header")
    edit(header)
    return fmt.prefix_v2(fmt.encode_canonical(header)) + data[len(vf.prefix) :]


def read_all(data: bytes) -> fmt.VaultFile:
    """Every check `kms-agent vault verify` makes, from bytes (no pin: see load for that)."""
    vf = fmt.parse(data)
    check_file_signature(vf)
    IndexReader(vf).verify()
    return vf


def write_v1(paths: Paths, words: Sequence[str]) -> bytes:
    """Rewrite the vault as a legacy v1 file, as an agent of the v1 era would have (the next generation).

    Built with the spec's reference code from the vault's own data key; the pin follows, as it would
    have on that agent. Returns the v1 file's bytes.
    """
    with load(paths).recover(words[:2]) as vault:
        dek, header = bytes(vault.keys.dek), vault.header
        rows = list(vault.wallets())
        secrets = {}
        for row in rows:
            kind, secret = vault.read_secret(row.signature_id)
            secrets[row.signature_id] = (kind, bytes(secret))
            secret[:] = bytes(len(secret))
        shares = dict(vault.body["shares"])
    header = replace(header, generation=header.generation + 1, body_nonce=os.urandom(12))
    vid = header.vault_id
    entries = {
        sig: ref.seal_entry(dek, vid, sig, kind, secret, os.urandom(12)) for sig, (kind, secret) in secrets.items()
    }
    data = ref.build_file(dek, header.to_v1_cbor_map(rows), {"shares": shares, "entries": entries})
    atomic_write(paths.vault, data)
    save_pin(paths.pin, VaultPin(vid, header.signing_key, header.generation, fmt.split_v1(data)[1]))
    return data


def add_keys(vault: UnlockedVault, n: int, start: int = 0) -> list[str]:
    """``n`` ETH private-key wallets (secrets derived from their number), unsaved; their ids."""
    return [
        vault.add_wallet(
            wallet_type="PRIVATE_KEY", chain="ETH", testnet=True, secret=secret(i), address=f"0x{i:040x}"
        ).signature_id
        for i in range(start, start + n)
    ]


def secret(i: int) -> bytearray:
    return bytearray(b"%064x" % i)
