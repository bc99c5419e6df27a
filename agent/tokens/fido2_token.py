"""FIDO2 hmac-secret keyslots over python-fido2's raw ``Ctap2`` + ``ClientPin`` (research §2.3).

Why raw CTAP2 and not ``Fido2Client``: the approval must sign our own 32-byte digest as the
clientDataHash (WebAuthn would wrap it in clientDataJSON), and one getAssertion must yield both
that signature and the hmac-secret output. Any ``CtapDevice`` works underneath: ``CtapHidDevice``
(USB), ``CtapPcscDevice`` (NFC/CCID readers) or the simulator served as a CTAPHID connection.

Slot rules (research §5.4): user verification always (the KEK comes from the *UV* hmac secret, so a
stolen token without its PIN yields only the useless non-UV secret), credProtect=2 so the no-PIN
``up=false`` pre-flight can find the token holding a credential, non-resident credentials.

What enrolment refuses (docs/tokens.md): an authenticator that cannot test user presence (getInfo
``up: false``), one without hmac-secret or credProtect, and, unless the operator passes
``allow_unattested``, one whose attestation does not chain to a pinned root (self attestation,
``none``, a zero AAGUID, or an unknown vendor). The slot records what it enrolled: ``up`` and ``uv``
(checked on every approval), the model (AAGUID) and the ``attestation_root``.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, cast

from fido2 import cbor
from fido2.cose import CoseKey
from fido2.ctap import CtapDevice, CtapError
from fido2.ctap2 import AssertionResponse, Ctap2
from fido2.ctap2.extensions import HmacSecretExtension
from fido2.ctap2.pin import ClientPin
from fido2.hid import STATUS
from fido2.webauthn import (
    AuthenticatorData,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialRequestOptions,
    PublicKeyCredentialType,
)

from agent.errors import PinInvalid, PinRequired, TokenError, TokenUnsupported
from agent.tokens import attestation as trust
from agent.tokens.base import Approval, Enrolment, Prompts, Token, Unwrapped
from agent.tokens.fido2_errors import map_token_errors

logger = logging.getLogger(__name__)

KIND = "fido2-hmac"
CRED_PROTECT_OPTIONAL_WITH_LIST = 2
ES256 = -7
_ENROL_DOMAIN = b"kms-agent/v1/enrol\0"


class Fido2Token(Token):
    """One FIDO2 authenticator behind any python-fido2 ``CtapDevice``.

    :param anchors: extra attestation anchors besides Yubico's bundled FIDO roots (the simulator's
        test CA for simulated tokens).
    :param allow_unattested: enrol even without a verifiable attestation (the operator's explicit
        choice; recorded as ``attestation_root: "none"``).
    """

    kind = KIND

    def __init__(
        self,
        device: CtapDevice,
        label: str,
        *,
        simulated: bool = False,
        cancel: threading.Event | None = None,
        anchors: tuple[trust.Anchor, ...] = (),
        allow_unattested: bool = False,
    ) -> None:
        self.device = device
        self.label = label
        self.simulated = simulated
        self.cancel = cancel or threading.Event()
        self.anchors = anchors
        self.allow_unattested = allow_unattested
        with map_token_errors(label):
            self.ctap = Ctap2(device)
        self.info = self.ctap.info
        #: Set by discovery: where :meth:`close` returns the token instead of closing it.
        self.release: Callable[[Fido2Token], None] | None = None

    def close(self) -> None:
        """Done with it: back to the process's token pool when it came from there, else closed."""
        if self.release is not None:
            self.release(self)
        else:
            self.device.close()

    def discard(self) -> None:
        self.release = None
        self.device.close()

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is not None:
            self.discard()  # whatever went wrong, this handle is not trusted again
        else:
            self.close()

    # --- helpers ------------------------------------------------------------------------------
    def _keepalive(self, prompts: Prompts) -> Any:
        announced = False

        def on_keepalive(status: int) -> None:
            nonlocal announced
            if status == STATUS.UPNEEDED and not announced:
                announced = True
                prompts.touch(self.label)

        return on_keepalive

    def _read_pin(self, client_pin: ClientPin, prompts: Prompts) -> bytearray:
        if not self.info.options.get("clientPin"):
            raise PinRequired(
                f"{self.label} has no PIN set; kms-agent requires one",
                hint="set one, e.g. `ykman fido access change-pin`",
            )
        with map_token_errors(self.label):
            retries = client_pin.get_pin_retries()[0]
        return prompts.pin(self.label, retries)

    def _pin_token(self, client_pin: ClientPin, pin: bytearray, permissions: ClientPin.PERMISSION, rp_id: str) -> bytes:
        """A fresh pinUvAuthToken: CTAP 2.1 clears its permissions after each touch-requiring use."""
        try:
            # python-fido2 takes the PIN as str; this is the one unavoidable immutable copy.
            with map_token_errors(self.label):
                return client_pin.get_pin_token(pin.decode(), permissions, rp_id)
        except PinInvalid:
            with map_token_errors(self.label):
                left = client_pin.get_pin_retries()[0]
            raise PinInvalid(
                f"wrong PIN for {self.label}: {left} {'try' if left == 1 else 'tries'} left",
                attempts_remaining=left,
                hint="the token blocks its PIN at 0; a blocked FIDO2 PIN needs a reset",
            ) from None
        except UnicodeDecodeError:
            raise PinInvalid("the PIN must be UTF-8 text") from None

    def _hmac_assertion(
        self, slot: Mapping[str, Any], client_pin: ClientPin, pin_token: bytes, digest: bytes, prompts: Prompts
    ) -> tuple[bytearray, AssertionResponse]:
        rp_id = slot["rp_id"]
        descriptor = PublicKeyCredentialDescriptor(type=PublicKeyCredentialType.PUBLIC_KEY, id=slot["cred_id"])
        options = PublicKeyCredentialRequestOptions(
            challenge=digest,
            rp_id=rp_id,
            allow_credentials=[descriptor],
            extensions={"hmacGetSecret": {"salt1": slot["salt"]}},
        )
        protocol = client_pin.protocol
        with map_token_errors(self.label):
            processor = HmacSecretExtension(allow_hmac_secret=True).get_assertion(self.ctap, options, protocol)
            if processor is None:
                raise TokenUnsupported(f"{self.label} does not offer hmac-secret")
            response = self.ctap.get_assertion(
                rp_id,
                digest,
                [{"type": "public-key", "id": slot["cred_id"]}],
                extensions=processor.prepare_inputs(descriptor, pin_token),
                pin_uv_param=protocol.authenticate(pin_token, digest),
                pin_uv_protocol=protocol.VERSION,
                event=self.cancel,
                on_keepalive=self._keepalive(prompts),
            )
            outputs = processor.prepare_outputs(response, pin_token) or {}
        secret = outputs.get("hmacGetSecret")
        if secret is None or len(secret.output1) != 32:
            raise TokenError(f"{self.label} returned no hmac-secret output")
        return bytearray(secret.output1), response

    # --- Token contract -----------------------------------------------------------------------
    def check_capabilities(self) -> None:
        """Refuse, before any PIN or touch, an authenticator kms-agent cannot rely on.

        :raises TokenUnsupported: naming every missing capability at once.
        """
        missing = capability_problems(self.info.options, self.info.extensions)
        if missing:
            raise TokenUnsupported(
                f"{self.label} cannot be enrolled: {'; '.join(missing)}",
                hint="use a FIDO2 (CTAP 2.1) security key with a PIN, touch, hmac-secret and credProtect",
            )

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
        """Create a UV hmac-secret credential; see the module docstring for what is refused.

        :param allow_unattested: overrides the constructor's ``allow_unattested`` when given.
        :raises TokenUnsupported: a missing capability, or no verifiable attestation.
        """
        self.check_capabilities()
        unattested_ok = self.allow_unattested if allow_unattested is None else allow_unattested
        client_pin = ClientPin(self.ctap)
        pin = self._read_pin(client_pin, prompts)
        try:
            return self._enrol_with_pin(
                client_pin,
                pin,
                rp_id=rp_id,
                user_id=user_id,
                user_name=user_name,
                salt=salt,
                prompts=prompts,
                allow_unattested=unattested_ok,
            )
        finally:
            pin[:] = bytes(len(pin))

    def _enrol_with_pin(
        self,
        client_pin: ClientPin,
        pin: bytearray,
        *,
        rp_id: str,
        user_id: bytes,
        user_name: str,
        salt: bytes,
        prompts: Prompts,
        allow_unattested: bool,
    ) -> Enrolment:
        pin_token = self._pin_token(client_pin, pin, ClientPin.PERMISSION.MAKE_CREDENTIAL, rp_id)
        cdh = _sha256(_ENROL_DOMAIN + user_id)
        protocol = client_pin.protocol
        logger.info("Creating a credential on %s", self.label)
        with map_token_errors(self.label):
            att = self.ctap.make_credential(
                cdh,
                {"id": rp_id, "name": "kms-agent"},
                {"id": user_id, "name": user_name, "displayName": user_name},
                [{"type": "public-key", "alg": ES256}],
                extensions={"hmac-secret": True, "credProtect": CRED_PROTECT_OPTIONAL_WITH_LIST},
                options={"rk": False},
                pin_uv_param=protocol.authenticate(pin_token, cdh),
                pin_uv_protocol=protocol.VERSION,
                event=self.cancel,
                on_keepalive=self._keepalive(prompts),
            )
        auth_data = att.auth_data
        cred = auth_data.credential_data
        if cred is None or not (auth_data.extensions or {}).get("hmac-secret"):
            raise TokenUnsupported(f"{self.label} did not enable hmac-secret on the new credential")
        root = _verify_attestation(
            att.fmt, att.att_stmt, auth_data, cdh, self.label, anchors=(*trust.fido_anchors(), *self.anchors)
        )
        if root is None and not allow_unattested:
            raise TokenUnsupported(
                f"{self.label} has no verifiable attestation ({_attestation_kind(att.fmt, att.att_stmt, auth_data)}): "
                "nothing proves its keys live in a hardware token",
                hint="enrol it anyway only if you trust this token: --allow-unattested",
            )
        simulated = self.simulated or (root is not None and root.simulated)
        slot_public: dict[str, Any] = {
            "rp_id": rp_id,
            "cred_id": bytes(cred.credential_id),
            "cose_key": cbor.encode(dict(cred.public_key)),
            "aaguid": bytes(cred.aaguid),
            "att_fmt": att.fmt,
            "att_stmt": cbor.encode(att.att_stmt),
            "salt": salt,
            "kdf_salt": salt,
            "up": True,
            "uv": True,
            "cred_protect": CRED_PROTECT_OPTIONAL_WITH_LIST,
            "sign_count": auth_data.counter,
            "model": str(uuid.UUID(bytes=bytes(cred.aaguid))),
            "attestation_root": root.name if root is not None else trust.UNATTESTED,
            "transports": [str(t) for t in (self.info.transports or [])],
        }
        # A second touch: the hmac output only comes from getAssertion (before CTAP 2.2's hmac-secret-mc).
        pin_token = self._pin_token(client_pin, pin, ClientPin.PERMISSION.GET_ASSERTION, rp_id)
        ikm, _ = self._hmac_assertion(slot_public, client_pin, pin_token, cdh, prompts)
        extra = {"attestation_root": slot_public["attestation_root"], "model": slot_public["model"]}
        return Enrolment(KIND, self.label, slot_public, ikm, simulated=simulated, extra=extra)

    def holds(self, slot_public: Mapping[str, Any]) -> bool:
        """``up=false`` pre-flight (systemd's trick): no PIN, no touch, answers only for our credential."""
        try:
            self.ctap.get_assertion(
                slot_public["rp_id"],
                bytes(32),
                [{"type": "public-key", "id": slot_public["cred_id"]}],
                options={"up": False},
            )
        except CtapError as exc:
            if exc.code == CtapError.ERR.NO_CREDENTIALS:
                return False
            with map_token_errors(self.label):
                raise
        except Exception:
            with map_token_errors(self.label):
                raise
        return True

    def unwrap(self, slot_public: Mapping[str, Any], *, digest: bytes, prompts: Prompts) -> Unwrapped:
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        client_pin = ClientPin(self.ctap)
        pin = self._read_pin(client_pin, prompts)
        try:
            pin_token = self._pin_token(client_pin, pin, ClientPin.PERMISSION.GET_ASSERTION, slot_public["rp_id"])
        finally:
            pin[:] = bytes(len(pin))
        ikm, response = self._hmac_assertion(slot_public, client_pin, pin_token, digest, prompts)
        approval = verify_assertion(slot_public, digest, bytes(response.auth_data), response.signature, self.label)
        return Unwrapped(ikm, approval)


