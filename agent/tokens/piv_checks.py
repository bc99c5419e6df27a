"""Read-only checks of a PIV card before enrolment changes anything on it (docs/tokens.md).

A YubiKey 5.3+ answers everything kms-agent needs: its serial (GET SERIAL), which retired slots are
free (GET METADATA answers 6A88 for an empty slot), whether it supports PIN and touch policies
(firmware version), and an attestation certificate in slot F9 that chains to Yubico's PIV root.
A standard PIV card, or a YubiKey-alike, may answer some of these with garbage or not at all; each
gap becomes one :class:`Problem` naming the missing capability, so enrolment can refuse *before*
it verifies the PIN, authenticates with the management key or writes a key, and ``doctor`` can say
why a card is unsupported. Nothing here sends a command that changes the card.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from yubikit.core import BadResponseError, NotSupportedError, Tlv, Version
from yubikit.core.smartcard import SW, ApduError
from yubikit.piv import KEY_TYPE, PIN_POLICY, SLOT, TOUCH_POLICY, PivSession

from agent.tokens import attestation as trust

logger = logging.getLogger(__name__)

#: Retired key-management slots, in the order enrolment takes free ones.
RETIRED_SLOTS = tuple(SLOT(s) for s in range(0x82, 0x96))
MIN_VERSION = Version(5, 3, 0)
INS_GET_METADATA = 0xF7
TAG_METADATA_ALGO = 0x01
#: Capability names (``Problem.capability``); "attestation" is the one ``allow_unattested`` waives.
ATTESTATION = "attestation"

OID_FIRMWARE = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.3")
OID_FORM_FACTOR = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.9")


@dataclass(frozen=True)
class Problem:
    """One thing a card cannot do that kms-agent relies on."""

    capability: str
    reason: str


@dataclass(frozen=True)
class PivAssessment:
    """What the read-only checks found on one card."""

    version: Version
    serial: int | None
    free_slots: tuple[SLOT, ...]
    #: The card's attestation certificate (slot F9) and the anchor it chains to, when it does.
    f9: x509.Certificate | None
    anchor: trust.Anchor | None
    problems: tuple[Problem, ...] = field(default=())

    @property
    def supported(self) -> bool:
        return not self.problems

    def blocking(self, *, allow_unattested: bool) -> tuple[Problem, ...]:
        """The problems that stop enrolment (``allow_unattested`` waives attestation ones)."""
        return tuple(p for p in self.problems if not (allow_unattested and p.capability == ATTESTATION))


def piv_anchors() -> tuple[trust.Anchor, ...]:
    """Yubico's PIV root, and the simulator's public root (a chain to it marks a card simulated)."""
    from agent.tokens.sim.piv_state import sim_attestation_root

    return (*trust.piv_anchors(), trust.Anchor(trust.SIMULATOR, sim_attestation_root()[1]))


def free_slots(session: PivSession) -> tuple[tuple[SLOT, ...], Problem | None]:
    """The empty retired slots, told apart by GET METADATA (6A88 = empty), or why that fails."""
    free = []
    for slot in RETIRED_SLOTS:
        try:
            raw = session.protocol.send_apdu(0, INS_GET_METADATA, 0, slot)
        except ApduError as exc:
            if exc.sw == SW.REFERENCE_DATA_NOT_FOUND:
                free.append(slot)
                continue
            if exc.sw in (SW.INVALID_INSTRUCTION, SW.FUNCTION_NOT_SUPPORTED, SW.WRONG_PARAMETERS_P1P2):
                return (), Problem(
                    "slot metadata",
                    f"it does not support GET METADATA (SW {exc.sw:04X}), so its free key slots cannot be found",
                )
            raise
        try:
            tlvs = Tlv.parse_dict(raw)
        except (ValueError, IndexError):
            tlvs = {}
        if TAG_METADATA_ALGO not in tlvs:
            return (), Problem(
                "slot metadata",
                f"it answers GET METADATA for slot {int(slot):02X} without a key type, "
                "so its empty key slots cannot be told from used ones",
            )
    if len(free) < 2:
        return tuple(free), Problem("free slots", f"it has {len(free)} free retired key slots (82-95); two are needed")
    return tuple(free), None


def _read_f9(session: PivSession) -> tuple[x509.Certificate | None, Problem | None]:
    try:
        return session.get_certificate(SLOT.ATTESTATION), None
    except ApduError as exc:
        if exc.sw not in (SW.FILE_NOT_FOUND, SW.INVALID_INSTRUCTION, SW.REFERENCE_DATA_NOT_FOUND):
            raise
    except (BadResponseError, NotSupportedError):
        pass
    return None, Problem(
        ATTESTATION, "it has no attestation certificate in slot F9, so nothing proves its keys are generated on-card"
    )


def assess(
    session: PivSession,
    *,
    policies: Sequence[tuple[PIN_POLICY, TOUCH_POLICY]],
    anchors: Sequence[trust.Anchor] | None = None,
) -> PivAssessment:
    """Run every read-only check on an open session; never raises for a missing capability.

    :param policies: the (PIN, touch) policies enrolment will ask GENERATE for.
    :raises ApduError: or another yubikit error, for failures that are not a missing capability
        (a card pulled out, a PIN blocked): the caller maps them as usual.
    """
    problems: list[Problem] = []
    version = session.version
    if version < MIN_VERSION:
        problems.append(
            Problem("firmware", f"it runs PIV {version}; kms-agent needs a YubiKey 5.3 or later (slot metadata)")
        )
    serial: int | None = None
    try:
        serial = session.get_serial()
    except NotSupportedError:
        problems.append(Problem("serial", "it does not report a serial number (GET SERIAL)"))
    except ApduError as exc:
        if exc.sw not in (SW.INVALID_INSTRUCTION, SW.FUNCTION_NOT_SUPPORTED):
            raise
        problems.append(Problem("serial", f"it does not report a serial number (GET SERIAL: SW {exc.sw:04X})"))
    free: tuple[SLOT, ...] = ()
    if version >= MIN_VERSION:
        free, slot_problem = free_slots(session)
        if slot_problem is not None:
            problems.append(slot_problem)
    for pin_policy, touch_policy in policies:
        try:
            session.check_key_support(KEY_TYPE.ECCP256, pin_policy, touch_policy, generate=True)
        except NotSupportedError as exc:
            problems.append(Problem("touch policy", f"it cannot generate P-256 keys with these policies ({exc})"))
            break
    f9, f9_problem = _read_f9(session)
    anchor = None
    if f9_problem is not None:
        problems.append(f9_problem)
    elif f9 is not None:
        anchor = trust.chain_anchor([f9], anchors if anchors is not None else piv_anchors())
        if anchor is None:
            problems.append(
                Problem(
                    ATTESTATION,
                    f"its attestation certificate (issued by {trust.describe_issuer(f9)}) "
                    "does not chain to Yubico's PIV root",
                )
            )
    return PivAssessment(version, serial, free, f9, anchor, tuple(problems))


def model_of(leaf: x509.Certificate, version: Version) -> str:
    """A short model string from a per-key attestation: firmware and form factor (Yubico .3.3/.3.9)."""
    from yubikit.management import FORM_FACTOR

    firmware = str(version)
    form = ""
    for oid, is_firmware in ((OID_FIRMWARE, True), (OID_FORM_FACTOR, False)):
        try:
            value = leaf.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        if is_firmware and len(raw) == 3:
            firmware = f"{raw[0]}.{raw[1]}.{raw[2]}"
        elif not is_firmware and len(raw) >= 1:
            try:
                form = f", {FORM_FACTOR(raw[0] & 0x7F)}"
            except ValueError:
                form = f", form factor 0x{raw[0]:02X}"
    return f"YubiKey PIV {firmware}{form}"


__all__ = [
    "ATTESTATION",
    "MIN_VERSION",
    "RETIRED_SLOTS",
    "PivAssessment",
    "Problem",
    "assess",
    "free_slots",
    "model_of",
    "piv_anchors",
]
