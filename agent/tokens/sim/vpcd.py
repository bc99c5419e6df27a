"""Plug a simulated card into a real ``pcscd`` through vsmartcard's ``vpcd`` reader driver.

The protocol (vsmartcard ``vpcd.c``): the *reader* listens (pcscd's ``libifdvpcd`` on
``localhost:35963`` for slot ``00 00``, ``35964`` for ``00 01``; Debian's
``/etc/reader.conf.d/vpcd`` says ``CHANNELID 0x8C7B``) and the *card* connects to it. Every message
either way is a 2-byte big-endian length followed by that many bytes. From the reader, a 1-byte
message is a control code (0 power off, 1 power on, 2 reset, 4 "send your ATR") and anything longer
is a C-APDU; the card answers the ATR request and every C-APDU, and nothing else.

A connected card is a card in the reader; closing the socket pulls it out. pcscd notices on its
next presence poll (it polls slots every 400 ms), so insertion and removal take up to ~0.5 s.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from typing import Protocol

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 35963  # 0x8C7B, vpcd slot 0; slot n listens on DEFAULT_PORT + n
#: Debian's libifdvpcd is built with 2 slots ("Virtual PCD 00 00" and "00 01").
VPCD_SLOTS = 2

CTRL_OFF = 0
CTRL_ON = 1
CTRL_RESET = 2
CTRL_ATR = 4

_POLL = 0.2
#: pcscd polls a vpcd slot every 0.4 s. A card that comes back before pcscd has polled the slot
#: empty once is never seen (its state goes present -> present, so nothing powers the new card
#: up), so a slot stays empty at least this long between two cards.
REINSERT_GAP = 0.9
_last_left: dict[tuple[str, int], float] = {}
_last_left_lock = threading.Lock()


SW_OK = 0x9000
SW_MORE_DATA = 0x6100
SW_WRONG_LENGTH = 0x6700
SW_CLA = 0x6E00
INS_GET_RESPONSE = 0xC0
_MAX_CHAIN = 0x10000


class CardRemoved(Exception):
    """The simulated card left the reader (touch mode ``remove``); the connection is gone."""


class StatusWord(Exception):
    """Ends a command with this status word (and optional data): control flow inside a card."""

    def __init__(self, sw: int, data: bytes = b"") -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw
        self.data = data


def parse_apdu(apdu: bytes) -> tuple[int, int, int, int, bytes, int, bool]:
    """Split a C-APDU into ``(cla, ins, p1, p2, data, ne, extended)`` (ISO 7816-4 §5.1).

    ``ne`` is the number of response bytes the reader accepts: 256 (short) or 65536 (extended)
    when Le is absent, which is how YubiKeys treat a missing Le.
    """
    if len(apdu) < 4:
        raise StatusWord(SW_WRONG_LENGTH)
    cla, ins, p1, p2 = apdu[:4]
    body = apdu[4:]
    if not body:
        return cla, ins, p1, p2, b"", 256, False
    if len(body) == 1:
        return cla, ins, p1, p2, b"", body[0] or 256, False
    if body[0] == 0 and len(body) >= 3:
        if len(body) == 3:
            return cla, ins, p1, p2, b"", int.from_bytes(body[1:3], "big") or 65536, True
        lc = int.from_bytes(body[1:3], "big")
        data, rest = body[3 : 3 + lc], body[3 + lc :]
        if len(data) != lc or len(rest) not in (0, 2):
            raise StatusWord(SW_WRONG_LENGTH)
        ne = (int.from_bytes(rest, "big") or 65536) if rest else 65536
        return cla, ins, p1, p2, data, ne, True
    lc = body[0]
    data, rest = body[1 : 1 + lc], body[1 + lc :]
    if len(data) != lc or len(rest) > 1:
        raise StatusWord(SW_WRONG_LENGTH)
    return cla, ins, p1, p2, data, (rest[0] or 256) if rest else 256, False


class ApduCard:
    """ISO 7816-4 framing shared by the simulated cards: short and extended APDUs, command chaining
    (CLA bit 0x10: collect, answer 9000, act on the last block) and long answers in 61xx chunks
    fetched with GET RESPONSE. Subclasses implement :meth:`command` and :meth:`accepts_cla`.

    :param max_response: cap on response bytes per APDU even when the reader accepts more, so a
        card can be made to use 61xx/GET RESPONSE on extended APDUs too (tests).
    """

    def __init__(self, atr: bytes, *, max_response: int = 65536) -> None:
        self.atr = atr
        self.max_response = max_response
        self.powered = False
        self._clear_session()

    def _clear_session(self) -> None:
        self._chain: tuple[int, int, int, int, bytearray] | None = None
        self._pending = b""

    def power_on(self) -> None:
        self.powered = True
        self._clear_session()

    def power_off(self) -> None:
        self.powered = False
        self._clear_session()

    def reset(self) -> None:
        """Warm reset (pcscd's SCARD_RESET_CARD): the session state is gone."""
        self.power_on()

    def accepts_cla(self, cla: int) -> bool:
        """Whether a class byte (chaining bit cleared) is one this card's applets speak."""
        raise NotImplementedError

    def command(self, cla: int, ins: int, p1: int, p2: int, data: bytes) -> bytes:
        """Run one complete command; return the response data or raise :class:`StatusWord`."""
        raise NotImplementedError

    def transmit(self, apdu: bytes) -> bytes:
        """Process one C-APDU and return the R-APDU (data + SW1 SW2).

        :raises CardRemoved: the card was pulled out meanwhile.
        """
        if not self.powered:
            self.power_on()
        try:
            data, sw = self._transmit(bytes(apdu))
        except StatusWord as reply:
            data, sw = reply.data, reply.sw
        return data + sw.to_bytes(2, "big")

    def _transmit(self, apdu: bytes) -> tuple[bytes, int]:
        cla, ins, p1, p2, data, ne, extended = parse_apdu(apdu)
        chunk = min(ne, self.max_response if extended else 256, self.max_response)
        if ins == INS_GET_RESPONSE and self._pending:
            return self._next_chunk(chunk)
        self._pending = b""
        if not self.accepts_cla(cla & ~0x10):
            self._chain = None
            raise StatusWord(SW_CLA)
        if cla & 0x10:
            if self._chain is None or self._chain[:4] != (cla & ~0x10, ins, p1, p2):
                self._chain = (cla & ~0x10, ins, p1, p2, bytearray())
            self._chain[4].extend(data)
            if len(self._chain[4]) > _MAX_CHAIN:
                self._chain = None
                raise StatusWord(SW_WRONG_LENGTH)
            return b"", SW_OK
        if self._chain is not None:
            if self._chain[:4] == (cla, ins, p1, p2):
                data = bytes(self._chain[4]) + data
            self._chain = None
        self._pending = self.command(cla, ins, p1, p2, data)
        return self._next_chunk(chunk)

    def _next_chunk(self, chunk: int) -> tuple[bytes, int]:
        out, self._pending = self._pending[:chunk], self._pending[chunk:]
        if self._pending:
            return out, SW_MORE_DATA | min(len(self._pending), 0xFF)
        return out, SW_OK


class VirtualCard(Protocol):
    """What vpcd needs from a card: an ATR, power handling, and APDU in -> R-APDU out."""

    @property
    def atr(self) -> bytes: ...

    def power_on(self) -> None: ...

    def power_off(self) -> None: ...

    def reset(self) -> None: ...

    def transmit(self, apdu: bytes) -> bytes: ...


def _recv_exact(sock: socket.socket, n: int, stop: threading.Event) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        if stop.is_set():
            return None
        _quickack(sock)
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            continue
        if not chunk:
            raise ConnectionError("vpcd closed the connection")
        buf.extend(chunk)
    return bytes(buf)


def _quickack(sock: socket.socket) -> None:
    """ACK at once. vpcd writes the length and the APDU in two send() calls, so with Nagle on its side
    and delayed ACKs on ours every APDU would wait ~40 ms; Linux resets QUICKACK after use."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">H", len(payload)) + payload)


def _wait_for_gap(host: str, port: int, stop: threading.Event) -> None:
    with _last_left_lock:
        left = _last_left.get((host, port))
    if left is not None:
        stop.wait(max(0.0, left + REINSERT_GAP - time.monotonic()))


def _mark_left(host: str, port: int) -> None:
    with _last_left_lock:
        _last_left[(host, port)] = time.monotonic()


def serve_card(
    card: VirtualCard,
    stop: threading.Event,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    reinsert_after: float = REINSERT_GAP,
    connected: threading.Event | None = None,
) -> None:
    """Keep ``card`` inserted in the vpcd reader at ``host:port`` until ``stop`` is set.

    Reconnects when pcscd restarts or is not up yet. A card that raises :class:`CardRemoved`
    disconnects (pcscd sees it pulled out) and comes back ``reinsert_after`` seconds later, unless
    it has a ``present()`` method that says it is still out.
    ``connected`` is set while the card sits in the reader.
    """
    present = getattr(card, "present", None)
    while not stop.is_set():
        _wait_for_gap(host, port, stop)
        if stop.is_set():
            break
        if callable(present) and not present():  # e.g. a FIDO2 sim unplugged with set_plugged(False)
            stop.wait(_POLL)
            continue
        try:
            sock = socket.create_connection((host, port), timeout=_POLL)
        except OSError:
            stop.wait(_POLL)
            continue
        logger.info("Simulated card inserted into vpcd reader at %s:%d", host, port)
        if connected is not None:
            connected.set()
        removed = False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(_POLL)
            removed = _session(sock, card, stop)
        except (ConnectionError, OSError) as exc:
            logger.info("vpcd connection at %s:%d ended: %s", host, port, exc)
        finally:
            if connected is not None:
                connected.clear()
            sock.close()
            _mark_left(host, port)
            card.power_off()
        stop.wait(reinsert_after if removed else _POLL)


def _session(sock: socket.socket, card: VirtualCard, stop: threading.Event) -> bool:
    """Answer pcscd until stop (False) or until the card is pulled (True)."""
    while True:
        header = _recv_exact(sock, 2, stop)
        if header is None:
            return False
        (length,) = struct.unpack(">H", header)
        message = _recv_exact(sock, length, stop)
        if message is None:
            return False
        if length == 1:
            code = message[0]
            if code == CTRL_ATR:
                _send(sock, card.atr)
            elif code == CTRL_ON:
                card.power_on()
            elif code == CTRL_OFF:
                card.power_off()
            elif code == CTRL_RESET:
                card.reset()
            else:
                logger.debug("Ignoring unknown vpcd control code %d", code)
            continue
        try:
            response = card.transmit(message)
        except CardRemoved:
            logger.info("Simulated card pulled out of the vpcd reader")
            return True
        _send(sock, response)
