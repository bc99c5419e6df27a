"""Every PIV card present, YubiKey or not, and whether kms-agent can use it (and why not).

``doctor`` and ``token list`` call :func:`list_piv_cards`. Unlike
:func:`agent.tokens.piv_token.list_pcsc_piv_cards` (which only returns cards kms-agent can open a
``PivSession`` on, for unlock), this lists any card that answers SELECT of the PIV AID, including a
standard NIST PIV card that has no YubiKey serial, firmware version or attestation: OpenSC names
such cards, and an operator must learn from us why we will not use one rather than read "no PIV
card found". Probing is read-only (:mod:`agent.tokens.piv_checks`): no PIN is verified, no
management key used, nothing written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yubikit.core import ApplicationNotAvailableError, Tlv
from yubikit.core.smartcard import AID, SW, ApduError, SmartCardConnection, SmartCardProtocol

from agent.errors import KmsAgentError
from agent.tokens import attestation as trust
from agent.tokens import piv_checks

logger = logging.getLogger(__name__)

INS_VERIFY = 0x20
INS_GET_DATA = 0xCB
PIN_P2 = 0x80
OBJ_CHUID = 0x5FC102
TAG_CHUID_GUID = 0x34


@dataclass(frozen=True)
class PivCardInfo:
    """One PIV card in one PC/SC reader, as far as read-only commands can tell."""

    reader: str
    #: The YubiKey serial (decimal), or for another card the CHUID GUID (hex); None if neither.
    serial: str | None
    #: ``"yubikey"`` (GET SERIAL) or ``"chuid"`` (the card holder unique identifier's GUID).
    serial_source: str | None
    #: YubiKey firmware ("5.7.2"), or "PIV 1.0" from the applet's AID for another card.
    version: str | None
    pin_retries: int | None
    yubikey: bool
    #: Its attestation chains to the simulator's public test root.
    simulated: bool
    #: The anchor its attestation chains to (``yubico-piv-263751``, ``simulator``), else None.
    attestation_root: str | None
    #: Why kms-agent cannot enrol it; empty when it can.
    problems: tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        return "; ".join(self.problems)

    @property
    def spec(self) -> str | None:
        """The token spec naming this card (``piv:SERIAL``), when it has a YubiKey serial."""
        return f"piv:{self.serial}" if self.serial_source == "yubikey" else None

    def describe(self) -> str:
        name = self.spec or (f"PIV card (CHUID GUID {self.serial})" if self.serial else "PIV card")
        return f"{name} in {self.reader!r}"

    def summary(self) -> str:
        """One line for people: which card, serial, version, PIN retries, and whether kms-agent can use it."""
        if self.serial_source == "yubikey":
            serial = f"serial {self.serial}"
        else:
            serial = f"CHUID GUID {self.serial}" if self.serial else "no serial"
        retries = "unknown" if self.pin_retries is None else self.pin_retries
        facts = [serial, f"version {self.version or 'unknown'}", f"PIN retries {retries}"]
        if self.simulated:
            facts.append("SIMULATED")
        status = "supported" if self.supported else f"unsupported because {self.reason}"
        return f"{self.spec or 'PIV card'} in {self.reader!r}: {', '.join(facts)}; {status}"

    def to_json(self) -> dict[str, Any]:
        return {
            "reader": self.reader,
            "serial": self.serial,
            "serial_source": self.serial_source,
            "version": self.version,
            "pin_retries": self.pin_retries,
            "yubikey": self.yubikey,
            "simulated": self.simulated,
            "attestation_root": self.attestation_root,
            "supported": self.supported,
            "problems": list(self.problems),
        }


def _yubikey_card(conn: SmartCardConnection, reader: str) -> PivCardInfo:
    from yubikit.piv import PivSession

    from agent.tokens.piv_token import SIGN_POLICY, WRAP_POLICY

    session = PivSession(conn)
    report = piv_checks.assess(session, policies=(WRAP_POLICY, SIGN_POLICY))
    try:
        retries: int | None = session.get_pin_attempts()
    except ApduError as exc:
        retries = 0 if exc.sw == SW.AUTH_METHOD_BLOCKED else None
    anchor = report.anchor
    return PivCardInfo(
        reader=reader,
        serial=None if report.serial is None else str(report.serial),
        serial_source=None if report.serial is None else "yubikey",
        version=str(report.version),
        pin_retries=retries,
        yubikey=True,
        simulated=anchor is not None and anchor.name == trust.SIMULATOR,
        attestation_root=anchor.name if anchor is not None else None,
        problems=tuple(p.reason for p in report.problems),
    )


def _pin_retries(protocol: SmartCardProtocol) -> int | None:
    """VERIFY with no data: 63Cx says x retries left (SP 800-73-4 §3.2.1); 6983 blocked."""
    try:
        protocol.send_apdu(0, INS_VERIFY, 0, PIN_P2)
    except ApduError as exc:
        if exc.sw & 0xFFF0 == 0x63C0:
            return exc.sw & 0x0F
        if exc.sw == SW.AUTH_METHOD_BLOCKED:
            return 0
        return None
    return None  # already verified in this session: no count to read


def _chuid_guid(protocol: SmartCardProtocol) -> str | None:
    try:
        raw = protocol.send_apdu(0, INS_GET_DATA, 0x3F, 0xFF, bytes(Tlv(0x5C, OBJ_CHUID.to_bytes(3, "big"))))
        guid = Tlv.parse_dict(Tlv.unpack(0x53, raw)).get(TAG_CHUID_GUID)
    except (ApduError, ValueError, IndexError):
        return None
    return guid.hex() if guid and any(guid) else None


def _applet_version(select_response: bytes) -> str | None:
    """ "PIV x.y" from the application property template's PIX (SP 800-73-4 §3.1.1)."""
    try:
        apt = Tlv.parse_dict(Tlv.unpack(0x61, select_response))
    except (ValueError, IndexError):
        return None
    pix = apt.get(0x4F, b"")
    return f"PIV {pix[-2]}.{pix[-1]}" if len(pix) >= 2 else None


