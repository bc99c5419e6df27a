"""Tokens found once are kept open for the next touch in the same process, and never trusted past a change."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.errors import PinInvalid, WrongToken
from agent.tokens.discovery import find_token, open_token
from agent.tokens.sim import create_sim_token, set_plugged
from tests.conftest import AutoPrompts


@dataclass(frozen=True)
class SlotEntry:
    """What discovery reads of an enrolled slot (agent.vault.records.SlotEntry has more)."""

    kind: str
    label: str
    public: Mapping[str, Any]


def _enrolled(home: Path, prompts: AutoPrompts, name: str = "alice") -> SlotEntry:
    with open_token(f"sim:{name}", home) as token:
        enrolment = token.enrol(
            rp_id="kms-agent.test", user_id=os.urandom(16), user_name=name, salt=os.urandom(32), prompts=prompts
        )
    return SlotEntry("fido2-hmac", f"sim:{name}", enrolment.slot_public)


@pytest.fixture
def slot(home: Path, prompts: AutoPrompts) -> SlotEntry:
    return _enrolled(home, prompts)


def _touch(home: Path, slot: SlotEntry, prompts: AutoPrompts) -> object:
    token = find_token(slot, home)
    assert token is not None
    with token:
        token.unwrap(slot.public, digest=os.urandom(32), prompts=prompts)
    return token


def test_the_same_token_serves_the_next_touch_without_reopening(
    home: Path, slot: SlotEntry, prompts: AutoPrompts
) -> None:
    first = _touch(home, slot, prompts)
    assert _touch(home, slot, prompts) is first


def test_a_token_reset_since_it_was_found_is_the_wrong_token_again(
    home: Path, slot: SlotEntry, prompts: AutoPrompts
) -> None:
    _touch(home, slot, prompts)
    (home / "sim" / "alice.fido2.json").unlink()
    create_sim_token(home, "alice")  # same name, new device secrets
    with pytest.raises(WrongToken, match="does not hold its enrolled credential"):
        find_token(slot, home)


def test_an_unplugged_token_is_absent_even_when_it_was_pooled(
    home: Path, slot: SlotEntry, prompts: AutoPrompts
) -> None:
    _touch(home, slot, prompts)
    set_plugged(home, "alice", False)
    assert find_token(slot, home) is None
    set_plugged(home, "alice", True)
    assert find_token(slot, home) is not None


def test_a_token_whose_use_failed_is_not_kept(home: Path, slot: SlotEntry, prompts: AutoPrompts) -> None:
    first = _touch(home, slot, prompts)
    with pytest.raises(PinInvalid):  # the token itself refuses: a wrong PIN
        _touch(home, slot, AutoPrompts(home, pins={slot.label: "000000"}))
    assert _touch(home, slot, prompts) is not first
