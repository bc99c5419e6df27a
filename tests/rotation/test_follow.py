"""The vault layer: a writer that opened before a rotation follows it only with slots that stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import UsageError, VaultIntegrityError
from agent.tokens.discovery import find_token
from agent.vault import keyslots, rotation
from tests.conftest import AutoPrompts, Cli
from tests.rotation.helpers import ops
from tests.vault.helpers import load, make_vault, secret, unlock


def test_a_writer_opened_before_a_rotation_follows_it_unless_its_operator_left(
    home: Path, prompts: AutoPrompts
) -> None:
    paths, _ = make_vault(home, prompts)
    stays = unlock(paths, prompts, ["alice", "bob"])
    leaver = unlock(paths, prompts, ["alice", "carol"])
    with unlock(paths, prompts, ["alice", "bob"]) as admin:
        plan = rotation.plan(admin, lambda s: find_token(s, home), prompts, remove_operators=["carol"])
        assert plan.dropped == tuple(s for s in admin.header.slots if s.label == "sim:carol")
        rotation.commit(admin, plan)
        generation = admin.header.generation
    with stays:
        row = stays.transact(
            lambda v: v.add_wallet(wallet_type="PRIVATE_KEY", chain="ETH", testnet=True, secret=secret(1))
        )
        assert stays.header.generation == generation + 1
    with leaver, pytest.raises(VaultIntegrityError, match="rotated while this command ran"):
        leaver.transact(lambda v: v.add_wallet(wallet_type="PRIVATE_KEY", chain="ETH", testnet=True, secret=secret(2)))
    with unlock(paths, prompts, ["bob", "alice"]) as fresh:
        _kind, key = fresh.read_secret(row.signature_id)
        assert key == secret(1)
    assert load(paths).header.quorum == 2 and len(load(paths).header.operators) == 2


def test_a_vault_without_the_recovery_key_rotates_through_recovery_rotate(cli: Cli, home: Path) -> None:
    from tests.conftest import init_args

    cli.json(*init_args())
    from agent.cli.context import Paths

    prompts = AutoPrompts(home)
    p = Paths(home)
    with unlock(p, prompts, ["alice", "bob"]) as v:  # as a vault made before rotation existed
        v.body["shares"].pop(keyslots.RECOVERY_KEK)
        v.transact(lambda _: None)
    refused = cli("vault", "rotate-key", *ops("alice", "bob"))
    assert refused.returncode == 2 and "recovery rotate" in refused.stderr
    with unlock(p, prompts, ["alice", "bob"]) as v, pytest.raises(UsageError):
        rotation.plan(v, lambda s: find_token(s, home), prompts)
    words = cli.json("recovery", "rotate", *ops("alice", "bob"))["recovery"]["words"]
    assert len(words) == 3
    assert cli("recovery", "verify", input="\n".join(words[:2]).encode()).returncode == 0
    assert cli("vault", "rotate-key", *ops("alice", "bob")).returncode == 0
    assert cli("recovery", "verify", input="\n".join(words[1:]).encode()).returncode == 0


def test_of_two_rotations_prepared_at_once_the_second_is_refused(home: Path, prompts: AutoPrompts) -> None:
    from agent.errors import KmsAgentError, StateError

    paths, words = make_vault(home, prompts)
    with unlock(paths, prompts, ["alice", "bob"]) as a, unlock(paths, prompts, ["bob", "carol"]) as b:
        first = rotation.plan(a, lambda s: find_token(s, home), prompts, new_recovery=(2, 3))
        second = rotation.plan(b, lambda s: find_token(s, home), prompts)
        rotation.commit(a, first)
        generation = load(paths).header.generation
        with pytest.raises(StateError, match="changed while this rotation was prepared"):
            rotation.commit(b, second)  # it would bring back the recovery words just retired
    assert load(paths).header.generation == generation
    with pytest.raises(KmsAgentError):  # the retired words open nothing
        load(paths).recover(words[:2])


def test_a_legacy_v1_vault_rotates_into_a_v2_file_with_every_secret(home: Path, prompts: AutoPrompts) -> None:
    from tests.vault.helpers import add_keys, write_v1

    paths, words = make_vault(home, prompts)
    with unlock(paths, prompts, ["alice", "bob"]) as v:
        ids = add_keys(v, 5)
        v.save()
    write_v1(paths, words)
    with unlock(paths, prompts, ["alice", "bob"]) as v:
        rotation.commit(v, rotation.plan(v, lambda s: find_token(s, home), prompts, quorum_size=3))
    assert paths.vault.with_name("wallet.dat.v1.bak").exists()
    assert load(paths).version == 2 and load(paths).header.quorum == 3
    with unlock(paths, prompts) as v:
        assert [v.read_secret(i)[1] for i in ids] == [secret(n) for n in range(5)]
    with load(paths).recover(words[:2]) as v:  # the recovery words follow the new key
        assert v.wallet_count == 5
