"""Quorum unlock through the real python-fido2 CtapHidDevice/Ctap2 stack against simulated tokens."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from agent.errors import PinBlocked, PinInvalid, QuorumNotMet, TokenRemoved, TouchDenied, TouchTimeout
from agent.tokens.discovery import open_token
from agent.tokens.sim import set_plugged
from tests.conftest import AutoPrompts
from tests.vault.helpers import load, make_vault, snapshot, unlock


@pytest.fixture
def vault3(home: Path, prompts: AutoPrompts):  # type: ignore[no-untyped-def]
    paths, words = make_vault(home, prompts)
    return paths, words


@pytest.mark.parametrize("pair", list(itertools.combinations(["alice", "bob", "carol"], 2)))
def test_any_two_of_three_operators_unlock(vault3, prompts: AutoPrompts, pair: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    paths, _ = vault3
    with unlock(paths, prompts, operators=list(pair)) as vault:
        assert [t.operator for t in vault.touches] == list(pair)
        assert all(t.approval.user_present and t.approval.user_verified for t in vault.touches)
    assert prompts.touched[-2:] == [f"sim:{n}" for n in pair]


def test_one_operator_is_not_enough(vault3, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    paths, _ = vault3
    before = snapshot(paths)
    with pytest.raises(QuorumNotMet, match="2 distinct operators must touch a token; got 1 \\(alice\\)"):
        unlock(paths, prompts, operators=["alice"])
    assert snapshot(paths) == before


def test_two_tokens_of_one_operator_count_once(vault3, home: Path, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    paths, _ = vault3
    with unlock(paths, prompts, operators=["alice", "bob"]) as vault:
        with open_token("sim:alice-backup", home) as backup:
            vault.enrol_token("alice", backup, prompts)
        vault.save()
    set_plugged(home, "bob", False)
    set_plugged(home, "carol", False)
    with pytest.raises(QuorumNotMet, match="got 1 \\(alice\\); no token present for bob, carol"):
        unlock(paths, prompts)
    # ...while the backup token alone does stand in for alice:
    set_plugged(home, "alice", False)
    set_plugged(home, "bob", True)
    with unlock(paths, prompts) as vault:
        assert [(t.operator, t.token_label) for t in vault.touches] == [
            ("alice", "sim:alice-backup"),
            ("bob", "sim:bob"),
        ]


def test_wrong_pin_counts_down_and_changes_nothing(vault3, home: Path, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    paths, _ = vault3
    before = snapshot(paths)
    prompts.pins["sim:alice"] = "000000"
    with pytest.raises(PinInvalid) as first:
        unlock(paths, prompts, operators=["alice", "bob"])
    assert first.value.attempts_remaining == 7
    assert "7 tries left" in first.value.message
    with pytest.raises(PinInvalid) as second:
        unlock(paths, prompts, operators=["alice", "bob"])
    assert second.value.attempts_remaining == 6
    assert snapshot(paths) == before
    del prompts.pins["sim:alice"]
    with unlock(paths, prompts, operators=["alice", "bob"]):
        pass


def test_blocked_pin_is_reported(vault3, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    paths, _ = vault3
    prompts.pins["sim:carol"] = "999999"
    errors = []
    for _ in range(8):
        with pytest.raises((PinInvalid, PinBlocked)) as exc:
            unlock(paths, prompts, operators=["carol", "bob"])
        errors.append(exc.value)
    assert any(isinstance(e, PinBlocked) for e in errors) or errors[-1].attempts_remaining == 0  # type: ignore[union-attr]
    del prompts.pins["sim:carol"]
    with pytest.raises(PinBlocked):
        unlock(paths, prompts, operators=["carol", "bob"])


@pytest.mark.parametrize(
    ("mode", "error"), [("deny", TouchDenied), ("timeout", TouchTimeout), ("remove", TokenRemoved)]
)
def test_touch_failures_are_clear_and_change_nothing(
    vault3, prompts: AutoPrompts, monkeypatch: pytest.MonkeyPatch, mode: str, error: type[Exception]
) -> None:  # type: ignore[no-untyped-def]
    paths, _ = vault3
    before = snapshot(paths)
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", mode)
    with pytest.raises(error) as exc:
        unlock(paths, prompts, operators=["alice", "bob"])
    assert "sim:alice" in str(exc.value)
    assert snapshot(paths) == before


def test_recovery_words_open_without_tokens(vault3) -> None:  # type: ignore[no-untyped-def]
    paths, words = vault3
    with load(paths).recover(words[1:3]) as vault:
        assert vault.header.quorum == 2
    with pytest.raises(QuorumNotMet):
        load(paths).recover(words[:1])


def test_a_reset_token_is_the_wrong_token(vault3, home: Path, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    from agent.errors import WrongToken
    from agent.tokens.sim import create_sim_token

    paths, _ = vault3
    before = snapshot(paths)
    (home / "sim" / "alice.fido2.json").unlink()
    create_sim_token(home, "alice")  # same name, new device secrets: its credentials are gone
    with pytest.raises(WrongToken, match="sim:alice is plugged in but does not hold its enrolled credential"):
        unlock(paths, prompts, operators=["alice", "bob"])
    assert snapshot(paths) == before
    with unlock(paths, prompts, operators=["bob", "carol"]):
        pass


def test_a_backup_token_stands_in_for_a_reset_primary(vault3, home: Path, prompts: AutoPrompts) -> None:  # type: ignore[no-untyped-def]
    from agent.tokens.sim import create_sim_token

    paths, _ = vault3
    with unlock(paths, prompts, operators=["alice", "bob"]) as vault:
        with open_token("sim:alice-backup", home) as backup:
            vault.enrol_token("alice", backup, prompts)
        vault.save()
    (home / "sim" / "alice.fido2.json").unlink()
    create_sim_token(home, "alice")  # the primary was reset; the backup is plugged in too
    with unlock(paths, prompts, operators=["alice", "bob"]) as vault:
        assert [t.token_label for t in vault.touches] == ["sim:alice-backup", "sim:bob"]
