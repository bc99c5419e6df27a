"""The FIDO2 simulator's ISO 7816 face (NFCCTAP), in process: CtapPcscDevice over a fake pyscard connection."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from fido2.pcsc import CtapPcscDevice

from agent.errors import TokenRemoved, TouchDenied
from agent.tokens.discovery import simulator_anchors
from agent.tokens.fido2_token import Fido2Token
from agent.tokens.sim import FixedTouch, TouchResult, create_sim_token
from agent.tokens.sim.pcsc_server import FidoCard
from agent.tokens.sim.vpcd import CardRemoved
from tests.pcsc.conftest import Prompts


class FakeReaderConnection:
    """Just what CtapPcscDevice uses of a pyscard CardConnection; keeps the APDU log."""

    def __init__(self, card: FidoCard) -> None:
        self.card = card
        self.sent: list[bytes] = []
        self.sws: list[int] = []

    def connect(self) -> None:
        self.card.power_on()

    def disconnect(self) -> None:
        self.card.power_off()

    def getATR(self) -> list[int]:  # pyscard's name
        return list(self.card.atr)

    def transmit(self, apdu: list[int], protocol: int | None = None) -> tuple[list[int], int, int]:
        self.sent.append(bytes(apdu))
        try:
            response = self.card.transmit(bytes(apdu))
        except CardRemoved as exc:
            from smartcard.Exceptions import CardConnectionException

            raise CardConnectionException(str(exc)) from exc
        self.sws.append(int.from_bytes(response[-2:], "big"))
        return list(response[:-2]), response[-2], response[-1]


def open_card(tmp_path: Path, touch: FixedTouch) -> tuple[FakeReaderConnection, Fido2Token]:
    home = tmp_path / "kms"
    create_sim_token(home, "nfc")
    conn = FakeReaderConnection(FidoCard(home, "nfc", touch=touch))
    device = CtapPcscDevice(conn, "fake reader")  # type: ignore[arg-type]
    return conn, Fido2Token(device, "fido2:nfc", anchors=simulator_anchors(home))


def test_enrol_unwrap_with_chaining_get_response_and_keepalive(tmp_path: Path) -> None:
    touch = FixedTouch(TouchResult.GRANTED, delay=0.3)
    conn, token = open_card(tmp_path, touch)
    prompts = Prompts()
    enrolment = token.enrol(
        rp_id="kms.test", user_id=os.urandom(64), user_name="n" * 64, salt=os.urandom(32), prompts=prompts
    )
    unwrapped = token.unwrap(enrolment.slot_public, digest=bytes(32), prompts=prompts)
    assert unwrapped.ikm == enrolment.ikm
    assert conn.sent[0].startswith(bytes.fromhex("00a4040008a0000006472f0001"))
    assert any(apdu[0] == 0x90 for apdu in conn.sent), "long requests go out chained (CLA 0x90)"
    assert any(sw >> 8 == 0x61 for sw in conn.sws), "long answers come back with 61xx"
    assert any(apdu[1] == 0xC0 for apdu in conn.sent)
    assert 0x9100 in conn.sws and any(apdu[1] == 0x11 for apdu in conn.sent), "keep-alives while touching"
    assert prompts.touched  # UPNEEDED reached the host's on_keepalive
    assert touch.calls == 3  # makeCredential, the enrolment assertion, the unwrap


def test_cancel(tmp_path: Path) -> None:
    touch = FixedTouch(TouchResult.GRANTED)
    conn, token = open_card(tmp_path, touch)
    enrolment = token.enrol(rp_id="kms.test", user_id=b"u", user_name="u", salt=bytes(32), prompts=Prompts())
    touch.delay = 30.0
    threading.Timer(0.3, token.cancel.set).start()
    with pytest.raises(TouchDenied):
        token.unwrap(enrolment.slot_public, digest=bytes(32), prompts=Prompts())
    assert any(apdu[1] == 0x11 and apdu[2] == 0x11 for apdu in conn.sent), "cancel is NFCCTAP_GETRESPONSE P1=11"


def test_removal_is_token_removed(tmp_path: Path) -> None:
    touch = FixedTouch(TouchResult.GRANTED)
    _, token = open_card(tmp_path, touch)
    enrolment = token.enrol(rp_id="kms.test", user_id=b"u", user_name="u", salt=bytes(32), prompts=Prompts())
    touch.result = TouchResult.REMOVED
    with pytest.raises(TokenRemoved):
        token.unwrap(enrolment.slot_public, digest=bytes(32), prompts=Prompts())


def test_not_a_piv_card_and_unknown_commands(tmp_path: Path) -> None:
    home = tmp_path / "kms"
    create_sim_token(home, "nfc")
    card = FidoCard(home, "nfc")
    assert card.transmit(bytes.fromhex("00a4040005a000000308"))[-2:] == b"\x6a\x82"  # PIV discovery skips it
    assert card.transmit(bytes.fromhex("80100000010400"))[-2:] == b"\x6d\x00"  # nothing selected yet
    assert card.transmit(bytes.fromhex("00a4040008a0000006472f0001")) == b"FIDO_2_0\x90\x00"
    assert card.transmit(bytes.fromhex("8011000000"))[-2:] == b"\x69\x85"  # no request pending
    assert card.transmit(bytes.fromhex("84100000010400"))[-2:] == b"\x6e\x00"
