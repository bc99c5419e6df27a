"""PIV keyslots: on-card ECDH unwraps, on-card ECDSA approves (research §1.1, §5.5; docs/piv.md).

The wrap follows age-plugin-yubikey's ``piv-p256`` recipe. At enrolment the card generates a P-256
key in a retired slot (the *wrap key*, PIN once, touch always); we make an ephemeral P-256 key and
``ikm = ECDH(ephemeral, wrap_pub)``; only the ephemeral public key ``epk`` is kept. To unwrap, the
card computes the same ``ECDH(wrap key, epk)`` after PIN and touch. The vault derives its KEK as
``HKDF(ikm, salt=slot_public["kdf_salt"])`` with ``kdf_salt = epk || wrap_pub`` (compressed points).

A second card key in another retired slot (the *signing key*, PIN always, touch always) signs the
32-byte approval digest. It signs the digest **prehashed**: the card's ECDSA input is the digest
itself, not SHA-256 of it, so ``sign_pub.verify(sig, digest, ECDSA(Prehashed(SHA256())))`` checks it,
which is the same as verifying ``ECDSA(SHA256())`` over the payload the digest was computed from.
The two keys are never used for each other's job. Both are attested by the card (chain to the
attestation certificate in slot F9; serial and policies from the Yubico extensions) and the chain
is kept in ``slot_public`` for offline audits.

PIV has no keep-alive, so "touch your token" is announced from a timer half a second after an
operation that needs a touch is sent (ykman's ``prompt_timeout``). The management key is never
left at its default: on first enrolment it becomes a random AES-192 key stored PIN-protected on the
card, exactly as ``ykman piv access change-management-key --generate --protect`` would.

Enrolment checks before it changes anything (:mod:`agent.tokens.piv_checks`): serial, firmware,
free slots, policy support and an attestation chaining to Yubico's PIV root (or the simulator's).
Only then does it verify the PIN and generate; the default management key is replaced *last*,
once both keys are generated and their attestations verified, so a card that fails half-way keeps
the management key it came with. Every card-side failure is a :class:`~agent.errors.TokenError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from yubikit.core import (
    ApplicationNotAvailableError,
    BadResponseError,
    InvalidPinError,
    NotSupportedError,
)
from yubikit.core.smartcard import SW, ApduError, SmartCardConnection
from yubikit.piv import (
    DEFAULT_MANAGEMENT_KEY,
    KEY_TYPE,
    MANAGEMENT_KEY_TYPE,
    PIN_POLICY,
    SLOT,
    TOUCH_POLICY,
    PivSession,
)

from agent.errors import (
    KmsAgentError,
    PinBlocked,
    PinInvalid,
    ProgrammingError,
    TokenError,
    TokenNotFound,
    TokenRemoved,
    TokenUnsupported,
    TouchTimeout,
    UsageError,
    VaultFormatError,
    WrongToken,
)
from agent.tokens import attestation as trust
from agent.tokens import piv_checks
from agent.tokens.base import Approval, Enrolment, Prompts, Token, Unwrapped

logger = logging.getLogger(__name__)

KIND = "piv"
APPROVAL_ALG = "ecdsa-p256-prehashed-sha256"
#: Retired key-management slots, in the order enrolment takes free ones.
RETIRED_SLOTS = piv_checks.RETIRED_SLOTS
WRAP_POLICY = (PIN_POLICY.ONCE, TOUCH_POLICY.ALWAYS)
SIGN_POLICY = (PIN_POLICY.ALWAYS, TOUCH_POLICY.ALWAYS)
TOUCH_PROMPT_DELAY = 0.5

OID_SERIAL = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.7")
OID_POLICY = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.8")

#: SW -> (exception class, message) for status words that can reach an operator.
PIV_SW_ERRORS: dict[int, tuple[type[TokenError], str]] = {
    SW.AUTH_METHOD_BLOCKED: (
        PinBlocked,
        "the PIV PIN of {label} is blocked; unblock it with the PUK (ykman piv access unblock-pin)",
    ),
    SW.SECURITY_CONDITION_NOT_SATISFIED: (
        TouchTimeout,
        "{label} refused the operation: no touch in time (or the PIN was not accepted)",
    ),
    SW.REFERENCE_DATA_NOT_FOUND: (WrongToken, "{label} has no key in the enrolled slot (wrong token, or reset?)"),
    SW.INCORRECT_PARAMETERS: (WrongToken, "{label} rejected the request: its key does not match the slot"),
    SW.FILE_NOT_FOUND: (TokenUnsupported, "{label} has no PIV application"),
    SW.CONDITIONS_NOT_SATISFIED: (TokenError, "{label} refused the operation (conditions not satisfied)"),
    SW.INVALID_INSTRUCTION: (TokenUnsupported, "{label} does not support this PIV command"),
    SW.FUNCTION_NOT_SUPPORTED: (TokenUnsupported, "{label} does not support this function (SW 6A81)"),
    SW.WRONG_LENGTH: (TokenError, "{label} rejected a malformed command"),
}


def describe_sw(sw: int, label: str) -> TokenError:
    """The kms-agent error for a PIV status word (63Cx carries the retries left)."""
    if sw & 0xFFF0 == 0x63C0:
        left = sw & 0x0F
        if left == 0:
            return PinBlocked(PIV_SW_ERRORS[SW.AUTH_METHOD_BLOCKED][1].format(label=label))
        return PinInvalid(
            f"wrong PIN for {label}: {left} {'try' if left == 1 else 'tries'} left",
            attempts_remaining=left,
            hint="at 0 the PIN blocks; the PUK can unblock it",
        )
    cls, message = PIV_SW_ERRORS.get(sw, (TokenError, "{label} failed: " + f"SW 0x{sw:04X}"))
    return cls(message.format(label=label))


@contextlib.contextmanager
def map_piv_errors(label: str) -> Iterator[None]:
    """Re-raise yubikit, APDU and PC/SC errors as kms-agent ``TokenError`` subclasses."""
    try:
        yield
    except KmsAgentError:
        raise
    except InvalidPinError as exc:
        raise describe_sw(0x63C0 | min(exc.attempts_remaining, 0xF), label) from exc
    except ApduError as exc:
        raise describe_sw(exc.sw, label) from exc
    except ApplicationNotAvailableError as exc:
        raise TokenUnsupported(f"{label} has no PIV application") from exc
    except NotSupportedError as exc:
        raise TokenUnsupported(f"{label} does not support this: {exc}") from exc
    except BadResponseError as exc:
        raise TokenError(f"{label} gave a malformed answer: {exc}") from exc
    except (KeyError, IndexError, ValueError) as exc:
        # yubikit parses card answers with dict lookups and enum constructors: a card that is not a
        # YubiKey-compatible PIV applet makes them fail (research §3; docs/tokens.md).
        raise TokenUnsupported(
            f"{label} gave an answer kms-agent cannot parse ({type(exc).__name__}): "
            "it does not behave like a YubiKey 5.3+ PIV applet"
        ) from exc
    except Exception as exc:
        if exc.__class__.__module__.startswith("smartcard"):
            if type(exc).__name__ in ("CardConnectionException", "NoCardException"):
                raise TokenRemoved(f"{label} was removed or stopped answering during the operation") from exc
            raise TokenError(f"PC/SC failed while talking to {label}: {type(exc).__name__}") from exc
        raise


def _compressed(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


def _p256(point: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def _der_int(value: bytes) -> int:
    """The serial extension is a DER INTEGER on YubiKeys; accept a bare big-endian number too."""
    if len(value) >= 2 and value[0] == 0x02 and value[1] == len(value) - 2:
        return int.from_bytes(value[2:], "big")
    return int.from_bytes(value, "big")


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def check_attestation(
    leaf: x509.Certificate,
    f9: x509.Certificate,
    *,
    serial: int,
    public_key: ec.EllipticCurvePublicKey,
    policy: tuple[int, int],
    label: str,
) -> None:
    """Check one per-key attestation: signed by the card's F9 key, for this key, serial, policies.

    :raises TokenError: any mismatch (a card that lies about its keys is not usable).
    """
    try:
        leaf.verify_directly_issued_by(f9)
    except (ValueError, TypeError, InvalidSignature):
        raise TokenError(f"{label}: the key attestation is not signed by the card's attestation key") from None
    attested = leaf.public_key()
    if not isinstance(attested, ec.EllipticCurvePublicKey) or _compressed(attested) != _compressed(public_key):
        raise TokenError(f"{label}: the attestation is for another key than the one generated")
    raw_serial, raw_policy = _ext(leaf, OID_SERIAL), _ext(leaf, OID_POLICY)
    if raw_serial is None or _der_int(raw_serial) != serial:
        raise TokenError(f"{label}: the attestation names another serial number")
    if raw_policy is None or len(raw_policy) < 2 or (raw_policy[0], raw_policy[1]) != policy:
        raise TokenError(f"{label}: the attested PIN/touch policy differs from the one requested")


def is_simulator_chain(f9: x509.Certificate) -> bool:
    """True when the F9 certificate was issued by kms-agent's public simulator root."""
    from agent.tokens.sim.piv_state import sim_attestation_root

    try:
        f9.verify_directly_issued_by(sim_attestation_root()[1])
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _open_session(conn: SmartCardConnection, label: str) -> PivSession:
    """``PivSession(conn)``, with a card that has no YubiKey GET VERSION refused by name."""
    try:
        return PivSession(conn)
    except ApduError as exc:
        if exc.sw in (SW.INVALID_INSTRUCTION, SW.FUNCTION_NOT_SUPPORTED, SW.WRONG_PARAMETERS_P1P2):
            raise TokenUnsupported(
                f"{label} is not a YubiKey PIV applet: it does not report its firmware (GET VERSION, SW {exc.sw:04X})",
                hint="kms-agent needs a YubiKey 5.3 or later for PIV; `kms-agent doctor` lists what each card lacks",
            ) from exc
        raise


