"""The v2 wallet index on real vaults: lookups, streaming, random edits, and O(log n) rewrites."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.errors import UsageError
from agent.vault import format as fmt
from tests.conftest import AutoPrompts
from tests.vault import reference as ref
from tests.vault.helpers import add_keys, load, make_vault, nodes_of, read_all, secret


def _depth(data: bytes) -> int:
    vf = fmt.parse(data)
    nodes = nodes_of(data)
    number, depth = vf.header.index.root_node, 1
    while True:
        kind, items = fmt.decode_node(nodes[number], number)
        if kind == fmt.LEAF:
            return depth
        number, depth = items[0][1], depth + 1


def test_random_adds_and_removes_keep_a_valid_index(home: Path, prompts: AutoPrompts) -> None:
    """Small nodes (2 or 3 items) so that splits, emptied leaves, root changes and renumbering all happen."""
    paths, words = make_vault(home, prompts)
    rng = random.Random(7)
    model: dict[str, int] = {}
    with load(paths).recover(words[:2]) as v:
        v.leaf_max, v.node_max = 3, 2
        for step in range(300):
            if model and rng.random() < 0.4:
                sig = rng.choice(sorted(model))
                v.remove_wallet(sig)
                del model[sig]
            else:
                (sig,) = add_keys(v, 1, start=step)
                model[sig] = step
            if rng.random() < 0.15:
                v.save()
                data = paths.vault.read_bytes()
                read_all(data)
                _, _, rows = ref.read_v2(data)
                assert [r[0] for r in rows] == sorted(model)
        v.save()
        for sig, i in rng.sample(sorted(model.items()), 10):
            assert v.read_secret(sig) == ("PRIVATE_KEY", secret(i))
        while model:  # down to an empty index again
            sig = rng.choice(sorted(model))
            v.remove_wallet(sig)
            del model[sig]
        v.save()
    public = load(paths)
    public.verify()
    assert public.header.wallet_count == 0 and list(public.wallets()) == []
    assert public.header.index.nodes == 1


def test_lookups_in_a_few_thousand_wallets(home: Path, prompts: AutoPrompts) -> None:
    paths, words = make_vault(home, prompts)
    with load(paths).recover(words[:2]) as v:
        ids = v.transact(lambda vault: add_keys(vault, 3000))
    data = paths.vault.read_bytes()
    read_all(data)
    assert _depth(data) in (2, 3)  # 3000 rows: ~65 leaves of 32-64 rows (random ids: one or two levels above)
    public = load(paths)
    for i, sig in enumerate(ids):
        assert public.wallet(sig).address == f"0x{i:040x}"
    for missing in ("", "0", "ffffffff-ffff-ffff-ffff-ffffffffffff", ids[0][:-1], ids[-1] + "0"):
        assert public.find_wallet(missing) is None
        with pytest.raises(UsageError, match="no wallet with signatureId"):
            public.wallet(missing)
    listed = public.wallets()
    assert len(listed) == 3000
    assert [w.signature_id for w in listed] == sorted(ids) == [w.signature_id for w in listed]  # re-iterable
    with public.recover(words[:2]) as v:
        assert v.read_secret(ids[1234]) == ("PRIVATE_KEY", secret(1234))


def test_adding_or_removing_one_wallet_rewrites_one_path(home: Path, prompts: AutoPrompts) -> None:
    """The O(log n) claim, on the file: after one change, only nodes on one root-to-leaf path (and a
    split's new node) differ; every other node is the old bytes, copied."""
    paths, words = make_vault(home, prompts)
    with load(paths).recover(words[:2]) as v:
        ids = v.transact(lambda vault: add_keys(vault, 2000))
        for change in (lambda vault: add_keys(vault, 1, start=5000), lambda vault: vault.remove_wallet(ids[77])):
            before = paths.vault.read_bytes()
            v.transact(change)
            after = paths.vault.read_bytes()
            read_all(after)
            old, new = nodes_of(before), nodes_of(after)
            changed = [k for k, node in enumerate(new) if k >= len(old) or old[k] != node]
            assert 1 <= len(changed) <= _depth(after) + 1, changed
            assert len(old) - len(changed) >= 30  # the rest (dozens of leaves) were copied as they were


def test_a_wallet_id_is_unique(home: Path, prompts: AutoPrompts) -> None:
    paths, words = make_vault(home, prompts)
    with load(paths).recover(words[:2]) as v:
        (sig,) = add_keys(v, 1)
        with pytest.raises(UsageError, match="already exists"):
            v.add_wallet(wallet_type="PRIVATE_KEY", chain="ETH", testnet=True, secret=secret(1), signature_id=sig)
        with pytest.raises(UsageError, match="no wallet"):
            v.remove_wallet("nope")
        v.save()
        with pytest.raises(UsageError, match="already exists"):
            v.add_wallet(wallet_type="PRIVATE_KEY", chain="ETH", testnet=True, secret=secret(1), signature_id=sig)
    assert load(paths).header.wallet_count == 1
