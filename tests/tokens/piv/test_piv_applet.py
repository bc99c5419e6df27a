"""yubikit's PivSession, unchanged, against the simulated YubiKey PIV applet (in process)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from smartcard.Exceptions import CardConnectionException
from yubikit.core import TRANSPORT, InvalidPinError, NotSupportedError
from yubikit.core.smartcard import SW, ApduError
from yubikit.piv import (
    DEFAULT_MANAGEMENT_KEY,
    KEY_TYPE,
    MANAGEMENT_KEY_TYPE,
    OBJECT_ID,
    PIN_POLICY,
    SLOT,
    TOUCH_POLICY,
    PivSession,
)

from agent.tokens.sim.piv_card import PivCard
from agent.tokens.sim.piv_state import sim_attestation_root
from agent.tokens.sim.touch import TouchResult
from tests.tokens.piv.conftest import SimCard

Session = Callable[..., PivSession]
CURVES = {KEY_TYPE.ECCP256: (ec.SECP256R1(), hashes.SHA256()), KEY_TYPE.ECCP384: (ec.SECP384R1(), hashes.SHA384())}


def ready(session: PivSession) -> PivSession:
    session.authenticate(DEFAULT_MANAGEMENT_KEY)
    return session


def test_session_basics(session_for: Session, card: SimCard) -> None:
    session = session_for()
    assert session.version == (5, 7, 2)
    assert session.get_serial() == card.serial
    assert session.management_key_type == MANAGEMENT_KEY_TYPE.AES192  # 5.7 factory default
    pin, puk = session.get_pin_metadata(), session.get_puk_metadata()
    assert (pin.default_value, pin.total_attempts, pin.attempts_remaining) == (True, 3, 3)
    assert (puk.default_value, puk.attempts_remaining) == (True, 3)
    mgm = session.get_management_key_metadata()
    assert mgm.default_value and mgm.touch_policy == TOUCH_POLICY.NEVER
    with pytest.raises(NotSupportedError):
        session.get_bio_metadata()
    with pytest.raises(ApduError) as empty:
        session.get_slot_metadata(SLOT.RETIRED1)
    assert empty.value.sw == SW.REFERENCE_DATA_NOT_FOUND


def test_management_key_aes_wrong_key_and_tdes(session_for: Session, new_card: Callable[..., SimCard]) -> None:
    session = session_for()
    with pytest.raises(ApduError) as wrong:
        session.authenticate(bytes(24))
    assert wrong.value.sw == SW.SECURITY_CONDITION_NOT_SATISFIED
    session.authenticate(DEFAULT_MANAGEMENT_KEY)

    tdes = new_card("old", management_key_type=0x03)
    conn = tdes.connect()
    try:
        old = PivSession(conn)
        assert old.management_key_type == MANAGEMENT_KEY_TYPE.TDES
        old.authenticate(DEFAULT_MANAGEMENT_KEY)
        old.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    finally:
        conn.close()


def test_generate_needs_the_management_key(session_for: Session) -> None:
    session = session_for()
    with pytest.raises(ApduError) as denied:
        session.generate_key(SLOT.RETIRED1, KEY_TYPE.ECCP256)
    assert denied.value.sw == SW.SECURITY_CONDITION_NOT_SATISFIED
    with pytest.raises(ApduError):
        ready(session).generate_key(SLOT.RETIRED1, KEY_TYPE.RSA2048)  # RSA is not simulated


@pytest.mark.parametrize("key_type", [KEY_TYPE.ECCP256, KEY_TYPE.ECCP384])
def test_ecdh_sign_attest_metadata(session_for: Session, card: SimCard, key_type: KEY_TYPE) -> None:
    session = ready(session_for())
    public = session.generate_key(SLOT.RETIRED2, key_type, PIN_POLICY.ONCE, TOUCH_POLICY.ALWAYS)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    curve, hash_alg = CURVES[key_type]
    session.verify_pin("123456")

    peer = ec.generate_private_key(curve)
    assert session.calculate_secret(SLOT.RETIRED2, peer.public_key()) == peer.exchange(ec.ECDH(), public)
    signature = session.sign(SLOT.RETIRED2, key_type, b"withdraw 1 BTC", hash_alg)
    public.verify(signature, b"withdraw 1 BTC", ec.ECDSA(hash_alg))
    assert card.touches.calls == 2  # touch policy ALWAYS: one touch per use

    meta = session.get_slot_metadata(SLOT.RETIRED2)
    assert (meta.key_type, meta.pin_policy, meta.touch_policy, meta.generated) == (
        key_type,
        PIN_POLICY.ONCE,
        TOUCH_POLICY.ALWAYS,
        True,
    )
    assert meta.public_key == public

    leaf = session.attest_key(SLOT.RETIRED2)
    f9 = session.get_certificate(SLOT.ATTESTATION)
    leaf.verify_directly_issued_by(f9)
    f9.verify_directly_issued_by(sim_attestation_root()[1])
    assert leaf.public_key() == public

    def ext(dotted: str) -> bytes:
        value = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(dotted)).value
        assert isinstance(value, x509.UnrecognizedExtension)
        return value.value

    assert ext("1.3.6.1.4.1.41482.3.3") == bytes([5, 7, 2])
    serial = ext("1.3.6.1.4.1.41482.3.7")
    assert serial[0] == 0x02 and int.from_bytes(serial[2:], "big") == card.serial
    assert ext("1.3.6.1.4.1.41482.3.8") == bytes([PIN_POLICY.ONCE, TOUCH_POLICY.ALWAYS])


def test_pin_policy_once_lasts_for_the_session(session_for: Session) -> None:
    session = ready(session_for())
    session.generate_key(SLOT.RETIRED1, KEY_TYPE.ECCP256, PIN_POLICY.ONCE, TOUCH_POLICY.NEVER)
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ApduError) as before:
        session.calculate_secret(SLOT.RETIRED1, peer)
    assert before.value.sw == SW.SECURITY_CONDITION_NOT_SATISFIED
    session.verify_pin("123456")
    session.get_serial()
    session.calculate_secret(SLOT.RETIRED1, peer)
    session.calculate_secret(SLOT.RETIRED1, peer)
    again = session_for()  # a new SELECT forgets the PIN
    with pytest.raises(ApduError):
        again.calculate_secret(SLOT.RETIRED1, peer)


def test_pin_policy_always_needs_verify_right_before(session_for: Session) -> None:
    session = ready(session_for())
    # 9C's default PIN policy is ALWAYS, as on a YubiKey.
    session.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256)
    assert session.get_slot_metadata(SLOT.SIGNATURE).pin_policy == PIN_POLICY.ALWAYS
    session.verify_pin("123456")
    session.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"one", hashes.SHA256())
    with pytest.raises(ApduError) as second:
        session.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"two", hashes.SHA256())
    assert second.value.sw == SW.SECURITY_CONDITION_NOT_SATISFIED
    session.verify_pin("123456")
    session.get_serial()  # anything in between spends the verification
    with pytest.raises(ApduError):
        session.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"three", hashes.SHA256())


def test_wrong_pins_block_and_the_puk_unblocks(session_for: Session) -> None:
    session = session_for()
    for left in (2, 1, 0):
        with pytest.raises(InvalidPinError) as wrong:
            session.verify_pin("000000")
        assert wrong.value.attempts_remaining == left
    with pytest.raises(InvalidPinError) as blocked:  # SW 6983: even the right PIN is refused now
        session.verify_pin("123456")
    assert blocked.value.attempts_remaining == 0
    assert session_for().get_pin_attempts() == 0  # persisted, not just in this session
    with pytest.raises(InvalidPinError) as bad_puk:
        session.unblock_pin("87654321", "654321")
    assert bad_puk.value.attempts_remaining == 2
    session.unblock_pin("12345678", "654321")
    session.verify_pin("654321")
    assert session.get_pin_metadata().default_value is False
    session.change_pin("654321", "1234567")
    session.verify_pin("1234567")


def test_reset_only_after_pin_and_puk_are_blocked(session_for: Session) -> None:
    session = ready(session_for())
    session.generate_key(SLOT.RETIRED1, KEY_TYPE.ECCP256)
    with pytest.raises(ApduError) as early:
        session.protocol.send_apdu(0, 0xFB, 0, 0)
    assert early.value.sw == SW.CONDITIONS_NOT_SATISFIED
    with pytest.raises(InvalidPinError):
        session.verify_pin("000000")
    session.reset()  # yubikit blocks PIN and PUK itself, then sends RESET
    fresh = session_for()
    with pytest.raises(ApduError):
        fresh.get_slot_metadata(SLOT.RETIRED1)
    assert fresh.get_pin_metadata().attempts_remaining == 3
    fresh.verify_pin("123456")
    fresh.get_certificate(SLOT.ATTESTATION)  # the attestation key survives a reset, as on a YubiKey


def test_usb_uses_extended_apdus(card: SimCard) -> None:
    conn = card.connect(TRANSPORT.USB)
    try:
        session = ready(PivSession(conn))
        session.verify_pin("123456")
        blob = os.urandom(3000)
        session.put_object(OBJECT_ID.RETIRED3, blob)
        assert session.get_object(OBJECT_ID.RETIRED3) == blob
    finally:
        conn.close()
    assert bytes.fromhex("00200080000008313233343536ffff") in conn.sent
    assert not any(apdu[0] & 0x10 for apdu in conn.sent)  # no chaining needed
    assert any(len(apdu) > 3000 for apdu in conn.sent)


def test_nfc_uses_command_chaining_and_get_response(card: SimCard) -> None:
    conn = card.connect(TRANSPORT.NFC)
    try:
        session = ready(PivSession(conn))
        blob = os.urandom(3000)
        session.put_object(OBJECT_ID.RETIRED3, blob)
        assert session.get_object(OBJECT_ID.RETIRED3) == blob
    finally:
        conn.close()
    assert max(len(apdu) for apdu in conn.sent) <= 5 + 255 + 1
    assert sum(1 for apdu in conn.sent if apdu[0] == 0x10 and apdu[1] == 0xDB) == 11  # 3000+ bytes / 255
    assert any(sw >> 8 == 0x61 for sw in conn.sws)
    assert any(apdu[1] == 0xC0 for apdu in conn.sent)


def test_get_response_on_extended_apdus(card: SimCard) -> None:
    conn = card.connect(TRANSPORT.USB, max_response=200)
    try:
        session = ready(PivSession(conn))
        session.generate_key(SLOT.RETIRED1, KEY_TYPE.ECCP384)
        cert = session.attest_key(SLOT.RETIRED1)  # ~500 bytes: three GET RESPONSEs
    finally:
        conn.close()
    assert cert.public_key() is not None
    assert [apdu[1] for apdu in conn.sent].count(0xC0) >= 2


def test_touch_deny_timeout_and_cache(card: SimCard, session_for: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    session = ready(session_for())
    session.generate_key(SLOT.RETIRED1, KEY_TYPE.ECCP256, PIN_POLICY.NEVER, TOUCH_POLICY.ALWAYS)
    session.generate_key(SLOT.RETIRED2, KEY_TYPE.ECCP256, PIN_POLICY.NEVER, TOUCH_POLICY.CACHED)
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    card.touches.script = [TouchResult.DENIED, TouchResult.TIMEOUT]
    for _ in range(2):
        with pytest.raises(ApduError) as refused:
            session.calculate_secret(SLOT.RETIRED1, peer)
        assert refused.value.sw == SW.SECURITY_CONDITION_NOT_SATISFIED
    calls = card.touches.calls
    session.calculate_secret(SLOT.RETIRED2, peer)
    session.calculate_secret(SLOT.RETIRED2, peer)  # cached for 15 s
    assert card.touches.calls == calls + 1

    # The default provider follows KMS_AGENT_SIM_TOUCH, shared with the FIDO2 simulator.
    from agent.tokens.sim.piv_card import open_sim_piv_connection

    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "timeout")
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH_TIMEOUT", "0.05")
    conn = open_sim_piv_connection(card.home, card.name)
    try:
        with pytest.raises(ApduError):
            PivSession(conn).calculate_secret(SLOT.RETIRED1, peer)
    finally:
        conn.close()


def test_card_removed_while_waiting_for_touch(card: SimCard, session_for: Session) -> None:
    session = ready(session_for())
    session.generate_key(SLOT.RETIRED1, KEY_TYPE.ECCP256, PIN_POLICY.NEVER, TOUCH_POLICY.ALWAYS)
    card.touches.script = [TouchResult.REMOVED]
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(CardConnectionException):
        session.calculate_secret(SLOT.RETIRED1, peer)
    with pytest.raises(CardConnectionException):  # the connection stays dead, like a pulled card's
        session.get_serial()
    assert session_for().get_serial() == card.serial  # plugged back in: a new connection works


def test_pin_protected_management_key(session_for: Session) -> None:
    from ykman.piv import get_pivman_data, get_pivman_protected_data, pivman_set_mgm_key

    session = ready(session_for())
    session.verify_pin("123456")
    key = os.urandom(24)
    pivman_set_mgm_key(session, key, MANAGEMENT_KEY_TYPE.AES192, store_on_device=True)
    other = session_for()
    assert get_pivman_data(other).has_stored_key
    assert not other.get_management_key_metadata().default_value
    with pytest.raises(ApduError) as locked:
        get_pivman_protected_data(other)
    assert locked.value.sw == SW.SECURITY_CONDITION_NOT_SATISFIED
    other.verify_pin("123456")
    assert get_pivman_protected_data(other).key == key
    other.authenticate(key)
    with pytest.raises(ApduError):
        session_for().authenticate(DEFAULT_MANAGEMENT_KEY)


def test_import_move_delete(session_for: Session) -> None:
    session = ready(session_for())
    private = ec.generate_private_key(ec.SECP256R1())
    session.put_key(SLOT.RETIRED5, private, PIN_POLICY.NEVER, TOUCH_POLICY.NEVER)
    meta = session.get_slot_metadata(SLOT.RETIRED5)
    assert not meta.generated and meta.public_key == private.public_key()
    with pytest.raises(ApduError):
        session.attest_key(SLOT.RETIRED5)  # only on-card keys are attested
    session.move_key(SLOT.RETIRED5, SLOT.RETIRED6)
    assert session.get_slot_metadata(SLOT.RETIRED6).public_key == private.public_key()
    session.delete_key(SLOT.RETIRED6)
    with pytest.raises(ApduError):
        session.get_slot_metadata(SLOT.RETIRED6)


def test_ykman_piv_info_in_process(session_for: Session) -> None:
    from ykman.piv import get_piv_info

    session = ready(session_for())
    session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    info = get_piv_info(session)
    assert info[0]["PIV version"] == (5, 7, 2)


def test_malformed_and_unknown_apdus(card: SimCard) -> None:
    conn = card.connect()
    try:
        assert conn.send_and_receive(b"\x00\xfd\x00\x00")[1] == SW.INVALID_INSTRUCTION  # nothing selected
        assert conn.send_and_receive(bytes.fromhex("00a4040005a000000308"))[1] == SW.OK
        assert conn.send_and_receive(b"\x00\xfd\x00\x00") == (bytes([5, 7, 2]), SW.OK)
        assert conn.send_and_receive(b"\x00\x42\x00\x00")[1] == SW.INVALID_INSTRUCTION
        assert conn.send_and_receive(b"\x84\xfd\x00\x00")[1] == SW.CLASS_NOT_SUPPORTED
        assert conn.send_and_receive(b"\x00\x20\x00\x80\x08\x31")[1] == SW.WRONG_LENGTH  # Lc says 8, 1 sent
        assert conn.send_and_receive(b"\x00\xa4")[1] == SW.WRONG_LENGTH
        assert conn.send_and_receive(bytes.fromhex("00a4040003010203"))[1] == SW.FILE_NOT_FOUND
    finally:
        conn.close()


def test_state_file_is_private_and_shared_between_connections(card: SimCard) -> None:
    mode = stat.S_IMODE(card.state.path.stat().st_mode)
    assert mode == 0o600
    before = card.state.path.stat().st_mtime_ns
    conn = card.connect()
    try:
        PivSession(conn).get_serial()
    finally:
        conn.close()
    assert card.state.path.stat().st_mtime_ns == before  # read-only commands write nothing

    # Three "processes" on one card: every wrong PIN counts exactly once (fcntl lock per APDU).
    errors: list[int] = []

    def wrong_pin() -> None:
        card_conn = card.connect()
        try:
            PivSession(card_conn).verify_pin("999999")
        except InvalidPinError as exc:
            errors.append(exc.attempts_remaining)
        finally:
            card_conn.close()

    threads = [threading.Thread(target=wrong_pin) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(errors) == [0, 1, 2]
    assert card.state.read().pin_remaining == 0


def test_card_object_power_cycle_forgets_the_pin(card: SimCard) -> None:
    piv = PivCard(card.state, touch=card.touches)
    assert piv.transmit(bytes.fromhex("00a4040005a000000308"))[-2:] == b"\x90\x00"
    assert piv.transmit(bytes.fromhex("002000800831323334353 6ffff".replace(" ", "")))[-2:] == b"\x90\x00"
    assert piv.transmit(bytes.fromhex("0020008000"))[-2:] == b"\x90\x00"  # verified
    piv.reset()
    piv.transmit(bytes.fromhex("00a4040005a000000308"))
    assert piv.transmit(bytes.fromhex("0020008000"))[-2:] == b"\x63\xc3"  # not verified, 3 tries