def verify_approval(slot_public: Mapping[str, Any], digest: bytes, signature: bytes) -> bool:
    """Offline check of a PIV approval: ECDSA P-256 by ``sign_pub`` over the 32-byte digest (prehashed)."""
    try:
        _p256(slot_public["sign_pub"]).verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return False
    return True


class _SlotPublic:
    """The fields of ``slot_public`` this backend needs, type-checked (a malformed header fails loudly)."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        try:
            self.serial = int(raw["serial"])
            self.wrap_slot = SLOT(raw["wrap_slot"])
            self.sign_slot = SLOT(raw["sign_slot"])
            self.wrap_pub = bytes(raw["wrap_pub"])
            self.sign_pub = bytes(raw["sign_pub"])
            self.epk = _p256(bytes(raw["epk"]))
            self.wrap_touch = TOUCH_POLICY(raw["wrap_touch_policy"])
            self.sign_pin = PIN_POLICY(raw["sign_pin_policy"])
            self.sign_touch = TOUCH_POLICY(raw["sign_touch_policy"])
            _p256(self.wrap_pub)
            _p256(self.sign_pub)
        except (KeyError, TypeError, ValueError) as exc:
            raise VaultFormatError(f"PIV slot fields are malformed: {exc}") from None


class PivToken(Token):
    """One PIV card (YubiKey 5.3+), reached through ``connect()`` for the length of each operation.

    :param connect: opens a fresh ``SmartCardConnection`` to the card (PC/SC or simulator).
    :param serial: the card's serial; every operation checks it (:class:`WrongToken` otherwise).
    :param wrap_policy: (PIN, touch) policy for the wrap key; ``sign_policy`` for the signing key.
    :param allow_unattested: enrol even when the card's attestation is missing or chains to no
        trusted root (recorded as ``attestation_root: "none"``).
    """

    kind = KIND

    def __init__(
        self,
        connect: Callable[[], SmartCardConnection],
        label: str,
        *,
        serial: int,
        simulated: bool = False,
        wrap_policy: tuple[PIN_POLICY, TOUCH_POLICY] = WRAP_POLICY,
        sign_policy: tuple[PIN_POLICY, TOUCH_POLICY] = SIGN_POLICY,
        touch_prompt_delay: float = TOUCH_PROMPT_DELAY,
        allow_unattested: bool = False,
    ) -> None:
        self._connect = connect
        self.label = label
        self.serial = serial
        self.simulated = simulated
        self.wrap_policy = wrap_policy
        self.sign_policy = sign_policy
        self.touch_prompt_delay = touch_prompt_delay
        self.allow_unattested = allow_unattested

    def __repr__(self) -> str:
        return f"PivToken({self.label!r}, serial={self.serial})"

    # --- plumbing -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _session(self) -> Iterator[PivSession]:
        """A PIV session on a connection held only for this operation, on the right card."""
        with map_piv_errors(self.label):
            conn = self._connect()
            try:
                session = _open_session(conn, self.label)
                try:
                    serial = session.get_serial()
                except (NotSupportedError, ApduError):
                    raise TokenUnsupported(f"{self.label} does not report a serial number (GET SERIAL)") from None
                if serial != self.serial:
                    raise WrongToken(f"{self.label}: found card with serial {serial} instead")
                yield session
            finally:
                conn.close()

    @contextlib.contextmanager
    def _touch(self, prompts: Prompts, policy: TOUCH_POLICY) -> Iterator[None]:
        """Announce a touch if the card is still busy after the delay; map a missed touch (6982)."""
        timer = None
        if policy in (TOUCH_POLICY.ALWAYS, TOUCH_POLICY.CACHED):
            timer = threading.Timer(self.touch_prompt_delay, self._announce, args=(prompts,))
            timer.daemon = True
            timer.start()
        try:
            yield
        except ApduError as exc:
            if exc.sw == SW.SECURITY_CONDITION_NOT_SATISFIED and timer is not None:
                raise TouchTimeout(
                    f"no touch on {self.label} in time (or the touch was refused)",
                    hint="touch the token when it blinks, within about 15 seconds",
                ) from exc
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _announce(self, prompts: Prompts) -> None:
        try:
            prompts.touch(self.label)
        except Exception:
            logger.exception("The touch prompt failed")

    def _ask_pin(self, session: PivSession, prompts: Prompts) -> bytearray:
        left = session.get_pin_attempts()
        if left == 0:
            raise describe_sw(SW.AUTH_METHOD_BLOCKED, self.label)
        pin = prompts.pin(self.label, left)
        if not 1 <= len(pin) <= 8:  # checked here so a typo that cannot be right costs no retry
            pin[:] = bytes(len(pin))
            raise PinInvalid(f"a PIV PIN is at most 8 bytes long; {self.label} was not asked", attempts_remaining=left)
        return pin

    def _verify_pin(self, session: PivSession, pin: bytearray) -> None:
        try:
            # yubikit takes the PIN as str: the one unavoidable immutable copy.
            session.verify_pin(pin.decode())
        except UnicodeDecodeError:
            raise PinInvalid("the PIN must be UTF-8 text") from None

    def _management_key(self, session: PivSession, pin: bytearray) -> bool:
        """Authenticate with the management key; True when it is the factory default.

        Changes nothing: the caller replaces a default key (:meth:`_replace_default_management_key`)
        only once enrolment has succeeded.
        """
        from ykman.piv import derive_management_key, get_pivman_data, get_pivman_protected_data

        pivman = get_pivman_data(session)
        if pivman.has_stored_key:
            key = get_pivman_protected_data(session).key
            if key is None:
                raise TokenUnsupported(f"{self.label}: the PIN-protected management key is missing")
            session.authenticate(key)
            return False
        if pivman.has_derived_key and pivman.salt is not None:
            session.authenticate(derive_management_key(pin.decode(), pivman.salt))
            return False
        if not session.get_management_key_metadata().default_value:
            raise TokenUnsupported(
                f"{self.label} has a custom management key that is not stored on the card",
                hint="store it PIN-protected: ykman piv access change-management-key --generate --protect",
            )
        session.authenticate(DEFAULT_MANAGEMENT_KEY)
        return True

    def _replace_default_management_key(self, session: PivSession) -> None:
        """A random management key, stored PIN-protected (``--generate --protect``); needs PIN + auth."""
        from ykman.piv import pivman_set_mgm_key

        key_type = MANAGEMENT_KEY_TYPE.AES192 if session.version >= (5, 4, 0) else MANAGEMENT_KEY_TYPE.TDES
        logger.info("Replacing the default PIV management key of %s by a PIN-protected random one", self.label)
        pivman_set_mgm_key(session, os.urandom(key_type.key_len), key_type, store_on_device=True)

    def _generate(
        self, session: PivSession, slot: SLOT, policy: tuple[PIN_POLICY, TOUCH_POLICY]
    ) -> ec.EllipticCurvePublicKey:
        try:
            public = session.generate_key(slot, KEY_TYPE.ECCP256, policy[0], policy[1])
        except ApduError as exc:
            if exc.sw in (SW.FUNCTION_NOT_SUPPORTED, SW.INCORRECT_PARAMETERS, SW.INVALID_INSTRUCTION):
                what = "does not support touch policies" if exc.sw == SW.FUNCTION_NOT_SUPPORTED else "refused it"
                raise TokenUnsupported(
                    f"{self.label} cannot generate a P-256 key with PIN policy {policy[0].name} and touch policy "
                    f"{policy[1].name}: it {what} (SW {exc.sw:04X}); nothing was changed on the card"
                ) from exc
            raise
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise TokenError(f"{self.label} generated a key of the wrong type")
        return public

    def _attest(self, session: PivSession, slot: SLOT, *, required: bool) -> x509.Certificate | None:
        try:
            return session.attest_key(slot)
        except (ApduError, NotSupportedError, BadResponseError, ValueError) as exc:
            if required:
                raise TokenUnsupported(
                    f"{self.label} cannot attest the key it generated in slot {int(slot):02X}"
                ) from exc
            return None

    def _discard(self, session: PivSession, slots: list[SLOT]) -> None:
        """Best effort: delete keys an enrolment that failed half-way generated (firmware 5.7+)."""
        for slot in slots:
            try:
                session.delete_key(slot)
            except Exception as exc:  # older firmware cannot delete; the slot just stays used
                logger.info("Could not delete the key generated in slot %02X of %s: %s", slot, self.label, exc)

    # --- Token contract -----------------------------------------------------------------------
    def enrol(
        self,
        *,
        rp_id: str,
        user_id: bytes,
        user_name: str,
        salt: bytes,
        prompts: Prompts,
        allow_unattested: bool | None = None,
    ) -> Enrolment:
        """Check the card, then generate and attest the wrap and signing keys; no touch needed.

        ``rp_id``, ``user_id``, ``user_name`` and ``salt`` are FIDO2 notions with no PIV use: the
        KEK salt is ``epk || wrap_pub`` (age-plugin-yubikey's), returned as ``kdf_salt``.

        :raises TokenUnsupported: naming every missing capability, before anything on the card changed.
        """
        unattested_ok = self.allow_unattested if allow_unattested is None else allow_unattested
        with self._session() as session:
            report = piv_checks.assess(session, policies=(self.wrap_policy, self.sign_policy))
            blocking = report.blocking(allow_unattested=unattested_ok)
            if blocking:
                waivable = all(p.capability == piv_checks.ATTESTATION for p in blocking)
                raise TokenUnsupported(
                    f"{self.label} cannot be enrolled: {'; '.join(p.reason for p in blocking)}",
                    hint="enrol it anyway only if you trust this card: --allow-unattested"
                    if waivable
                    else "kms-agent needs a YubiKey 5.3 or later for PIV (docs/tokens.md)",
                )
            attested = report.f9 is not None and report.anchor is not None
            pin = self._ask_pin(session, prompts)
            try:
                self._verify_pin(session, pin)
                pin_default = session.get_pin_metadata().default_value
                replace_default = self._management_key(session, pin)
                self._verify_pin(session, pin)  # ykman's rule: VERIFY last before key use
            finally:
                pin[:] = bytes(len(pin))
            wrap_slot, sign_slot = report.free_slots[:2]
            generated: list[SLOT] = []
            try:
                wrap_pub = self._generate(session, wrap_slot, self.wrap_policy)
                generated.append(wrap_slot)
                sign_pub = self._generate(session, sign_slot, self.sign_policy)
                generated.append(sign_slot)
                wrap_att = self._attest(session, wrap_slot, required=attested)
                sign_att = self._attest(session, sign_slot, required=attested)
                if attested:
                    assert report.f9 is not None and wrap_att is not None and sign_att is not None
                    for leaf, public, policy in (
                        (wrap_att, wrap_pub, self.wrap_policy),
                        (sign_att, sign_pub, self.sign_policy),
                    ):
                        check_attestation(
                            leaf,
                            report.f9,
                            serial=self.serial,
                            public_key=public,
                            policy=(int(policy[0]), int(policy[1])),
                            label=self.label,
                        )
            except BaseException:
                self._discard(session, generated)
                raise
            # Keep each attestation as its slot's certificate so other PIV tools see the slot is taken.
            for slot, cert in ((wrap_slot, wrap_att), (sign_slot, sign_att)):
                if cert is not None:
                    session.put_certificate(slot, cert)
            if replace_default:
                self._replace_default_management_key(session)
            version = str(session.version)
        anchor = report.anchor if attested else None
        simulated = self.simulated or (anchor is not None and anchor.simulated)
        root = anchor.name if anchor is not None else trust.UNATTESTED
        model = piv_checks.model_of(wrap_att, report.version) if wrap_att is not None else f"PIV {version}"
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        ikm = bytearray(ephemeral.exchange(ec.ECDH(), wrap_pub))
        epk = _compressed(ephemeral.public_key())
        del ephemeral  # the wrap secret must be recoverable only by the card from now on
        wrap_c = _compressed(wrap_pub)
        chain = [c.public_bytes(Encoding.DER) for c in (wrap_att, sign_att, report.f9 if attested else None) if c]
        slot_public: dict[str, Any] = {
            "serial": self.serial,
            "firmware": version,
            "model": model,
            "attestation_root": root,
            "wrap_slot": int(wrap_slot),
            "sign_slot": int(sign_slot),
            "wrap_pub": wrap_c,
            "sign_pub": _compressed(sign_pub),
            "epk": epk,
            "wrap_pin_policy": int(self.wrap_policy[0]),
            "wrap_touch_policy": int(self.wrap_policy[1]),
            "sign_pin_policy": int(self.sign_policy[0]),
            "sign_touch_policy": int(self.sign_policy[1]),
            "approval_alg": APPROVAL_ALG,
            "attestation": chain,
            "kdf_salt": epk + wrap_c,
        }
        extra = {"pin_is_default": pin_default, "attestation_root": root, "model": model}
        if pin_default:
            logger.warning("%s still uses the default PIV PIN", self.label)
        return Enrolment(KIND, self.label, slot_public, ikm, simulated=simulated, extra=extra)

    def holds(self, slot_public: Mapping[str, Any]) -> bool:
        """Serial matches and the wrap slot holds ``wrap_pub`` (GET METADATA: no PIN, no touch)."""
        slot = _SlotPublic(slot_public)
        if slot.serial != self.serial:
            return False
        try:
            with self._session() as session:
                return self._holds(session, slot)
        except WrongToken:
            return False

    @staticmethod
    def _holds(session: PivSession, slot: _SlotPublic) -> bool:
        try:
            meta = session.get_slot_metadata(slot.wrap_slot)
        except ApduError as exc:
            if exc.sw == SW.REFERENCE_DATA_NOT_FOUND:
                return False
            raise
        public = meta.public_key
        return isinstance(public, ec.EllipticCurvePublicKey) and _compressed(public) == slot.wrap_pub

    def unwrap(self, slot_public: Mapping[str, Any], *, digest: bytes, prompts: Prompts) -> Unwrapped:
        """PIN, then on-card ECDH (touch) for ``ikm``, then an on-card signature of ``digest`` (touch)."""
        if len(digest) != 32:
            raise ProgrammingError("the approval digest must be 32 bytes")
        slot = _SlotPublic(slot_public)
        if slot.serial != self.serial:
            raise WrongToken(f"{self.label} is not the card with serial {slot.serial}")
        ikm = bytearray()
        try:
            with self._session() as session:
                if not self._holds(session, slot):
                    raise WrongToken(f"{self.label} does not hold this keyslot's key (reset or re-used slot?)")
                pin = self._ask_pin(session, prompts)
                try:
                    self._verify_pin(session, pin)
                    with self._touch(prompts, slot.wrap_touch):
                        ikm = bytearray(session.calculate_secret(slot.wrap_slot, slot.epk))
                    if slot.sign_pin == PIN_POLICY.ALWAYS:
                        self._verify_pin(session, pin)
                    with self._touch(prompts, slot.sign_touch):
                        signature = session.sign(slot.sign_slot, KEY_TYPE.ECCP256, digest, Prehashed(hashes.SHA256()))  # type: ignore[arg-type]
                finally:
                    pin[:] = bytes(len(pin))
            if not verify_approval(slot_public, digest, signature):
                raise TokenError(f"{self.label} returned a signature that does not verify against its enrolled key")
        except BaseException:
            ikm[:] = bytes(len(ikm))
            raise
        user_present = slot.sign_touch in (TOUCH_POLICY.ALWAYS, TOUCH_POLICY.CACHED)
        return Unwrapped(ikm, Approval(KIND, b"", signature, 0, user_present, True))


# --- opening tokens ---------------------------------------------------------------------------
def _pcsc_token(reader: str, serial: int, simulated: bool, *, allow_unattested: bool = False) -> PivToken:
    from agent.tokens.pcsc import PcscConnection

    return PivToken(
        lambda: PcscConnection(reader),
        f"piv:{serial}",
        serial=serial,
        simulated=simulated,
        allow_unattested=allow_unattested,
    )


def list_pcsc_piv_cards() -> list[tuple[str, int, bool]]:
    """``(reader, serial, simulated)`` for every PC/SC reader whose card answers SELECT PIV."""
    from agent.tokens.pcsc import open_readers

    found = []
    for reader, conn in open_readers():
        try:
            session = PivSession(conn)
            serial = session.get_serial()
            try:
                simulated = is_simulator_chain(session.get_certificate(SLOT.ATTESTATION))
            except (ApduError, BadResponseError):
                simulated = False
            found.append((reader, serial, simulated))
        except Exception as exc:  # no PIV applet, no serial (pre-5.0.3), card pulled
            logger.debug("No usable PIV card in %r: %s", reader, exc)
        finally:
            conn.close()
    return found


def _sim_token(home: Path, name: str, *, create: bool = False, allow_unattested: bool = False) -> PivToken:
    from agent.tokens.sim.piv_card import open_sim_piv_connection
    from agent.tokens.sim.piv_state import PivStateFile, create_piv_sim, piv_state_path

    state = PivStateFile(piv_state_path(home, name))
    if not state.exists():
        if not create:
            raise TokenNotFound(f"no simulated PIV card named {name!r}")
        create_piv_sim(home, name)
    serial = state.read().serial
    return PivToken(
        lambda: open_sim_piv_connection(home, name),
        f"sim:{name}",
        serial=serial,
        simulated=True,
        allow_unattested=allow_unattested,
    )


def is_piv_sim(home: Path, name: str) -> bool:
    """Whether ``sim:NAME`` names a simulated PIV card (for the CLI's spec dispatch)."""
    from agent.tokens.sim.piv_state import piv_state_path

    try:
        return piv_state_path(home, name).exists()
    except UsageError:
        return False


def open_piv_token(spec: str, home: Path, *, allow_unattested: bool = False) -> PivToken:
    """Open a PIV token from a CLI spec: ``piv``, ``piv:SERIAL`` or ``sim:NAME``.

    ``sim:NAME`` is a simulated card under ``<home>/sim``, created factory-fresh if it does not
    exist yet (as the FIDO2 simulator does), and served in process.

    :raises TokenNotFound: no such card (or no PC/SC service).
    :raises TokenUnsupported: the only matching card is a PIV card kms-agent cannot use (says why).
    :raises UsageError: a malformed spec, or ``piv`` while several PIV cards are present.
    """
    if spec.startswith("sim:"):
        return _sim_token(home, spec[4:], create=True, allow_unattested=allow_unattested)
    if spec != "piv" and not spec.startswith("piv:"):
        raise UsageError(f"not a PIV token spec: {spec!r} (use piv, piv:SERIAL or sim:NAME)")
    wanted: int | None = None
    if spec.startswith("piv:"):
        try:
            wanted = int(spec[4:])
        except ValueError:
            raise UsageError(f"PIV serial must be a number: {spec!r}") from None
    cards = list_pcsc_piv_cards()
    if wanted is not None:
        cards = [c for c in cards if c[1] == wanted]
    if not cards:
        _explain_unusable_cards(wanted)
        raise TokenNotFound(
            f"no PIV card{'' if wanted is None else f' with serial {wanted}'} found",
            hint="is the token plugged in and pcscd running?",
        )
    if len(cards) > 1:
        serials = ", ".join(f"piv:{c[1]}" for c in cards)
        raise UsageError(f"several PIV cards are present ({serials}); name one")
    reader, serial, simulated = cards[0]
    return _pcsc_token(reader, serial, simulated, allow_unattested=allow_unattested)


def _explain_unusable_cards(wanted: int | None) -> None:
    """When no usable card matched, name the PIV cards that are present but unusable, and why."""
    from agent.tokens.inventory import list_piv_cards

    try:
        present = list_piv_cards()
    except KmsAgentError:
        return
    unusable = [c for c in present if not c.supported and (wanted is None or c.serial == str(wanted))]
    if unusable:
        why = "; ".join(f"{c.describe()} is unsupported because {c.reason}" for c in unusable)
        raise TokenUnsupported(why, hint="`kms-agent doctor` lists every card and what it lacks")


def find_piv_token(slot_public: Mapping[str, Any], home: Path) -> PivToken | None:
    """The present token (simulated under ``home`` first, then PC/SC) that holds this keyslot."""
    from agent.tokens.sim.piv_state import PivStateFile, list_piv_sims, piv_state_path

    slot = _SlotPublic(slot_public)
    for name in list_piv_sims(home):
        try:
            if PivStateFile(piv_state_path(home, name)).read().serial != slot.serial:
                continue
        except KmsAgentError:
            continue
        token = _sim_token(home, name)
        if token.holds(slot_public):
            return token
    for reader, serial, simulated in list_pcsc_piv_cards():
        if serial == slot.serial:
            token = _pcsc_token(reader, serial, simulated)
            if token.holds(slot_public):
                return token
    return None
