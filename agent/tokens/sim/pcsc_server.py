"""Serve simulated tokens to the real PC/SC stack: ``kms-agent sim pcsc [--piv NAME]... [--fido2 NAME]...``.

Each card occupies one slot of pcscd's vsmartcard ``vpcd`` reader: slot ``00 00`` listens on
``port`` (35963 by default), slot ``00 01`` on ``port + 1``, and so on. Debian's ``libifdvpcd`` is
built with two slots, so at most two cards are served at once (PIV cards first, then FIDO2).

With Debian's stock ``/etc/reader.conf.d/vpcd`` the readers are called ``Virtual PCD 00 00`` and
``Virtual PCD 00 01``. ``ykman`` only treats a reader as a USB YubiKey when its name contains
"Yubico YubiKey"; for any other name it assumes NFC and insists on an NFC-style ATR. So the card's
ATR follows the reader: ``transport="auto"`` (the default) answers with a USB YubiKey ATR when a
PC/SC reader named like :data:`YUBIKEY_READER_HINT` exists and with an NFC ATR otherwise (see
docs/piv.md for a reader.conf that names the vpcd reader "Yubico YubiKey ...").

The FIDO2 card speaks ISO 7816 NFCCTAP (FIDO AID, INS 0x10 NFCCTAP_MSG with 0x11 GETRESPONSE
keep-alives and 61xx/GET RESPONSE chaining) in front of the simulated authenticator, so
python-fido2's :class:`fido2.pcsc.CtapPcscDevice` reaches it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from agent.errors import UsageError
from agent.tokens.sim import vpcd
from agent.tokens.sim.authenticator import SimAuthenticator
from agent.tokens.sim.ctap_status import TokenPulled
from agent.tokens.sim.piv_card import ATR_NFC, ATR_USB, PivCard
from agent.tokens.sim.piv_state import PivStateFile, piv_state_path
from agent.tokens.sim.state import SimStateFile
from agent.tokens.sim.touch import TouchProvider
from agent.tokens.sim.vpcd import ApduCard, CardRemoved, StatusWord

logger = logging.getLogger(__name__)

AID_FIDO = bytes.fromhex("a0000006472f0001")
INS_SELECT = 0xA4
INS_NFCCTAP_MSG = 0x10
INS_NFCCTAP_GETRESPONSE = 0x11
P1_GETRESPONSE_SUPPORTED = 0x80
P1_CANCEL = 0x11
SW_UPDATE = 0x9100  # "still working": data is one CTAP STATUS byte (PROCESSING / UPNEEDED)
#: How long an NFCCTAP request may block before the card answers 9100 with a keep-alive status.
KEEPALIVE_WAIT = 0.1


class _CtapJob:
    """One CTAP2 request running on the authenticator in a worker thread."""

    def __init__(self, authenticator: SimAuthenticator, request: bytes) -> None:
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.status = 0x01  # STATUS.PROCESSING
        self.response = b""
        self.pulled = False
        self._thread = threading.Thread(
            target=self._run, args=(authenticator, request), daemon=True, name=f"sim:{authenticator.name} nfcctap"
        )
        self._thread.start()

    def _run(self, authenticator: SimAuthenticator, request: bytes) -> None:
        def keepalive(status: int) -> None:
            self.status = status

        try:
            self.response = authenticator.handle_cbor(request, keepalive=keepalive, cancel=self.cancel)
        except TokenPulled as exc:
            logger.info("%s", exc)
            self.pulled = True
        except Exception:
            logger.exception("The simulated authenticator failed on a CBOR request")
            self.response = b"\x7f"  # CTAP2_ERR_OTHER
        finally:
            self.done.set()


class FidoCard(ApduCard):
    """The FIDO2 simulator as an ISO 7816 card: what python-fido2's ``CtapPcscDevice`` talks to.

    SELECT of the FIDO AID answers ``FIDO_2_0`` (CTAP2 only, no U2F). NFCCTAP_MSG (CLA 80, INS 10)
    carries ``cmd || CBOR``; when the host offers NFCCTAP_GETRESPONSE (P1 bit 0x80) and the request
    takes longer than :data:`KEEPALIVE_WAIT` (a touch), the card answers 9100 + a STATUS byte and the
    host polls with INS 11 (P1 0x11 cancels). Long requests and answers use command chaining and
    61xx/GET RESPONSE as on any ISO 7816 card.
    """

    def __init__(self, home: Path, name: str, *, touch: TouchProvider | None = None, atr: bytes = ATR_NFC) -> None:
        self.store = SimStateFile(home, name)
        self.store.read()  # TokenNotFound now, not in a reader thread
        self.touch = touch
        self._job: _CtapJob | None = None
        self._authenticator: SimAuthenticator | None = None
        super().__init__(atr)

    @classmethod
    def open(cls, home: Path, name: str, *, touch: TouchProvider | None = None) -> FidoCard:
        return cls(home, name, touch=touch)

    def present(self) -> bool:
        """Stay out of the reader while the token is unplugged (``set_plugged(home, name, False)``)."""
        try:
            return self.store.read().plugged
        except Exception:  # deleted or corrupt state: nothing to insert
            return False

    def _clear_session(self) -> None:
        super()._clear_session()
        job = getattr(self, "_job", None)
        if job is not None:
            job.cancel.set()
        self._job = None
        self._selected = False
        self._authenticator = None  # a power cycle forgets PIN tokens and key agreement keys

    def accepts_cla(self, cla: int) -> bool:
        return cla in (0x00, 0x80)

    def command(self, cla: int, ins: int, p1: int, p2: int, data: bytes) -> bytes:
        if ins == INS_SELECT:
            if p1 != 0x04 or data != AID_FIDO:
                self._selected = False
                raise StatusWord(0x6A82)
            self._selected = True
            return b"FIDO_2_0"
        if not self._selected:
            raise StatusWord(0x6D00)
        if ins == INS_NFCCTAP_MSG:
            if self._job is not None and not self._job.done.is_set():
                raise StatusWord(0x6985)  # one request at a time
            if self._authenticator is None:
                self._authenticator = SimAuthenticator(self.store, touch=self.touch, transport="nfc")
            self._job = _CtapJob(self._authenticator, data)
            return self._result(keepalive=bool(p1 & P1_GETRESPONSE_SUPPORTED))
        if ins == INS_NFCCTAP_GETRESPONSE:
            if self._job is None:
                raise StatusWord(0x6985)
            if p1 == P1_CANCEL:
                self._job.cancel.set()
            return self._result(keepalive=True)
        raise StatusWord(0x6D00)

    def _result(self, *, keepalive: bool) -> bytes:
        job = self._job
        assert job is not None
        if not job.done.wait(KEEPALIVE_WAIT if keepalive else None):
            raise StatusWord(SW_UPDATE, bytes([job.status]))
        self._job = None
        if job.pulled:
            self.power_off()
            raise CardRemoved("the simulated FIDO2 token was pulled out")
        return job.response


YUBIKEY_READER_HINT = "yubico yubikey"
Transport = Literal["auto", "usb", "nfc"]


def _usb_reader_configured() -> bool:
    from agent.tokens.pcsc import list_reader_names

    names = [n.lower() for n in list_reader_names()]
    return any(YUBIKEY_READER_HINT in n and ("vpcd" in n or "virtual" in n) for n in names)


def serve(
    home: Path,
    *,
    piv: Sequence[str] = (),
    fido2: Sequence[str] = (),
    stop: threading.Event,
    port: int = vpcd.DEFAULT_PORT,
    host: str = vpcd.DEFAULT_HOST,
    transport: Transport = "auto",
    slots: int = vpcd.VPCD_SLOTS,
) -> None:
    """Insert the named simulated cards into pcscd's vpcd reader slots until ``stop`` is set.

    Blocks. Cards whose state file does not exist are an error before anything is served.

    :raises UsageError: more cards than vpcd slots, or no cards at all.
    :raises TokenNotFound: a named simulated token does not exist.
    """
    cards: list[vpcd.VirtualCard] = []
    if not piv and not fido2:
        raise UsageError("name at least one simulated token to serve (--piv NAME or --fido2 NAME)")
    if len(piv) + len(fido2) > slots:
        raise UsageError(f"the vpcd reader has {slots} slots; cannot serve {len(piv) + len(fido2)} cards")
    if transport == "auto":
        transport = "usb" if _usb_reader_configured() else "nfc"
    atr = ATR_USB if transport == "usb" else ATR_NFC
    for name in piv:
        state = PivStateFile(piv_state_path(home, name))
        state.read()  # fail now, not inside a reader thread
        cards.append(PivCard(state, atr=atr))
    for name in fido2:
        cards.append(FidoCard.open(home, name))
    threads = [
        threading.Thread(
            target=vpcd.serve_card,
            args=(card, stop),
            kwargs={"host": host, "port": port + i},
            name=f"vpcd-slot-{i}",
            daemon=True,
        )
        for i, card in enumerate(cards)
    ]
    for thread in threads:
        thread.start()
    logger.info("Serving %d simulated card(s) on vpcd %s:%d..%d", len(cards), host, port, port + len(cards) - 1)
    while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    for thread in threads:
        thread.join()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.tokens.sim.pcsc_server --home DIR [--piv NAME] [--fido2 NAME]``, until SIGTERM."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="agent.tokens.sim.pcsc_server")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--piv", action="append", default=[])
    parser.add_argument("--fido2", action="append", default=[])
    parser.add_argument("--port", type=int, default=vpcd.DEFAULT_PORT)
    parser.add_argument("--transport", choices=["auto", "usb", "nfc"], default="auto")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    serve(args.home, piv=args.piv, fido2=args.fido2, stop=stop, port=args.port, transport=args.transport)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
