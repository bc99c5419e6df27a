"""PivToken through pyscard + pcscd + vpcd against the simulated card: the production path end to end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from agent.errors import PinBlocked, PinInvalid, TokenRemoved, TouchTimeout, WrongToken
from agent.tokens.piv_token import PivToken, find_piv_token, list_pcsc_piv_cards, open_piv_token
from agent.tokens.sim.touch import TouchResult
from tests.pcsc.conftest import Pcscd, Prompts, ServedCard, serve_sim_card

pytestmark = [pytest.mark.pcsc, pytest.mark.xdist_group("pcsc")]

DIGEST = bytes(range(32))


def enrol(token: PivToken, prompts: Prompts) -> dict[str, object]:
    enrolment = token.enrol(rp_id="kms.test", user_id=b"op", user_name="alice", salt=bytes(32), prompts=prompts)
    slot = enrolment.slot_public
    slot["_ikm"] = bytes(enrolment.ikm)
    return slot


def test_discovered_by_select_not_by_name(served_card: ServedCard) -> None:
    cards = list_pcsc_piv_cards()
    assert (served_card.reader, served_card.serial, True) in cards


def test_enrol_unwrap_and_approve_through_pcscd(served_card: ServedCard, pin_prompts: Prompts, tmp_path: Path) -> None:
    token = open_piv_token(served_card.spec, tmp_path)  # no simulated cards in this home: PC/SC only
    assert token.label == served_card.spec and token.simulated  # attested by the simulator root
    enrolment = token.enrol(rp_id="kms.test", user_id=b"op", user_name="alice", salt=bytes(32), prompts=pin_prompts)
    slot = enrolment.slot_public
    assert enrolment.kind == "piv" and enrolment.simulated
    assert slot["serial"] == served_card.serial
    assert slot["kdf_salt"] == slot["epk"] + slot["wrap_pub"]

    found = find_piv_token(slot, tmp_path)
    assert found is not None and found.serial == served_card.serial
    prompts = Prompts()
    unwrapped = found.unwrap(slot, digest=DIGEST, prompts=prompts)
    assert unwrapped.ikm == enrolment.ikm
    approval = unwrapped.approval
    assert (approval.kind, approval.auth_data, approval.sign_count) == ("piv", b"", 0)
    assert approval.user_present and approval.user_verified

    # The approval verifies under the *attested* signing key, with plain `cryptography`.
    leaf = x509.load_der_x509_certificate(slot["attestation"][1])
    f9 = x509.load_der_x509_certificate(slot["attestation"][2])
    leaf.verify_directly_issued_by(f9)
    signing_key = leaf.public_key()
    assert isinstance(signing_key, ec.EllipticCurvePublicKey)
    signing_key.verify(approval.signature, DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert prompts.asked == [3]


def test_missed_touch_is_touch_timeout(
    served_card: ServedCard, pin_prompts: Prompts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = open_piv_token(served_card.spec, tmp_path)
    slot = enrol(token, pin_prompts)
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "timeout")
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH_TIMEOUT", "1.2")
    prompts = Prompts()
    started = time.monotonic()
    with pytest.raises(TouchTimeout):
        token.unwrap(slot, digest=DIGEST, prompts=prompts)
    assert time.monotonic() - started >= 1.2
    assert prompts.touched == [token.label]  # announced ~0.5 s into the wait: PIV has no keep-alive
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "deny")
    with pytest.raises(TouchTimeout):
        token.unwrap(slot, digest=DIGEST, prompts=Prompts())


def test_wrong_pin_counts_down_then_blocks(served_card: ServedCard, pin_prompts: Prompts, tmp_path: Path) -> None:
    token = open_piv_token(served_card.spec, tmp_path)
    slot = enrol(token, pin_prompts)
    wrong = Prompts(pin_value="000000")
    with pytest.raises(PinInvalid) as first:
        token.unwrap(slot, digest=DIGEST, prompts=wrong)
    assert first.value.attempts_remaining == 2
    with pytest.raises(PinInvalid) as second:
        token.unwrap(slot, digest=DIGEST, prompts=wrong)
    assert second.value.attempts_remaining == 1
    assert "1 try left" in second.value.message
    with pytest.raises(PinBlocked):
        token.unwrap(slot, digest=DIGEST, prompts=wrong)
    with pytest.raises(PinBlocked):  # even the right PIN: the card says 6983 before asking
        token.unwrap(slot, digest=DIGEST, prompts=Prompts())
    assert wrong.asked == [3, 2, 1]


def test_wrong_card_in_the_reader(pcscd: Pcscd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "auto")
    with serve_sim_card(pcscd, tmp_path / "a", "alice") as alice:
        token = open_piv_token(alice.spec, tmp_path)
        slot = enrol(token, Prompts())
    with serve_sim_card(pcscd, tmp_path / "b", "bob") as bob:
        assert bob.serial != alice.serial
        assert find_piv_token(slot, tmp_path) is None
        with pytest.raises(WrongToken):  # same reader, other card: the serial check catches it
            token.unwrap(slot, digest=DIGEST, prompts=Prompts())
        other = open_piv_token(bob.spec, tmp_path)
        assert not other.holds(slot)
        with pytest.raises(WrongToken):
            other.unwrap(slot, digest=DIGEST, prompts=Prompts())


def test_card_removed_mid_operation(served_card: ServedCard, pin_prompts: Prompts, tmp_path: Path) -> None:
    token = open_piv_token(served_card.spec, tmp_path)
    slot = enrol(token, pin_prompts)
    served_card.touch_override.append(lambda: TouchResult.REMOVED)  # pulled out while waiting for the touch
    with pytest.raises(TokenRemoved):
        token.unwrap(slot, digest=DIGEST, prompts=Prompts())
