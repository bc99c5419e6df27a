"""PivToken against the in-process simulated card: the Token contract, errors, touch prompts."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from yubikit.core.smartcard import SW
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, MANAGEMENT_KEY_TYPE, PIN_POLICY, SLOT, TOUCH_POLICY, PivSession

from agent.errors import (
    PinBlocked,
    PinInvalid,
    ProgrammingError,
    TokenError,
    TokenNotFound,
    TokenRemoved,
    TokenUnsupported,
    TouchTimeout,
    UsageError,
    VaultFormatError,
    WrongToken,
)
from agent.tokens.base import Enrolment
from agent.tokens.piv_token import (
    KIND,
    PivToken,
    check_attestation,
    describe_sw,
    find_piv_token,
    is_piv_sim,
    open_piv_token,
    verify_approval,
)
from agent.tokens.sim.piv_state import piv_sim_pin
from agent.tokens.sim.touch import TouchResult
from tests.tokens.piv.conftest import Prompts, SimCard

DIGEST = bytes.fromhex("5d" * 32)


def token_for(card: SimCard, **kwargs: Any) -> PivToken:
    return PivToken(card.connect, f"sim:{card.name}", serial=card.serial, simulated=True, **kwargs)


def enrol(token: PivToken, prompts: Prompts | None = None) -> Enrolment:
    return token.enrol(
        rp_id="kms.test", user_id=b"op-1", user_name="alice", salt=os.urandom(32), prompts=prompts or Prompts()
    )


def compressed(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


def test_enrol_then_unwrap_gives_the_same_ikm_and_a_verifiable_approval(card: SimCard) -> None:
    token = token_for(card)
    enrolment = enrol(token)
    slot = enrolment.slot_public
    assert (enrolment.kind, enrolment.token_label, enrolment.simulated) == (KIND, "sim:card", True)
    assert len(enrolment.ikm) == 32
    assert slot["serial"] == card.serial
    assert (slot["wrap_slot"], slot["sign_slot"]) == (0x82, 0x83)
    assert slot["kdf_salt"] == slot["epk"] + slot["wrap_pub"] and len(slot["kdf_salt"]) == 66
    assert (slot["wrap_pin_policy"], slot["wrap_touch_policy"]) == (PIN_POLICY.ONCE, TOUCH_POLICY.ALWAYS)
    assert (slot["sign_pin_policy"], slot["sign_touch_policy"]) == (PIN_POLICY.ALWAYS, TOUCH_POLICY.ALWAYS)

    # The attestation chain in slot_public proves both keys are on-card keys of this serial.
    wrap_leaf, sign_leaf, f9 = (x509.load_der_x509_certificate(der) for der in slot["attestation"])
    for leaf in (wrap_leaf, sign_leaf):
        leaf.verify_directly_issued_by(f9)
    assert compressed(wrap_leaf.public_key()) == slot["wrap_pub"]  # type: ignore[arg-type]
    assert compressed(sign_leaf.public_key()) == slot["sign_pub"]  # type: ignore[arg-type]

    prompts = Prompts()
    unwrapped = token.unwrap(slot, digest=DIGEST, prompts=prompts)
    assert unwrapped.ikm == enrolment.ikm
    approval = unwrapped.approval
    assert (approval.kind, approval.auth_data, approval.sign_count) == ("piv", b"", 0)
    assert approval.user_present and approval.user_verified
    sign_key = sign_leaf.public_key()
    assert isinstance(sign_key, ec.EllipticCurvePublicKey)
    sign_key.verify(approval.signature, DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))  # prehashed digest
    assert verify_approval(slot, DIGEST, approval.signature)
    assert not verify_approval(slot, bytes(32), approval.signature)
    assert prompts.asked == [3]  # one PIN prompt, used for both keys
    assert card.touches.calls == 2  # ECDH and signature each need a touch


def test_default_management_key_is_replaced_by_a_stored_random_one(card: SimCard) -> None:
    from ykman.piv import get_pivman_data, get_pivman_protected_data

    enrol(token_for(card))
    conn = card.connect()
    try:
        session = PivSession(conn)
        meta = session.get_management_key_metadata()
        assert not meta.default_value and meta.key_type == MANAGEMENT_KEY_TYPE.AES192
        assert get_pivman_data(session).has_stored_key
        session.verify_pin("123456")
        stored = get_pivman_protected_data(session).key
        assert stored is not None and stored != DEFAULT_MANAGEMENT_KEY
        session.authenticate(stored)
    finally:
        conn.close()


def test_second_enrolment_takes_free_slots_and_keeps_the_first(card: SimCard) -> None:
    token = token_for(card)
    first = enrol(token)
    second = enrol(token)  # now with the stored management key
    assert (second.slot_public["wrap_slot"], second.slot_public["sign_slot"]) == (0x84, 0x85)
    assert token.holds(first.slot_public) and token.holds(second.slot_public)
    assert token.unwrap(first.slot_public, digest=DIGEST, prompts=Prompts()).ikm == first.ikm


def test_custom_management_key_not_on_the_card_is_refused(card: SimCard) -> None:
    conn = card.connect()
    try:
        session = PivSession(conn)
        session.authenticate(DEFAULT_MANAGEMENT_KEY)
        session.set_management_key(MANAGEMENT_KEY_TYPE.AES192, os.urandom(24))
    finally:
        conn.close()
    with pytest.raises(TokenUnsupported) as refused:
        enrol(token_for(card))
    assert refused.value.hint and "--protect" in refused.value.hint


def test_holds_and_wrong_token(new_card: Callable[..., SimCard]) -> None:
    alice, bob = new_card("alice"), new_card("bob")
    slot = enrol(token_for(alice)).slot_public
    assert token_for(alice).holds(slot)
    assert not token_for(bob).holds(slot)
    with pytest.raises(WrongToken):
        token_for(bob).unwrap(slot, digest=DIGEST, prompts=Prompts())
    # bob's card answering on alice's connection (swapped in the reader): the serial check catches it
    swapped = PivToken(bob.connect, "sim:alice", serial=alice.serial)
    with pytest.raises(WrongToken):
        swapped.unwrap(slot, digest=DIGEST, prompts=Prompts())
    assert not swapped.holds(slot)


def test_a_reset_card_no_longer_holds_the_slot(card: SimCard) -> None:
    token = token_for(card)
    slot = enrol(token).slot_public
    conn = card.connect()
    try:
        session = PivSession(conn)
        with pytest.raises(Exception):  # noqa: B017 - block the PIN on purpose
            session.verify_pin("000000")
        session.reset()
    finally:
        conn.close()
    assert not token.holds(slot)
    with pytest.raises(WrongToken):
        token.unwrap(slot, digest=DIGEST, prompts=Prompts())


def test_wrong_pin_shows_retries_then_blocks(card: SimCard) -> None:
    token = token_for(card)
    slot = enrol(token).slot_public
    wrong = Prompts(pin_value="000000")
    for left in (2, 1):
        with pytest.raises(PinInvalid) as bad:
            token.unwrap(slot, digest=DIGEST, prompts=wrong)
        assert bad.value.attempts_remaining == left
        assert f"{left} tr" in bad.value.message
    with pytest.raises(PinBlocked):
        token.unwrap(slot, digest=DIGEST, prompts=wrong)
    with pytest.raises(PinBlocked) as blocked:
        token.unwrap(slot, digest=DIGEST, prompts=Prompts())
    assert "PUK" in blocked.value.message
    assert wrong.asked == [3, 2, 1]


def test_a_pin_too_long_for_piv_costs_no_retry(card: SimCard) -> None:
    with pytest.raises(PinInvalid) as too_long:
        token_for(card).enrol(rp_id="x", user_id=b"u", user_name="u", salt=b"", prompts=Prompts("123456789"))
    assert too_long.value.attempts_remaining == 3
    assert card.state.read().pin_remaining == 3


@pytest.mark.parametrize("result", [TouchResult.DENIED, TouchResult.TIMEOUT])
def test_missed_touch_is_touch_timeout(card: SimCard, result: TouchResult) -> None:
    token = token_for(card)
    slot = enrol(token).slot_public
    card.touches.script = [result]
    with pytest.raises(TouchTimeout):
        token.unwrap(slot, digest=DIGEST, prompts=Prompts())
    card.touches.script = [TouchResult.GRANTED, result]  # ECDH touched, signature not
    with pytest.raises(TouchTimeout):
        token.unwrap(slot, digest=DIGEST, prompts=Prompts())


def test_card_removed_mid_operation(card: SimCard) -> None:
    token = token_for(card)
    slot = enrol(token).slot_public
    card.touches.script = [TouchResult.REMOVED]
    with pytest.raises(TokenRemoved):
        token.unwrap(slot, digest=DIGEST, prompts=Prompts())
    assert token.unwrap(slot, digest=DIGEST, prompts=Prompts()).approval.user_present  # plugged back in


def test_touch_is_announced_only_when_the_card_waits(card: SimCard) -> None:
    token = token_for(card, touch_prompt_delay=0.3)
    slot = enrol(token).slot_public
    quick = Prompts()
    token.unwrap(slot, digest=DIGEST, prompts=quick)
    assert quick.touched == []
    card.touches.delay = 0.8
    slow = Prompts()
    token.unwrap(slot, digest=DIGEST, prompts=slow)
    assert slow.touched == ["sim:card", "sim:card"]


def test_no_touch_policy_means_no_touch_and_no_user_presence(card: SimCard) -> None:
    token = token_for(
        card, wrap_policy=(PIN_POLICY.ONCE, TOUCH_POLICY.NEVER), sign_policy=(PIN_POLICY.ALWAYS, TOUCH_POLICY.NEVER)
    )
    slot = enrol(token).slot_public
    approval = token.unwrap(slot, digest=DIGEST, prompts=Prompts()).approval
    assert card.touches.calls == 0
    assert not approval.user_present and approval.user_verified


def test_unwrap_argument_checks(card: SimCard) -> None:
    token = token_for(card)
    slot = enrol(token).slot_public
    with pytest.raises(ProgrammingError):
        token.unwrap(slot, digest=b"short", prompts=Prompts())
    with pytest.raises(VaultFormatError):
        token.unwrap({**slot, "epk": b"\x05" + bytes(32)}, digest=DIGEST, prompts=Prompts())
    with pytest.raises(VaultFormatError):
        token.holds({k: v for k, v in slot.items() if k != "wrap_pub"})


def test_attestation_checks_catch_a_lying_card(card: SimCard) -> None:
    slot = enrol(token_for(card)).slot_public
    leaf, _, f9 = (x509.load_der_x509_certificate(der) for der in slot["attestation"])
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    good = {"serial": card.serial, "public_key": key, "policy": (2, 2), "label": "t"}
    check_attestation(leaf, f9, **good)  # type: ignore[arg-type]
    bad_cases: list[dict[str, Any]] = [
        {"serial": card.serial + 1},
        {"policy": (3, 2)},
        {"public_key": ec.generate_private_key(ec.SECP256R1()).public_key()},
    ]
    for change in bad_cases:
        with pytest.raises(TokenError):
            check_attestation(leaf, f9, **{**good, **change})
    with pytest.raises(TokenError):
        check_attestation(leaf, leaf, **good)  # type: ignore[arg-type]


def test_specs_open_and_find(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.tokens.piv_token as piv_token

    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "auto")
    monkeypatch.setattr(piv_token, "list_pcsc_piv_cards", lambda: [])  # stay off a shared pcscd
    monkeypatch.setattr("agent.tokens.inventory.list_piv_cards", lambda: [])
    home = tmp_path / "kms"
    with pytest.raises(UsageError):
        open_piv_token("yubikey", home)
    with pytest.raises(UsageError):
        open_piv_token("piv:abc", home)
    assert not is_piv_sim(home, "alice")
    alice = open_piv_token("sim:alice", home)  # created on first use, like FIDO2 sims
    assert is_piv_sim(home, "alice") and alice.simulated and alice.label == "sim:alice"
    assert piv_sim_pin(home, "alice") == "123456"
    bob = open_piv_token("sim:bob", home)
    enrolment = enrol(bob)
    slot = enrolment.slot_public
    found = find_piv_token(slot, home)
    assert found is not None and found.serial == bob.serial and found.label == "sim:bob"
    assert find_piv_token({**slot, "serial": 1}, home) is None
    assert found.unwrap(slot, digest=DIGEST, prompts=Prompts()).ikm == enrolment.ikm


def test_every_status_word_maps_to_a_token_error() -> None:
    for sw in SW:
        if sw == SW.OK:
            continue
        error = describe_sw(sw, "piv:1")
        assert isinstance(error, TokenError) and "piv:1" in error.message
    assert isinstance(describe_sw(0x63C2, "t"), PinInvalid)
    assert describe_sw(0x63C2, "t").attempts_remaining == 2  # type: ignore[attr-defined]
    assert isinstance(describe_sw(0x63C0, "t"), PinBlocked)
    assert isinstance(describe_sw(SW.AUTH_METHOD_BLOCKED, "t"), PinBlocked)
    assert isinstance(describe_sw(SW.SECURITY_CONDITION_NOT_SATISFIED, "t"), TouchTimeout)
    assert isinstance(describe_sw(SW.REFERENCE_DATA_NOT_FOUND, "t"), WrongToken)


def test_missing_sim_and_no_pcsc_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.tokens.piv_token as piv_token

    monkeypatch.setattr(piv_token, "list_pcsc_piv_cards", lambda: [])
    monkeypatch.setattr("agent.tokens.inventory.list_piv_cards", lambda: [])
    with pytest.raises(TokenNotFound):
        open_piv_token("piv", tmp_path)
    with pytest.raises(TokenNotFound):
        open_piv_token("piv:123", tmp_path)
    monkeypatch.setattr(piv_token, "list_pcsc_piv_cards", lambda: [("r1", 1, False), ("r2", 2, False)])
    with pytest.raises(UsageError) as several:
        open_piv_token("piv", tmp_path)
    assert "piv:1" in several.value.message and "piv:2" in several.value.message
    assert open_piv_token("piv:2", tmp_path).label == "piv:2"


def test_enrolment_is_a_plain_record(card: SimCard) -> None:
    enrolment = enrol(token_for(card))
    assert dataclasses.asdict(enrolment)["extra"] == {
        "pin_is_default": True,
        "attestation_root": "simulator",
        "model": "YubiKey PIV 5.7.2, Keychain (USB-A)",
    }
    assert enrolment.slot_public["attestation_root"] == "simulator"
    assert enrolment.slot_public["model"] == "YubiKey PIV 5.7.2, Keychain (USB-A)"
    assert SLOT(enrolment.slot_public["wrap_slot"]) == SLOT.RETIRED1