@functools.lru_cache(maxsize=4096)
def _signature_verifies(cose_key: bytes, message: bytes, signature: bytes) -> bool:
    """A pure function of its bytes, so remembered: a batch verifies each approval when it records it
    and again when it signs, and every decision re-verifies the approvals already in the log."""
    try:
        CoseKey.parse(cast(Mapping[int, Any], cbor.decode(cose_key))).verify(message, signature)
    except Exception:
        return False
    return True


def verify_assertion(
    slot_public: Mapping[str, Any], digest: bytes, auth_data: bytes, signature: bytes, label: str
) -> Approval:
    """Check a getAssertion over ``digest`` against the enrolled key; usable offline by auditors."""
    data = AuthenticatorData(auth_data)
    if not _signature_verifies(bytes(slot_public["cose_key"]), auth_data + digest, bytes(signature)):
        raise TokenError(f"{label} returned an assertion that does not verify against its enrolled key")
    if data.rp_id_hash != _sha256(slot_public["rp_id"].encode()):
        raise TokenError(f"{label} signed for another relying party")
    up = bool(data.flags & AuthenticatorData.FLAG.UP)
    uv = bool(data.flags & AuthenticatorData.FLAG.UV)
    if not up:
        raise TokenError(f"{label} did not confirm a touch for this operation (no user presence flag)")
    # Slots enrolled before "uv" was recorded were all UV slots: a missing field means UV.
    if slot_public.get("uv", True) and not uv:
        raise TokenError(f"{label} did not verify the PIN for this operation (no user verification flag)")
    return Approval(KIND, auth_data, signature, data.counter, up, uv)


