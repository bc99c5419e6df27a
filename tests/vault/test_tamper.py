"""Tampering with a real vault: every edit an attacker without the data key can make is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.errors import VaultError, VaultIntegrityError, VaultPermissions, VaultRollback, VaultUntrusted
from agent.vault import format as fmt
from agent.vault.sealed import check_file_signature
from tests.conftest import AutoPrompts
from tests.vault.helpers import load, make_vault, unlock


def _rewrite_header(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Edit the header map but keep the old MAC and signature, as an attacker without the DEK must."""
    header_bytes, mac, sig, body = fmt.split(path.read_bytes())
    header = fmt.decode_canonical(header_bytes, "header")
    edit(header)
    path.write_bytes(fmt.serialise(fmt.encode_canonical(header), mac, sig, body))


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


def test_every_byte_flip_of_a_real_vault_is_refused(vault) -> None:  # type: ignore[no-untyped-def]
    data = vault.vault.read_bytes()
    for offset in range(len(data)):
        mutated = bytearray(data)
        mutated[offset] ^= 0x40
        with pytest.raises(VaultError):
            check_file_signature(fmt.parse(bytes(mutated)))


def test_changed_xpub_is_refused(vault) -> None:  # type: ignore[no-untyped-def]
    other = "xpub6BosfCnifzxcFwrSzQiqu2DBVTshkCXacvNsWGYJVVhhawA7d4R5WSWGFNbi8Aw6ZRc1brxMyWMzG3DSSSSoekkudhUd9yLb6qx39T9nMdj"

    def edit(h):  # type: ignore[no-untyped-def]
        h["wallets"][0][5] = other

    _rewrite_header(vault.vault, edit)
    with pytest.raises(VaultIntegrityError):
        load(vault)


def test_swapped_slots_are_refused(vault) -> None:  # type: ignore[no-untyped-def]
    def edit(h):  # type: ignore[no-untyped-def]
        a, b = h["slots"][0], h["slots"][1]
        a["wrapped"], b["wrapped"] = b["wrapped"], a["wrapped"]

    _rewrite_header(vault.vault, edit)
    with pytest.raises(VaultIntegrityError):
        load(vault)


def test_quorum_downgrade_is_refused(vault) -> None:  # type: ignore[no-untyped-def]
    def edit(h):  # type: ignore[no-untyped-def]
        h["quorum"] = 1

    _rewrite_header(vault.vault, edit)
    with pytest.raises(VaultIntegrityError):
        load(vault)


def test_header_from_another_vault_is_refused(vault, tmp_path: Path, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    other_home = tmp_path / "other"
    other_home.mkdir(mode=0o700)
    other, _ = make_vault(other_home, AutoPrompts(other_home))
    ours = vault.vault.read_bytes()
    # A whole, self-consistent vault from elsewhere: its signature is fine, the pin is not.
    shutil.copy(other.vault, vault.vault)
    with pytest.raises(VaultUntrusted, match="not the vault this agent trusts"):
        load(vault)
    # The other vault's header (with its MAC and signature) spliced onto our body breaks the signature.
    theirs_header, theirs_mac, theirs_sig, _ = fmt.split(other.vault.read_bytes())
    our_body = fmt.split(ours)[3]
    vault.vault.write_bytes(fmt.serialise(theirs_header, theirs_mac, theirs_sig, our_body))
    with pytest.raises(VaultIntegrityError):
        load(vault)
    # ...and our header on their body, likewise.
    our_header, our_mac, our_sig, _ = fmt.split(ours)
    vault.vault.write_bytes(fmt.serialise(our_header, our_mac, our_sig, fmt.split(other.vault.read_bytes())[3]))
    with pytest.raises(VaultIntegrityError):
        load(vault)


def test_rolled_back_file_is_refused(vault, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    old = vault.vault.read_bytes()
    with unlock(vault, prompts, operators=["bob", "carol"]) as v:
        v.remove_wallet(v.header.wallets[0].signature_id)
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
    assert fmt.split(fork)[0] != fmt.split(vault.vault.read_bytes())[0]
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
