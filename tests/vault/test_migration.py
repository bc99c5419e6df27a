"""Legacy v1 files: read as before, migrated to v2 on the first write after a backup, pin kept."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from agent.errors import VaultRollback
from agent.vault import format as fmt
from tests.conftest import AutoPrompts
from tests.vault import reference as ref
from tests.vault.helpers import add_keys, load, make_vault, read_all, secret, unlock, write_v1


@pytest.fixture
def legacy(home: Path, prompts: AutoPrompts):  # type: ignore[no-untyped-def]
    """A vault of 5 wallets, rewritten as a v1 file (as the v1 agent left it) and pinned."""
    paths, words = make_vault(home, prompts)
    with load(paths).recover(words[:2]) as v:
        ids = add_keys(v, 5)
        v.save()
    data = write_v1(paths, words)
    return paths, words, ids, data


def test_a_v1_vault_is_read_without_being_changed(legacy, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    paths, _, ids, data = legacy
    public = load(paths)
    assert public.version == 1 and public.header.wallet_count == 5
    public.verify()
    assert public.wallet(ids[3]).address == f"0x{3:040x}"
    assert {w.signature_id for w in public.wallets()} == set(ids)
    with unlock(paths, prompts, operators=["alice", "bob"]) as v:
        kind, key = v.read_secret(ids[2])
        assert (kind, key) == ("PRIVATE_KEY", secret(2))
        assert v.header.wallet_count == 5
    assert paths.vault.read_bytes() == data
    assert not list(paths.home.glob("wallet.dat.v1*"))


def test_the_first_write_migrates_after_a_backup(
    legacy, prompts: AutoPrompts, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    paths, _, ids, data = legacy
    generation = fmt.parse_v1(data).header.generation
    with (
        caplog.at_level(logging.WARNING, logger="agent.vault"),
        unlock(paths, prompts, operators=["alice", "bob"]) as v,
    ):
        new = v.transact(lambda vault: add_keys(vault, 1, start=100))[0]
    backup = paths.home / "wallet.dat.v1.bak"
    assert backup.read_bytes() == data
    assert backup.stat().st_mode & 0o777 == 0o600
    assert str(backup) in caplog.text and "v1 to v2" in caplog.text
    public = load(paths)
    assert public.version == 2 and public.header.generation == generation + 1
    public.verify()
    ref.read_v2(paths.vault.read_bytes())  # the independent reader agrees
    assert [w.signature_id for w in public.wallets()] == sorted([*ids, new])
    with unlock(paths, prompts, operators=["bob", "carol"]) as v:
        for i, sig in enumerate(ids):
            assert v.read_secret(sig) == ("PRIVATE_KEY", secret(i))
        assert v.read_secret(new) == ("PRIVATE_KEY", secret(100))
        # Later writes are ordinary v2 saves: no new backup.
        v.transact(lambda vault: vault.remove_wallet(ids[0]))
    assert sorted(p.name for p in paths.home.glob("wallet.dat.v1*")) == ["wallet.dat.v1.bak"]
    assert load(paths).header.wallet_count == 5


def test_the_pin_refuses_the_v1_backup_after_migration(legacy, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    paths, _, _, data = legacy
    with unlock(paths, prompts, operators=["alice", "bob"]) as v:
        v.transact(lambda vault: None)  # a write that changes nothing but the format
    assert load(paths).version == 2
    shutil.copy(paths.home / "wallet.dat.v1.bak", paths.vault)
    with pytest.raises(VaultRollback, match="older than generation"):
        load(paths)
    assert paths.vault.read_bytes() == data


def test_a_different_older_backup_is_never_overwritten(legacy, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    paths, _, _, data = legacy
    (paths.home / "wallet.dat.v1.bak").write_bytes(b"an older backup")
    with unlock(paths, prompts, operators=["alice", "bob"]) as v:
        v.save()
    assert (paths.home / "wallet.dat.v1.bak").read_bytes() == b"an older backup"
    (other,) = [p for p in paths.home.glob("wallet.dat.v1-*.bak")]
    assert other.read_bytes() == data


def test_a_migrated_vault_keeps_header_policy_and_slots(legacy, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    paths, _, _, _ = legacy
    before = load(paths).header
    with unlock(paths, prompts, operators=["alice", "carol"]) as v:
        v.save()
    after = read_all(paths.vault.read_bytes()).header
    assert (after.slots, after.operators, after.policy, after.recovery) == (
        before.slots,
        before.operators,
        before.policy,
        before.recovery,
    )
    assert after.vault_id == before.vault_id and after.signing_key == before.signing_key