def _plain_card(conn: SmartCardConnection, reader: str, sw: int) -> PivCardInfo:
    protocol = SmartCardProtocol(conn)
    response = protocol.select(AID.PIV)
    guid = _chuid_guid(protocol)
    return PivCardInfo(
        reader=reader,
        serial=guid,
        serial_source="chuid" if guid else None,
        version=_applet_version(response),
        pin_retries=_pin_retries(protocol),
        yubikey=False,
        simulated=False,
        attestation_root=None,
        problems=(
            f"it is not a YubiKey PIV applet (GET VERSION answers SW {sw:04X}): it has no serial number, "
            "slot metadata, key attestation or touch policies, which kms-agent needs",
        ),
    )


def _unreadable(reader: str, exc: Exception) -> PivCardInfo:
    return PivCardInfo(
        reader=reader,
        serial=None,
        serial_source=None,
        version=None,
        pin_retries=None,
        yubikey=False,
        simulated=False,
        attestation_root=None,
        problems=(f"its PIV application gives answers kms-agent cannot parse ({type(exc).__name__})",),
    )


def probe(conn: SmartCardConnection, reader: str) -> PivCardInfo | None:
    """Describe the card on ``conn``; None when it has no PIV application."""
    try:
        return _yubikey_card(conn, reader)
    except ApplicationNotAvailableError:
        return None
    except ApduError as exc:
        if exc.sw in (SW.FILE_NOT_FOUND, SW.APPLET_SELECT_FAILED):
            return None
        return _plain_card(conn, reader, exc.sw)


def list_piv_cards(connect: Callable[[str], SmartCardConnection] | None = None) -> list[PivCardInfo]:
    """Every PC/SC reader's card that answers SELECT PIV, usable or not; empty without pcscd.

    :param connect: opens a reader by name (default: :class:`agent.tokens.pcsc.PcscConnection`).
    """
    from agent.tokens.pcsc import open_readers

    cards = []
    for reader, conn in open_readers(connect):
        try:
            info = probe(conn, reader)
        except KmsAgentError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("smartcard"):  # pulled out mid-probe
                logger.debug("The card in %r left during the probe: %s", reader, exc)
                info = None
            else:  # a PIV card whose answers yubikit cannot parse: list it, say so
                info = _unreadable(reader, exc)
        finally:
            conn.close()
        if info is not None:
            cards.append(info)
    return cards


__all__ = ["PivCardInfo", "list_piv_cards", "probe"]
