"""Issue 9: tokens we can trust, cards we never damage. Enrolment checks on deliberately broken simulators.

Everything runs the real stacks: yubikit's PivSession over the simulated PIV applet, python-fido2's
Ctap2 over CTAPHID framing in front of the simulated authenticator, and the CLI as a process.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from fido2.webauthn import AuthenticatorData
from yubikit.core.smartcard import ApduError
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, SLOT, PivSession

from agent.errors import TokenError, TokenUnsupported
from agent.tokens import roots
from agent.tokens.attestation import Anchor, chain_anchor, fido_anchors, piv_anchors
from agent.tokens.base import Enrolment
from agent.tokens.discovery import open_token, simulator_anchors
from agent.tokens.fido2_token import Fido2Token, verify_assertion
from agent.tokens.piv_token import PivToken
from agent.tokens.sim import create_sim_token, open_sim_hid_device
from agent.tokens.sim.attestation import sim_attestation_ca_certificate
from agent.tokens.sim.piv_card import open_sim_piv_connection
from agent.tokens.sim.piv_state import PivStateFile, create_piv_sim, piv_state_path
from agent.tokens.sim.state import SIM_AAGUID
from tests.conftest import AutoPrompts, Cli

BROKEN_PIV = ("no-attestation", "no-touch-policy", "bare-slot-metadata")


# --- PIV --------------------------------------------------------------------------------------------
def piv_token(home: Path, name: str, **kwargs: object) -> PivToken:
    serial = PivStateFile(piv_state_path(home, name)).read().serial
    return PivToken(lambda: open_sim_piv_connection(home, name), f"sim:{name}", serial=serial, simulated=True, **kwargs)  # type: ignore[arg-type]


def piv_enrol(token: PivToken, prompts: AutoPrompts, **kwargs: bool) -> Enrolment:
    return token.enrol(
        rp_id="kms.test", user_id=b"op", user_name="alice", salt=os.urandom(32), prompts=prompts, **kwargs
    )


def assert_card_untouched(home: Path, name: str) -> None:
    """The default management key still authenticates (yubikit's own PivSession), and no key was written."""
    conn = open_sim_piv_connection(home, name)
    try:
        session = PivSession(conn)
        session.authenticate(DEFAULT_MANAGEMENT_KEY)  # raises if enrolment had replaced it
        assert session.get_management_key_metadata().default_value
    finally:
        conn.close()
    data = PivStateFile(piv_state_path(home, name)).read()
    assert data.mgm_default and data.mgm_key == DEFAULT_MANAGEMENT_KEY
    assert not [slot for slot in data.keys if 0x82 <= slot <= 0x95]
    assert data.pin_remaining == data.pin_total


def test_broken_piv_card_is_refused_before_anything_changes(home: Path, prompts: AutoPrompts) -> None:
    create_piv_sim(home, "bad", quirks=BROKEN_PIV)
    with pytest.raises(TokenUnsupported) as refused:
        piv_enrol(piv_token(home, "bad"), prompts)
    message = refused.value.message
    assert message.startswith("sim:bad cannot be enrolled: ")
    assert "without a key type" in message  # the slots that answer 9000 and name no key type
    assert "no attestation certificate" in message
    assert refused.value.exit_code == 3
    assert prompts.asked == []  # refused before the PIN was even asked for
    assert_card_untouched(home, "bad")


def test_a_card_without_touch_policies_fails_at_generate_and_keeps_its_management_key(
    home: Path, prompts: AutoPrompts
) -> None:
    # Its answers to the read-only checks look fine; only GENERATE with a touch policy says 6A81.
    create_piv_sim(home, "notouch", quirks=["no-touch-policy"])
    with pytest.raises(TokenUnsupported) as refused:
        piv_enrol(piv_token(home, "notouch"), prompts)
    assert "does not support touch policies (SW 6A81)" in refused.value.message
    assert "nothing was changed" in refused.value.message
    assert_card_untouched(home, "notouch")


def test_a_plain_piv_card_is_refused_by_name(home: Path, prompts: AutoPrompts) -> None:
    create_piv_sim(home, "plain", quirks=["not-yubikey"])
    with pytest.raises(TokenUnsupported) as refused:
        piv_enrol(piv_token(home, "plain"), prompts)
    assert "not a YubiKey PIV applet" in refused.value.message
    conn = open_sim_piv_connection(home, "plain")
    try:
        with pytest.raises(ApduError):  # yubikit itself cannot open it: no GET VERSION
            PivSession(conn)
    finally:
        conn.close()


def test_yubikit_parse_failures_become_token_errors(home: Path, prompts: AutoPrompts) -> None:
    """Bare slot metadata makes yubikit's own get_slot_metadata raise KeyError; we never leak it."""
    from agent.tokens.piv_token import map_piv_errors

    create_piv_sim(home, "bare", quirks=["bare-slot-metadata"])
    conn = open_sim_piv_connection(home, "bare")
    try:
        session = PivSession(conn)
        with pytest.raises(KeyError):
            session.get_slot_metadata(SLOT.RETIRED1)
        with pytest.raises(TokenUnsupported) as mapped, map_piv_errors("sim:bare"):
            session.get_slot_metadata(SLOT.RETIRED1)
        assert "cannot parse (KeyError)" in mapped.value.message
    finally:
        conn.close()


def test_piv_without_attestation_enrols_only_when_allowed(home: Path, prompts: AutoPrompts) -> None:
    create_piv_sim(home, "unattested", quirks=["no-attestation"])
    with pytest.raises(TokenUnsupported) as refused:
        piv_enrol(piv_token(home, "unattested"), prompts)
    assert refused.value.hint and "--allow-unattested" in refused.value.hint
    assert_card_untouched(home, "unattested")
    enrolment = piv_enrol(piv_token(home, "unattested"), prompts, allow_unattested=True)
    assert enrolment.slot_public["attestation_root"] == "none" and enrolment.slot_public["attestation"] == []


def test_a_good_card_records_model_and_root_and_then_changes_the_management_key(
    home: Path, prompts: AutoPrompts
) -> None:
    create_piv_sim(home, "good")
    slot = piv_enrol(piv_token(home, "good"), prompts).slot_public
    assert slot["attestation_root"] == "simulator" and slot["model"].startswith("YubiKey PIV 5.7.2")
    assert not PivStateFile(piv_state_path(home, "good")).read().mgm_default


def test_cli_refuses_a_broken_piv_card_with_exit_3_and_no_traceback(cli: Cli) -> None:
    created = cli.json("sim", "create", "bad", "--kind", "piv", *[a for q in BROKEN_PIV for a in ("--quirk", q)])
    assert created["quirks"] == sorted(BROKEN_PIV)
    proc = cli("init", "--operator", "alice=sim:bad", "--operator", "bob=sim:bob", "--quorum", "2")
    assert proc.returncode == 3, proc.stderr
    assert "cannot be enrolled" in proc.stderr and "without a key type" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_card_untouched(cli.home, "bad")


# --- FIDO2 ------------------------------------------------------------------------------------------
def fido2_token(home: Path, name: str, *quirks: str, anchors: tuple[Anchor, ...] | None = None) -> Fido2Token:
    create_sim_token(home, name, quirks=quirks)
    return Fido2Token(
        open_sim_hid_device(home, name),
        f"sim:{name}",
        simulated=True,
        anchors=simulator_anchors(home) if anchors is None else anchors,
    )


def fido2_enrol(token: Fido2Token, prompts: AutoPrompts, **kwargs: bool) -> Enrolment:
    with token:
        return token.enrol(
            rp_id="kms.test", user_id=b"u" * 16, user_name="alice", salt=b"s" * 32, prompts=prompts, **kwargs
        )


def test_fido2_enrolment_records_presence_verification_model_root_and_transport(
    home: Path, prompts: AutoPrompts
) -> None:
    enrolment = fido2_enrol(fido2_token(home, "alice"), prompts)
    slot = enrolment.slot_public
    assert (slot["up"], slot["uv"]) == (True, True)
    assert slot["model"] == str(uuid.UUID(bytes=SIM_AAGUID))
    assert slot["attestation_root"] == "simulator" and enrolment.simulated
    assert slot["transports"] == ["usb"]  # served over CTAPHID


def test_an_authenticator_that_cannot_test_presence_is_refused(home: Path, prompts: AutoPrompts) -> None:
    token = fido2_token(home, "noup", "no-user-presence")
    assert token.info.options["up"] is False
    with pytest.raises(TokenUnsupported) as refused:
        fido2_enrol(token, prompts)
    assert "cannot test user presence (getInfo option up=false)" in refused.value.message
    assert prompts.asked == [] and prompts.touched == []  # before any PIN or touch
    # Not even the operator's allow_unattested waives it: it is not about attestation.
    with pytest.raises(TokenUnsupported):
        fido2_enrol(fido2_token(home, "noup"), prompts, allow_unattested=True)


@pytest.mark.parametrize(("quirk", "kind"), [("no-attestation", '"none"'), ("self-attestation", "self attestation")])
def test_an_unattested_authenticator_enrols_only_when_allowed(
    home: Path, prompts: AutoPrompts, quirk: str, kind: str
) -> None:
    with pytest.raises(TokenUnsupported) as refused:
        fido2_enrol(fido2_token(home, "anon", quirk), prompts)
    assert kind in refused.value.message and "all-zero AAGUID" in refused.value.message
    assert refused.value.hint and "--allow-unattested" in refused.value.hint
    enrolment = fido2_enrol(fido2_token(home, "anon"), prompts, allow_unattested=True)
    slot = enrolment.slot_public
    assert slot["attestation_root"] == "none" and slot["model"] == str(uuid.UUID(int=0))
    # The same choice made when the token is opened, as the CLI's --allow-unattested will.
    with open_token("sim:anon", home, allow_unattested=True) as token:
        again = token.enrol(rp_id="kms.test", user_id=b"v" * 16, user_name="a", salt=b"t" * 32, prompts=prompts)
    assert again.slot_public["attestation_root"] == "none"


def test_the_simulator_ca_is_trusted_only_as_the_simulator(home: Path, prompts: AutoPrompts) -> None:
    """Without the home's test CA as an anchor, the simulator's chain leads to no trusted root."""
    with pytest.raises(TokenUnsupported) as refused:
        fido2_enrol(fido2_token(home, "alice", anchors=()), prompts)
    assert "chain to no trusted root" in refused.value.message


def test_an_assertion_without_user_presence_does_not_verify(home: Path, prompts: AutoPrompts) -> None:
    slot = fido2_enrol(fido2_token(home, "alice"), prompts).slot_public
    digest = bytes(range(32))
    token = fido2_token(home, "alice")
    try:
        # The no-PIN, no-touch pre-flight: a genuine signature over authData whose UP flag is clear.
        response = token.ctap.get_assertion(
            "kms.test", digest, [{"type": "public-key", "id": slot["cred_id"]}], options={"up": False}
        )
    finally:
        token.close()
    assert not response.auth_data.flags & AuthenticatorData.FLAG.UP
    with pytest.raises(TokenError) as refused:
        verify_assertion(slot, digest, bytes(response.auth_data), response.signature, "sim:alice")
    assert "no user presence" in refused.value.message


# --- roots and chains -------------------------------------------------------------------------------
def test_bundled_yubico_roots_are_pinned_self_signed_cas() -> None:
    names = {}
    for name in roots.FINGERPRINTS:
        cert = roots.load_root(name)
        cert.verify_directly_issued_by(cert)
        names[name] = cert.subject.rfc4514_string()
    assert names == {
        "yubico-u2f-457200631": "CN=Yubico U2F Root CA Serial 457200631",
        "yubico-fido-450203556": "CN=Yubico FIDO Root CA Serial 450203556",
        "yubico-piv-263751": "CN=Yubico PIV Root CA Serial 263751",
    }
    assert {a.name for a in fido_anchors()} == {"yubico-fido-450203556", "yubico-u2f-457200631"}
    assert {a.name for a in piv_anchors()} == {"yubico-piv-263751"}


def test_chains_end_only_at_their_own_anchor(home: Path) -> None:
    create_sim_token(home, "alice")
    from agent.tokens.sim.state import SimStateFile

    leaf = x509.load_der_x509_certificate(SimStateFile(home, "alice").read().attestation_cert)
    ca = sim_attestation_ca_certificate(home)
    assert chain_anchor([leaf], fido_anchors()) is None
    anchor = chain_anchor([leaf], (*fido_anchors(), Anchor("simulator", ca)))
    assert anchor is not None and anchor.simulated
    assert chain_anchor([leaf, ca], (Anchor("simulator", ca),)) is not None  # root included in the chain
    assert chain_anchor([ca, leaf], (Anchor("simulator", ca),)) is None  # wrong order: not a chain
    assert chain_anchor([], fido_anchors()) is None
