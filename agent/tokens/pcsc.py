"""Our own thin PC/SC connection for yubikit, over pyscard (research §3.1, §5.10).

Why not ``ykman.pcsc``: it opens cards *exclusively* and, when that fails, runs ``pkill -9
scdaemon`` and ``pkill -HUP yubikey-agent``. A key-management daemon must not kill other people's
processes. This connection is shared (``SCARD_SHARE_SHARED``), wraps the whole operation in a
PC/SC transaction so no other program interleaves APDUs, is held only for one operation, and on
close resets the card (``SCARD_RESET_CARD``) so a verified PIN does not outlive the operation.

Readers are not filtered by name: any reader whose card answers SELECT of the PIV AID counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from yubikit.core import TRANSPORT
from yubikit.core.smartcard import SmartCardConnection

logger = logging.getLogger(__name__)


def list_reader_names() -> list[str]:
    """Names of all PC/SC readers; empty when pcscd is not running or has no readers."""
    try:
        from smartcard.System import readers

        return [str(r) for r in readers()]
    except Exception as exc:  # EstablishContextException, ListReadersException, ...
        logger.debug("No PC/SC readers: %s", exc)
        return []


def open_readers(opener: Callable[[str], Any] | None = None) -> Iterator[tuple[str, Any]]:
    """``(reader, connection)`` for each PC/SC reader that opens; the caller closes each connection.

    Empty readers and cards held exclusively by another process are skipped (logged at debug).
    """
    open_one = opener or PcscConnection
    for reader in list_reader_names():
        try:
            conn = open_one(reader)
        except Exception as exc:  # empty reader, card held exclusively by someone else, ...
            logger.debug("Skipping PC/SC reader %r: %s", reader, exc)
            continue
        yield reader, conn


def transport_from_atr(atr: bytes) -> TRANSPORT:
    """ykman's rule: a YubiKey over USB has ``0xF?`` as ATR byte T0; anything else is NFC."""
    return TRANSPORT.USB if len(atr) > 1 and atr[1] & 0xF0 == 0xF0 else TRANSPORT.NFC


class PcscConnection(SmartCardConnection):
    """A shared pyscard connection to the card in ``reader_name``, inside one PC/SC transaction.

    :raises smartcard.Exceptions.NoCardException: the reader is empty.
    :raises smartcard.Exceptions.CardConnectionException: the card is gone or held exclusively.
    """

    def __init__(self, reader_name: str) -> None:
        from smartcard.Exceptions import CardConnectionException
        from smartcard.scard import SCARD_RESET_CARD, SCARD_S_SUCCESS, SCARD_SHARE_SHARED, SCardBeginTransaction
        from smartcard.System import readers

        matches = [r for r in readers() if str(r) == reader_name]
        if not matches:
            raise CardConnectionException(f"PC/SC reader {reader_name!r} is gone")
        self.reader_name = reader_name
        self._conn: Any = matches[0].createConnection()
        self._in_transaction = False
        try:
            self._conn.connect(mode=SCARD_SHARE_SHARED, disposition=SCARD_RESET_CARD)
            self._transport = transport_from_atr(bytes(self._conn.getATR() or b""))
            rc = SCardBeginTransaction(self._hcard())
            if rc != SCARD_S_SUCCESS:
                raise CardConnectionException(f"cannot start a PC/SC transaction (0x{rc & 0xFFFFFFFF:08X})")
            self._in_transaction = True
        except BaseException:
            self._release()
            raise

    @property
    def transport(self) -> TRANSPORT:
        return self._transport

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        data, sw1, sw2 = self._conn.transmit(list(apdu))
        return bytes(data), sw1 << 8 | sw2

    def _hcard(self) -> Any:
        """pyscard hands out a ``CardConnectionDecorator``; the PC/SC handle is on the inner one."""
        conn = self._conn
        while not hasattr(conn, "hcard") and hasattr(conn, "component"):
            conn = conn.component
        return conn.hcard

    def _release(self) -> None:
        from smartcard.scard import SCARD_LEAVE_CARD, SCardEndTransaction

        try:
            if self._in_transaction and self._hcard() is not None:
                SCardEndTransaction(self._hcard(), SCARD_LEAVE_CARD)
            self._in_transaction = False
            self._conn.disconnect()
        except Exception as exc:  # the card may already be gone; nothing left to release then
            logger.debug("PC/SC disconnect failed: %s", exc)
        finally:
            release = getattr(self._conn, "release", None)
            if release is not None:
                try:
                    release()
                except Exception as exc:
                    logger.debug("PC/SC context release failed: %s", exc)

    def close(self) -> None:
        self._release()