def capability_problems(options: Mapping[str, Any], extensions: Any) -> list[str]:
    """What a getInfo (options, extensions) lacks for a kms-agent slot; empty when nothing does."""
    problems = []
    # CTAP 2.1 §6.4: "up" absent means true; false means the authenticator cannot test presence.
    if options.get("up") is False:
        problems.append("it cannot test user presence (getInfo option up=false), so a touch proves nothing")
    if HmacSecretExtension.NAME not in (extensions or ()):
        problems.append("it does not support the hmac-secret extension")
    if "credProtect" not in (extensions or ()):
        problems.append("it does not support credProtect (CTAP 2.1)")
    return problems


def _attestation_kind(fmt: str, att_stmt: Mapping[str, Any], auth_data: AuthenticatorData) -> str:
    cred = auth_data.credential_data
    zero_aaguid = cred is None or not any(bytes(cred.aaguid))
    if fmt == "none" or not att_stmt:
        what = 'attestation format "none"'
    elif not att_stmt.get("x5c"):
        what = "self attestation"
    else:
        what = "a certificate chain to no trusted root"
    return what + (", all-zero AAGUID" if zero_aaguid else "")


def _verify_attestation(
    fmt: str,
    att_stmt: Mapping[str, Any],
    auth_data: AuthenticatorData,
    cdh: bytes,
    label: str,
    *,
    anchors: tuple[trust.Anchor, ...],
) -> trust.Anchor | None:
    """Check the statement's signature, then the anchor its chain ends at (None: unattested).

    :raises TokenError: the statement is malformed or its signature does not verify; a token
        that lies about its attestation is refused even with ``allow_unattested``.
    """
    from cryptography import x509
    from fido2.attestation import Attestation, UnsupportedType

    if fmt == "none" or not att_stmt:
        return None
    attestation = Attestation.for_type(fmt)()
    if isinstance(attestation, UnsupportedType):
        logger.warning("%s uses attestation format %s, which kms-agent cannot check", label, fmt)
        return None
    try:
        attestation.verify(att_stmt, auth_data, cdh)
    except Exception:
        raise TokenError(f"{label} returned an attestation that does not verify") from None
    x5c = att_stmt.get("x5c") or []
    cred = auth_data.credential_data
    if not x5c or cred is None or not any(bytes(cred.aaguid)):
        return None  # self attestation, or a chain that names no model
    try:
        chain = [x509.load_der_x509_certificate(bytes(der)) for der in x5c]
    except (ValueError, TypeError):
        raise TokenError(f"{label} returned an unreadable attestation certificate") from None
    anchor = trust.chain_anchor(chain, anchors)
    if anchor is None:
        logger.warning(
            "%s: attestation issued by %s chains to no trusted root", label, trust.describe_issuer(chain[-1])
        )
    return anchor


def _sha256(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()
