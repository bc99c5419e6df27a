"""Tampering with a real vault: every edit an attacker without the data key can make is refused.

wallet.dat v2: the header (and its MAC and signature), then the index, whose every node hashes to
what its parent records. So an edit anywhere fails either at load (header, body) or when the node
is read (lookups, `vault verify`); and a secret moved to another wallet's row fails its AEAD.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cbor2
import pytest

from agent.errors import VaultError, VaultIntegrityError, VaultPermissions, VaultRollback, VaultUntrusted
from agent.vault import format as fmt
from agent.vault.pin import VaultPin, save_pin
from tests.conftest import AutoPrompts
from tests.vault import reference as ref
from tests.vault.helpers import add_keys, load, make_vault, nodes_of, read_all, unlock, with_header, with_nodes


@pytest.fixture
def vault(home: Path, prompts: AutoPrompts):  # type: ignore[no-untyped-def]
    paths, _ = make_vault(home, prompts)
    with unlock(paths, prompts, operators=["alice", "bob"]) as v:
        from agent.chains import get_chain

        btc = get_chain("BTC")
        phrase = "abandon " * 11 + "about"
        v.add_wallet(
            wallet_type="MNEMONIC",
            chain="BTC",
            testnet=False,
            secret=bytearray(phrase.encode()),
            xpub=btc.xpub_from_mnemonic(phrase, testnet=False),
        )
        v.save()
    return paths


@pytest.fixture
def deep(home: Path, prompts: AutoPrompts):  # type: ignore[no-untyped-def]
    """A vault of 9 wallets in nodes of at most 2 items: a 4-level index in a small file."""
    paths, words = make_vault(home, prompts)
    with load(paths).recover(words[:2]) as v:
        v.leaf_max = v.node_max = 2
        ids = add_keys(v, 9)
        v.save()
    return paths, words, ids


def test_every_byte_flip_of_a_real_vault_is_refused(vault) -> None:  # type: ignore[no-untyped-def]
    data = vault.vault.read_bytes()
    read_all(data)
    for offset in range(len(data)):
        mutated = bytearray(data)
        mutated[offset] ^= 0x40
        with pytest.raises(VaultError):
            read_all(bytes(mutated))


def test_every_byte_flip_of_a_deep_index_is_refused(deep) -> None:  # type: ignore[no-untyped-def]
    paths, _, ids = deep
    data = paths.vault.read_bytes()
    vf = read_all(data)
    assert vf.header.index.nodes >= 9
    for offset in range(vf.nodes_start, len(data)):
        mutated = bytearray(data)
        mutated[offset] ^= 0x01
        with pytest.raises(VaultError):
            read_all(bytes(mutated))
    # A lookup through a damaged leaf is refused too, not answered from the damaged bytes.
    paths.vault.write_bytes(data[: vf.nodes_start] + bytes([data[vf.nodes_start] ^ 1]) + data[vf.nodes_start + 1 :])
    public = load(paths)
    with pytest.raises(VaultError):
        for sig in ids:
            public.wallet(sig)


def _edit_leaf(data: bytes, edit, min_rows: int = 1) -> bytes:  # type: ignore[no-untyped-def]
    """``data`` with the first leaf of at least ``min_rows`` rows edited (the node table kept right)."""
    nodes = nodes_of(data)
    for k, raw in enumerate(nodes):
        kind, items = cbor2.loads(raw)
        if kind == fmt.LEAF and len(items) >= min_rows:
            edit(items)
            nodes[k] = fmt.encode_leaf(items)
            return with_nodes(data, nodes)
    raise AssertionError("no leaf")


def test_changed_xpub_is_refused(vault) -> None:  # type: ignore[no-untyped-def]
    other = "xpub6BosfCnifzxcFwrSzQiqu2DBVTshkCXacvNsWGYJVVhhawA7d4R5WSWGFNbi8Aw6ZRc1brxMyWMzG3DSSSSoekkudhUd9yLb6qx39T9nMdj"
    sig = next(iter(load(vault).wallets())).signature_id

    def edit(rows):  # type: ignore[no-untyped-def]
        rows[0][5] = other

    vault.vault.write_bytes(_edit_leaf(vault.vault.read_bytes(), edit))
    public = load(vault)  # the header is intact...
    with pytest.raises(VaultIntegrityError):
        public.wallet(sig)  # ...but the row no longer matches the signed root
    with pytest.raises(VaultIntegrityError):
        public.verify()


def test_swapped_chunks_are_refused(deep) -> None:  # type: ignore[no-untyped-def]
    paths, _, ids = deep
    data = paths.vault.read_bytes()
    nodes = nodes_of(data)
    leaves = [k for k, raw in enumerate(nodes) if cbor2.loads(raw)[0] == fmt.LEAF]
    a, b = leaves[0], leaves[1]
    nodes[a], nodes[b] = nodes[b], nodes[a]
    paths.vault.write_bytes(with_nodes(data, nodes))
    public = load(paths)
    with pytest.raises(VaultIntegrityError):
        public.verify()
    with pytest.raises(VaultIntegrityError):
        for sig in ids:
            public.wallet(sig)


def test_tampered_merkle_path_is_refused(deep) -> None:  # type: ignore[no-untyped-def]
    paths, _, ids = deep
    data = paths.vault.read_bytes()
    vf = fmt.parse(data)
    nodes = nodes_of(data)
    root_no = vf.header.index.root_node
    _kind, entries = cbor2.loads(nodes[root_no])
    # A child hash zeroed in the root: the path from the root no longer authenticates that subtree.
    entries[0][2] = bytes(32)
    nodes[root_no] = fmt.encode_internal(entries)
    paths.vault.write_bytes(with_nodes(data, nodes))
    with pytest.raises(VaultIntegrityError):
        load(paths).wallet(sorted(ids)[0])
    # ...and pointing the header at the new root breaks the header's MAC-covered, signed bytes.
    new_root = ref.node_hash(nodes[root_no])
    paths.vault.write_bytes(with_header(with_nodes(data, nodes), lambda h: h["index"].update(root=new_root)))
    with pytest.raises(VaultIntegrityError):
        load(paths)
    # Child numbers are under the hashes too: two children exchanged in the root.
    _kind, entries = cbor2.loads(nodes_of(data)[root_no])
    entries[0][1], entries[1][1] = entries[1][1], entries[0][1]
    nodes = nodes_of(data)
    nodes[root_no] = fmt.encode_internal(entries)
    paths.vault.write_bytes(with_nodes(data, nodes))
    with pytest.raises(VaultIntegrityError):
        load(paths).verify()


def test_entry_swapped_between_wallets_is_refused(deep) -> None:  # type: ignore[no-untyped-def]
    paths, words, ids = deep
    data = paths.vault.read_bytes()
    pair: list[str] = []

    def swap(rows):  # type: ignore[no-untyped-def]
        rows[0][7], rows[1][7] = rows[1][7], rows[0][7]
        pair[:] = [rows[0][0], rows[1][0]]

    # Without the data key: the leaf no longer hashes to what its parent records.
    paths.vault.write_bytes(_edit_leaf(data, swap, min_rows=2))
    a, b = pair
    with pytest.raises(VaultIntegrityError):
        load(paths).wallet(a)
    # Even with it (the whole file re-built and re-signed, the pin moved): each secret's AEAD binds
    # the vault id and its own public row, so a secret moved to another row does not open.
    paths.vault.write_bytes(data)
    with load(paths).recover(words[:2]) as v:
        dek, header = bytes(v.keys.dek), v.header
        shares = dict(v.body["shares"])
    _, _, rows = ref.read_v2(data)
    i = [r[0] for r in rows].index(a)
    rows[i][7], rows[i + 1][7] = rows[i + 1][7], rows[i][7]
    raw_header = {k: v for k, v in fmt.decode_canonical(fmt.parse(data).header_bytes, "h").items()}
    raw_header = {k: v for k, v in raw_header.items() if k not in ("index", "body_len")}
    raw_header["generation"] += 1
    forged = ref.build_file_v2(dek, raw_header, shares, rows, 2, 2)
    paths.vault.write_bytes(forged)
    vf = fmt.parse(forged)
    save_pin(paths.pin, VaultPin(header.vault_id, header.signing_key, vf.header.generation, vf.header_mac))
    read_all(forged)
    with load(paths).recover(words[:2]) as v:
        assert v.wallet(a).signature_id == a
        for sig in (a, b):
            with pytest.raises(VaultIntegrityError):
                v.read_secret(sig)
        other = next(sig for sig in ids if sig not in pair)
        assert v.read_secret(other)[0] == "PRIVATE_KEY"  # the others still open


def test_swapped_slots_are_refused(vault) -> None:  # type: ignore[no-untyped-def]
    def edit(h):  # type: ignore[no-untyped-def]
        a, b = h["slots"][0], h["slots"][1]
        a["wrapped"], b["wrapped"] = b["wrapped"], a["wrapped"]

    vault.vault.write_bytes(with_header(vault.vault.read_bytes(), edit))
    with pytest.raises(VaultIntegrityError):
        load(vault)


def test_quorum_downgrade_is_refused(vault) -> None:  # type: ignore[no-untyped-def]
    def edit(h):  # type: ignore[no-untyped-def]
        h["quorum"] = 1

    vault.vault.write_bytes(with_header(vault.vault.read_bytes(), edit))
    with pytest.raises(VaultIntegrityError):
        load(vault)


def test_header_from_another_vault_is_refused(vault, tmp_path: Path, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    other_home = tmp_path / "other"
    other_home.mkdir(mode=0o700)
    other, _ = make_vault(other_home, AutoPrompts(other_home))
    ours = vault.vault.read_bytes()
    theirs = other.vault.read_bytes()
    # A whole, self-consistent vault from elsewhere: its signature is fine, the pin is not.
    shutil.copy(other.vault, vault.vault)
    with pytest.raises(VaultUntrusted, match="not the vault this agent trusts"):
        load(vault)
    # The other vault's header (with its MAC and signature) spliced onto our body and index breaks
    # the signature; our header on theirs likewise.
    our_head, their_head = len(fmt.parse(ours).prefix) + 96, len(fmt.parse(theirs).prefix) + 96
    for spliced in (theirs[:their_head] + ours[our_head:], ours[:our_head] + theirs[their_head:]):
        vault.vault.write_bytes(spliced)
        with pytest.raises(VaultError):
            load(vault).verify()


def test_rolled_back_file_is_refused(vault, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    old = vault.vault.read_bytes()
    with unlock(vault, prompts, operators=["bob", "carol"]) as v:
        v.remove_wallet(next(iter(v.wallets())).signature_id)
        v.save()
    vault.vault.write_bytes(old)
    with pytest.raises(VaultRollback, match="older than generation"):
        load(vault)


def test_forked_file_at_same_generation_is_refused(vault, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    pin_before, file_before = vault.pin.read_bytes(), vault.vault.read_bytes()
    with unlock(vault, prompts, operators=["bob", "carol"]) as v:
        v.save()
    fork = vault.vault.read_bytes()
    # Another copy of the same starting file is changed elsewhere and reaches this agent first...
    vault.pin.write_bytes(pin_before)
    vault.vault.write_bytes(file_before)
    with unlock(vault, prompts, operators=["alice", "carol"]) as v:
        v.save()
    # ...then the first branch, at the same generation, turns up.
    assert fmt.parse(fork).header_bytes != fmt.parse(vault.vault.read_bytes()).header_bytes
    vault.vault.write_bytes(fork)
    with pytest.raises(VaultRollback, match="forked"):
        load(vault)


def test_world_readable_vault_is_refused(vault) -> None:  # type: ignore[no-untyped-def]
    vault.vault.chmod(0o644)
    with pytest.raises(VaultPermissions, match="accessible by other users"):
        load(vault)


def test_files_are_created_private(vault) -> None:  # type: ignore[no-untyped-def]
    assert vault.vault.stat().st_mode & 0o777 == 0o600
    assert vault.pin.stat().st_mode & 0o777 == 0o600
    assert not list(vault.home.glob(".wallet.dat.*.tmp"))
