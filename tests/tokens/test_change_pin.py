"""`kms-agent token pin LABEL`: change a token's PIN (FIDO2 via ClientPin.change_pin, PIV via PivSession.change_pin).

Both kinds run on the in-process simulators (the PIV card is served as a yubikit connection
directly, so no pcscd is needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.audit import AuditLog
from agent.cli.context import Paths
from agent.errors import PinInvalid, UsageError
from agent.tokens.discovery import find_token
from agent.tokens.pin_change import change_pin
from tests.conftest import AutoPrompts, Cli
from tests.vault.helpers import load, make_vault

OLD = "123456"
NEW = "24681357"


def _slot(home: Path, label: str):  # type: ignore[no-untyped-def]
    return next(s for s in load(Paths(home)).header.slots if s.label == label)


def _unwraps(home: Path, label: str, pin: str) -> bool:
    slot = _slot(home, label)
    token = find_token(slot, home)
    assert token is not None
    prompts = AutoPrompts(home, pins={label: pin})
    try:
        with token:
            unwrapped = token.unwrap(slot.public, digest=bytes(32), prompts=prompts)
    except PinInvalid:
        return False
    unwrapped.ikm[:] = bytes(len(unwrapped.ikm))
    return True


def test_fido2_pin_change_then_only_the_new_pin_works(home: Path, prompts: AutoPrompts) -> None:
    make_vault(home, prompts)
    token = find_token(_slot(home, "sim:alice"), home)
    assert token is not None
    with token, pytest.raises(PinInvalid, match="tries left") as exc:
        change_pin(token, bytearray(b"999999"), bytearray(NEW.encode()))
    assert exc.value.attempts_remaining is not None and exc.value.attempts_remaining > 0
    token = find_token(_slot(home, "sim:alice"), home)
    assert token is not None
    with token, pytest.raises(UsageError, match="at least"):
        change_pin(token, bytearray(OLD.encode()), bytearray(b"12"))  # refused before the token is asked
    token = find_token(_slot(home, "sim:alice"), home)
    assert token is not None
    old, new = bytearray(OLD.encode()), bytearray(NEW.encode())
    with token:
        change_pin(token, old, new)
    assert _unwraps(home, "sim:alice", NEW)
    assert not _unwraps(home, "sim:alice", OLD)


def test_token_pin_cli_fido2_and_piv(home: Path, cli: Cli) -> None:
    from tests.conftest import init_args

    assert cli(*init_args()).returncode == 0
    enrol = cli(
        "token", "enrol", "sim:bob-piv", "--kind", "piv", "--owner", "bob", "--operator", "alice", "--operator", "bob"
    )
    assert enrol.returncode == 0, enrol.stderr

    wrong = cli("token", "pin", "sim:alice", "--json", input=b"999999\n" + NEW.encode() + b"\n")
    assert wrong.returncode == 4, wrong.stderr
    error = json.loads(wrong.stdout)["error"]
    assert error["code"] == "pin" and "tries left" in error["message"]
    assert "999999" not in wrong.stderr + wrong.stdout

    for label in ("sim:alice", "sim:bob-piv"):
        proc = cli("token", "pin", label, "--json", input=f"{OLD}\n{NEW}\n".encode())
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["changed"] == label
        assert _unwraps(home, label, NEW)
        assert not _unwraps(home, label, OLD)

    wrong_piv = cli("token", "pin", "sim:bob-piv", input=f"{OLD}\n{NEW}\n".encode())
    assert wrong_piv.returncode == 4 and "1 try left" in wrong_piv.stderr  # PIV: 3 tries, two used above

    rows = AuditLog(home / "state").rows(kinds=["pin_change", "pin_error"])
    assert [r.kind for r in rows] == ["pin_error", "pin_change", "pin_change", "pin_error"]
    text = " ".join(r.payload_text for r in rows)
    assert OLD not in text and NEW not in text and "999999" not in text
