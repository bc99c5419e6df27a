"""The FIDO2 backend over the real python-fido2 stack: error mapping, cancel, pre-flight, enrolment rules."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fido2.ctap import CtapError

from agent.errors import TokenError, TouchDenied, WrongToken
from agent.tokens.discovery import simulator_anchors
from agent.tokens.fido2_errors import CTAP_ERRORS, describe
from agent.tokens.fido2_token import Fido2Token, verify_assertion
from agent.tokens.sim import FixedTouch, TouchResult, create_sim_token, open_sim_hid_device
from tests.conftest import AutoPrompts

# Codes a token cannot return to a host that is behaving (framing and transport internals).
NOT_FROM_A_TOKEN = {
    "SUCCESS",
    "SPEC_LAST",
    "EXTENSION_FIRST",
    "EXTENSION_LAST",
    "VENDOR_FIRST",
    "VENDOR_LAST",
    "INVALID_COMMAND",
    "INVALID_PARAMETER",
    "INVALID_LENGTH",
    "INVALID_SEQ",
    "LOCK_REQUIRED",
    "INVALID_CHANNEL",
    "CBOR_UNEXPECTED_TYPE",
    "INVALID_CBOR",
    "MISSING_PARAMETER",
    "FP_DATABASE_FULL",
    "LARGE_BLOB_STORAGE_FULL",
    "PROCESSING",
    "OPERATION_PENDING",
    "NO_OPERATIONS",
    "INVALID_OPTION",
    "REQUEST_TOO_LARGE",
    "INVALID_SUBCOMMAND",
    "OTHER",
}


def test_every_ctap_status_a_token_can_return_has_a_specific_message() -> None:
    unmapped = [e.name for e in CtapError.ERR if e.name not in NOT_FROM_A_TOKEN and e.value not in CTAP_ERRORS]
    assert unmapped == []
    # Anything else still becomes a TokenError naming the code, never a crash.
    assert "0x7F" in describe(0x7F, "sim:x").message
    assert isinstance(describe(0x2E, "sim:x"), WrongToken)


def _token(home: Path, name: str, touch=None) -> Fido2Token:  # type: ignore[no-untyped-def]
    create_sim_token(home, name)
    return Fido2Token(
        open_sim_hid_device(home, name, touch=touch), f"sim:{name}", simulated=True, anchors=simulator_anchors(home)
    )


def _enrolled(home: Path, prompts: AutoPrompts):  # type: ignore[no-untyped-def]
    with _token(home, "alice") as token:
        enrolment = token.enrol(
            rp_id="kms-agent.local", user_id=b"u" * 16, user_name="alice", salt=b"s" * 32, prompts=prompts
        )
    return enrolment


def test_enrolment_records_an_attested_uv_credential(home: Path, prompts: AutoPrompts) -> None:
    enrolment = _enrolled(home, prompts)
    slot = enrolment.slot_public
    assert slot["uv"] is True and slot["cred_protect"] == 2 and slot["att_fmt"] == "packed"
    assert len(enrolment.ikm) == 32
    # Two touches: makeCredential, then the getAssertion that yields the hmac-secret.
    assert prompts.touched == ["sim:alice", "sim:alice"]


def test_unwrap_reproduces_the_enrolment_secret_and_signs_the_digest(home: Path, prompts: AutoPrompts) -> None:
    enrolment = _enrolled(home, prompts)
    digest = bytes(range(32))
    with _token(home, "alice") as token:
        assert token.holds(enrolment.slot_public)
        got = token.unwrap(enrolment.slot_public, digest=digest, prompts=prompts)
    assert got.ikm == enrolment.ikm
    approval = verify_assertion(enrolment.slot_public, digest, got.approval.auth_data, got.approval.signature, "x")
    assert approval.user_verified and approval.sign_count == got.approval.sign_count
    with pytest.raises(TokenError, match="does not verify"):
        verify_assertion(enrolment.slot_public, bytes(32), got.approval.auth_data, got.approval.signature, "x")


def test_another_token_does_not_hold_the_credential(home: Path, prompts: AutoPrompts) -> None:
    enrolment = _enrolled(home, prompts)
    with _token(home, "mallory") as other:
        assert other.holds(enrolment.slot_public) is False
        assert prompts.touched == ["sim:alice", "sim:alice"]  # the pre-flight needed no touch


def test_cancel_while_waiting_for_touch(home: Path, prompts: AutoPrompts) -> None:
    enrolment = _enrolled(home, prompts)
    slow = FixedTouch(TouchResult.GRANTED, delay=30)
    with _token(home, "alice", touch=slow) as token:
        timer = threading.Timer(0.3, token.cancel.set)
        timer.start()
        with pytest.raises(TouchDenied, match="cancelled"):
            token.unwrap(enrolment.slot_public, digest=bytes(32), prompts=prompts)
        timer.cancel()
