"""``serve()`` and the FIDO2 simulator as a PC/SC card (NFCCTAP), reached by python-fido2's CtapPcscDevice."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import TokenNotFound, TouchDenied, UsageError
from agent.tokens.discovery import simulator_anchors
from agent.tokens.fido2_token import Fido2Token
from agent.tokens.piv_token import list_pcsc_piv_cards
from agent.tokens.sim import FixedTouch, TouchResult, create_sim_token
from agent.tokens.sim.pcsc_server import FidoCard, serve
from agent.tokens.sim.piv_state import create_piv_sim
from tests.pcsc.conftest import TIMINGS, Pcscd, Prompts, _unavailable, _wait, reader_empty

pytestmark = [pytest.mark.pcsc, pytest.mark.xdist_group("pcsc")]


def _fido_devices(reader: str) -> list[object]:
    from fido2.pcsc import CtapPcscDevice

    return [d for d in CtapPcscDevice.list_devices() if reader in repr(d)]


@contextlib.contextmanager
def serving(home: Path, env: Pcscd, **kwargs: list[str]) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(
        target=serve, args=(home,), kwargs={"stop": stop, "port": env.port, **kwargs}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        for reader in (env.reader, env.reader2):
            if reader:
                _wait(lambda r=reader: reader_empty(r), 10)  # type: ignore[misc]


@contextlib.contextmanager
def fido_card(home: Path, env: Pcscd, touch: FixedTouch) -> Iterator[str]:
    from agent.tokens.sim import vpcd

    assert env.reader2 is not None
    create_sim_token(home, "fido")
    card = FidoCard(home, "fido", touch=touch)
    stop, connected = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=vpcd.serve_card, args=(card, stop), kwargs={"port": env.port + 1, "connected": connected}, daemon=True
    )
    thread.start()
    try:
        assert connected.wait(10)
        plugged = time.monotonic()
        assert _wait(lambda: bool(_fido_devices(env.reader2 or "")), 10), "CtapPcscDevice never saw the card"
        TIMINGS["card_insert"].append(time.monotonic() - plugged)
        yield env.reader2
    finally:
        stop.set()
        thread.join(5)
        _wait(lambda: reader_empty(env.reader2 or ""), 10)


def test_serve_puts_piv_and_fido2_cards_in_the_vpcd_slots(
    pcscd: Pcscd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if pcscd.reader2 is None:
        _unavailable("this pcscd's vpcd reader has a single slot")
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "auto")
    home = tmp_path / "kms"
    serial = create_piv_sim(home, "piv").read().serial
    create_sim_token(home, "fido")
    with serving(home, pcscd, piv=["piv"], fido2=["fido"]):
        assert _wait(lambda: any(c[1] == serial for c in list_pcsc_piv_cards()), 10)
        assert _wait(lambda: bool(_fido_devices(pcscd.reader2 or "")), 10)
        assert [c[0] for c in list_pcsc_piv_cards()] == [pcscd.reader]  # the FIDO2 card is no PIV card
        device = _fido_devices(pcscd.reader2)[0]
        token = Fido2Token(device, "fido2:pcsc", anchors=simulator_anchors(home))  # type: ignore[arg-type]
        try:
            prompts = Prompts()
            enrolment = token.enrol(
                rp_id="kms.test", user_id=b"op", user_name="bob", salt=bytes(range(32)), prompts=prompts
            )
            # Served over PC/SC the simulator says NFC, and its chain to the test CA marks it simulated.
            assert enrolment.slot_public["transports"] == ["nfc"] and token.info.transports == ["nfc"]
            assert enrolment.simulated and enrolment.slot_public["attestation_root"] == "simulator"
            assert token.holds(enrolment.slot_public)
            assert token.unwrap(enrolment.slot_public, digest=bytes(32), prompts=prompts).ikm == enrolment.ikm
        finally:
            token.close()


def test_serve_refuses_bad_requests(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(UsageError):
        serve(tmp_path, stop=stop)
    with pytest.raises(UsageError):
        serve(tmp_path, piv=["a", "b"], fido2=["c"], stop=stop)
    with pytest.raises(TokenNotFound):
        serve(tmp_path, piv=["missing"], stop=stop, transport="usb")


def test_fido2_keepalive_and_cancel_over_nfcctap(pcscd: Pcscd, tmp_path: Path) -> None:
    if pcscd.reader2 is None:
        _unavailable("this pcscd's vpcd reader has a single slot")
    touch = FixedTouch(TouchResult.GRANTED, delay=0.4)
    home = tmp_path / "kms"
    with fido_card(home, pcscd, touch) as reader:
        device = _fido_devices(reader)[0]
        token = Fido2Token(device, "fido2:pcsc", anchors=simulator_anchors(home))  # type: ignore[arg-type]
        try:
            prompts = Prompts()
            enrolment = token.enrol(rp_id="kms.test", user_id=b"op", user_name="carol", salt=bytes(32), prompts=prompts)
            # The touch took 0.4 s: the card answered 9100 UPNEEDED meanwhile, and the host prompted.
            assert prompts.touched and set(prompts.touched) == {"fido2:pcsc"}
            assert token.unwrap(enrolment.slot_public, digest=bytes(32), prompts=Prompts()).ikm == enrolment.ikm

            touch.delay = 30.0  # nobody touches; the operator cancels
            threading.Timer(0.4, token.cancel.set).start()
            started = time.monotonic()
            with pytest.raises(TouchDenied):
                token.unwrap(enrolment.slot_public, digest=bytes(32), prompts=Prompts())
            assert time.monotonic() - started < 5
        finally:
            token.close()


def test_an_unplugged_fido2_sim_stays_out_of_the_reader(pcscd: Pcscd, tmp_path: Path) -> None:
    from agent.tokens.sim import set_plugged, vpcd

    if pcscd.reader2 is None:
        _unavailable("this pcscd's vpcd reader has a single slot")
    home = tmp_path / "kms"
    create_sim_token(home, "fido")
    set_plugged(home, "fido", False)
    stop, connected = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=vpcd.serve_card,
        args=(FidoCard(home, "fido"), stop),
        kwargs={"port": pcscd.port + 1, "connected": connected},
        daemon=True,
    )
    thread.start()
    try:
        assert not connected.wait(1.0)
        assert reader_empty(pcscd.reader2)
        set_plugged(home, "fido", True)
        assert connected.wait(5)
        assert _wait(lambda: bool(_fido_devices(pcscd.reader2 or "")), 10)
    finally:
        stop.set()
        thread.join(5)
        _wait(lambda: reader_empty(pcscd.reader2 or ""), 10)
