"""A simulated CTAP 2.1 authenticator, independent of any transport. INSECURE: demos and tests only.

:meth:`SimAuthenticator.handle_cbor` takes what a CTAPHID CBOR frame carries (command byte +
CBOR) and returns what the token answers (status byte + canonical CBOR), so python-fido2's own
``Ctap2``/``ClientPin``/``HmacSecretExtension``/``Fido2Client`` run unchanged above it (through
:mod:`agent.tokens.sim.ctaphid`). It implements getInfo, clientPIN (protocols 1 and 2),
makeCredential (ES256, packed attestation, hmac-secret, credProtect), getAssertion (allowList,
``up=false`` pre-flight, hmac-secret with separate UV / non-UV CredRandoms), selection and reset.

Every secret it has (PIN, master key, attestation key) sits in clear in a JSON file: it proves the
agent's protocol handling, never its security. Spec: CTAP 2.1 PS, §6.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor
from fido2.cose import ES256
from fido2.ctap import STATUS
from fido2.ctap2 import Ctap2
from fido2.webauthn import AttestedCredentialData, AuthenticatorData

from agent.tokens.sim import credentials
from agent.tokens.sim.attestation import load_attestation_key
from agent.tokens.sim.client_pin import PERM, PinUvState
from agent.tokens.sim.ctap_status import ERR, CtapStatus, TokenPulled
from agent.tokens.sim.state import PIN_RETRIES, SimStateFile, SimTokenState
from agent.tokens.sim.touch import TouchProvider, TouchResult, as_touch_result, env_touch

logger = logging.getLogger(__name__)

CMD = Ctap2.CMD
FLAG = AuthenticatorData.FLAG
MAX_MSG_SIZE = 1200
MAX_CREDS_IN_LIST = 8
KEEPALIVE_SECONDS = 0.1
#: CTAP 2.1 §6.6: reset only within 10 s of power-up.
RESET_WINDOW_SECONDS = 10.0
CRED_PROTECT_LEVELS = (1, 2, 3)
UV_REQUIRED = 3
_TOUCH_ERRORS = {TouchResult.DENIED: ERR.OPERATION_DENIED, TouchResult.TIMEOUT: ERR.USER_ACTION_TIMEOUT}

#: ``keepalive(status)``: tell the host we are still working (STATUS.PROCESSING / STATUS.UPNEEDED).
Keepalive = Callable[[int], None]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _get(req: Mapping[int, Any], key: int, kind: type, *, required: bool = False) -> Any:
    """A request parameter of the right CBOR type, or the CTAP error a real token would give."""
    value = req.get(key)
    if value is None:
        if required:
            raise CtapStatus(ERR.MISSING_PARAMETER)
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise CtapStatus(ERR.CBOR_UNEXPECTED_TYPE)
    return value


class SimAuthenticator:
    """One "powered-up" simulated token: persistent state in ``store``, PIN/UV state in RAM.

    :param store: the token's state file.
    :param touch: who touches it; defaults to :func:`~agent.tokens.sim.touch.env_touch`.
    :param transport: what getInfo reports as the token's transport: ``usb`` behind CTAPHID,
        ``nfc`` when served over PC/SC (:mod:`agent.tokens.sim.pcsc_server`).
    """

    def __init__(self, store: SimStateFile, *, touch: TouchProvider | None = None, transport: str = "usb") -> None:
        self.store = store
        self.touch: TouchProvider = touch or env_touch
        self.transport = transport
        self.pin_uv = PinUvState()
        self._powered_at = time.monotonic()

    @property
    def name(self) -> str:
        return self.store.name

    def handle_cbor(self, request: bytes, *, keepalive: Keepalive, cancel: threading.Event) -> bytes:
        """Process one CTAP2 command: ``cmd_byte + CBOR`` in, ``status_byte + CBOR`` out.

        :raises TokenPulled: the token was removed (touch mode ``remove``, or unplugged meanwhile);
            the transport must then fail like a pulled USB device.
        """
        if not request:
            return bytes([ERR.INVALID_LENGTH])
        if len(request) > MAX_MSG_SIZE:
            return bytes([ERR.REQUEST_TOO_LARGE])
        cmd, body = request[0], request[1:]
        try:
            req = self._decode(body)
        except CtapStatus as exc:
            return bytes([exc.code])

        def waiting_for_lock() -> None:
            # Another process is using this token: say "processing", honour a CANCEL meanwhile.
            if cancel.is_set():
                raise CtapStatus(ERR.KEEPALIVE_CANCEL)
            keepalive(STATUS.PROCESSING)

        try:
            with self.store.transaction(waiting_for_lock) as state:
                if not state.plugged:
                    raise TokenPulled(f"sim:{self.name} is unplugged")
                try:
                    result = self._dispatch(cmd, req, state, keepalive, cancel)
                except CtapStatus as exc:
                    # Answer the error but keep state changes (a wrong PIN must still cost a retry).
                    return bytes([exc.code])
        except CtapStatus as exc:
            return bytes([exc.code])
        return b"\0" if result is None else b"\0" + cbor.encode(result)

    @staticmethod
    def _decode(body: bytes) -> Mapping[int, Any]:
        if not body:
            return {}
        try:
            value = cbor.decode(body)
        except Exception:  # fido2's decoder raises ValueError/IndexError/KeyError on garbage
            raise CtapStatus(ERR.INVALID_CBOR) from None
        if not isinstance(value, Mapping):
            raise CtapStatus(ERR.CBOR_UNEXPECTED_TYPE)
        return value

    def _dispatch(
        self, cmd: int, req: Mapping[int, Any], state: SimTokenState, keepalive: Keepalive, cancel: threading.Event
    ) -> dict[Any, Any] | None:
        if cmd == CMD.GET_INFO:
            return self._get_info(state)
        if cmd == CMD.CLIENT_PIN:
            return self.pin_uv.handle(req, state) or None
        if cmd == CMD.MAKE_CREDENTIAL:
            return self._make_credential(req, state, keepalive, cancel)
        if cmd == CMD.GET_ASSERTION:
            return self._get_assertion(req, state, keepalive, cancel)
        if cmd == CMD.SELECTION:
            self._user_presence(keepalive, cancel)
            return None
        if cmd == CMD.RESET:
            self._reset(state, keepalive, cancel)
            return None
        if cmd == CMD.GET_NEXT_ASSERTION:
            raise CtapStatus(ERR.NOT_ALLOWED)  # never more than one assertion: allowList only
        raise CtapStatus(ERR.INVALID_COMMAND)

    # --- touch ------------------------------------------------------------------------------------
    def _user_presence(self, keepalive: Keepalive, cancel: threading.Event, state: SimTokenState | None = None) -> None:
        """Wait for the touch provider, sending UPNEEDED every ~100 ms; map its answer to CTAP."""
        if state is not None and "no-user-presence" in state.quirks:
            return  # the defect under test: no way to test presence, yet UP is reported (see _flags)
        keepalive(STATUS.UPNEEDED)
        stop = threading.Event()
        answer: list[TouchResult] = []
        failure: list[BaseException] = []

        def ask() -> None:
            try:
                answer.append(self.touch(self.name, stop))
            except BaseException as exc:  # reported below; a thread must not die silently
                failure.append(exc)

        worker = threading.Thread(target=ask, name=f"sim:{self.name} touch", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                if cancel.is_set():
                    raise CtapStatus(ERR.KEEPALIVE_CANCEL)
                worker.join(KEEPALIVE_SECONDS)
                if worker.is_alive():
                    keepalive(STATUS.UPNEEDED)
        finally:
            stop.set()
        if failure:
            logger.error("Touch provider of sim:%s failed: %r", self.name, failure[0])
            raise CtapStatus(ERR.OTHER)
        result = as_touch_result(answer[0])
        if cancel.is_set():
            raise CtapStatus(ERR.KEEPALIVE_CANCEL)
        if result == TouchResult.REMOVED:
            raise TokenPulled(f"sim:{self.name} was pulled out while waiting for a touch")
        if result != TouchResult.GRANTED:
            raise CtapStatus(_TOUCH_ERRORS[result])

    # --- getInfo (0x04) ---------------------------------------------------------------------------
    def _get_info(self, state: SimTokenState) -> dict[int, Any]:
        return {
            0x01: ["FIDO_2_0", "FIDO_2_1"],
            0x02: ["credProtect", "hmac-secret"],
            0x03: state.aaguid,
            0x04: {
                "rk": False,
                "up": "no-user-presence" not in state.quirks,
                "plat": False,
                "clientPin": state.pin is not None,
                "pinUvAuthToken": True,
            },
            0x05: MAX_MSG_SIZE,
            # Always listed, PIN or not: without it python-fido2 silently skips hmac-secret.
            0x06: [2, 1],
            0x07: MAX_CREDS_IN_LIST,
            0x08: credentials.CRED_ID_LENGTH,
            0x09: [self.transport],
            0x0A: [{"alg": ES256.ALGORITHM, "type": "public-key"}],
            0x0D: 4,
            0x0E: 1,
        }

    # --- shared by makeCredential and getAssertion ---------------------------------------------
    def _legacy_pin_probe(self, state: SimTokenState, keepalive: Keepalive, cancel: threading.Event) -> None:
        """A zero-length pinUvAuthParam: "touch to pick this token", then report the PIN state."""
        self._user_presence(keepalive, cancel)
        raise CtapStatus(ERR.PIN_INVALID if state.pin is not None else ERR.PIN_NOT_SET)

    def _user_verified(
        self,
        req: Mapping[int, Any],
        param_key: int,
        cdh: bytes,
        permission: PERM,
        rp_id: str,
        state: SimTokenState,
        keepalive: Keepalive,
        cancel: threading.Event,
    ) -> bool:
        param = _get(req, param_key, bytes)
        if param is None:
            return False
        if not param:
            self._legacy_pin_probe(state, keepalive, cancel)
        version = _get(req, param_key + 1, int, required=True)
        self.pin_uv.verify_token(version, param, cdh, permission, rp_id)
        return True

    @staticmethod
    def _options(req: Mapping[int, Any], key: int, uv_by_pin: bool) -> dict[str, bool]:
        options = _get(req, key, Mapping) or {}
        if any(not isinstance(v, bool) for v in options.values()):
            raise CtapStatus(ERR.CBOR_UNEXPECTED_TYPE)
        # With a pinUvAuthParam, "uv" counts as false (§6.1.2 step 5); there is no built-in UV.
        if options.get("uv") and not uv_by_pin:
            raise CtapStatus(ERR.INVALID_OPTION)
        return dict(options)

    def _auth_data(
        self,
        state: SimTokenState,
        rp_id_hash: bytes,
        flags: FLAG,
        credential_data: bytes = b"",
        extensions: Mapping[str, Any] | None = None,
    ) -> AuthenticatorData:
        state.sign_count += 1
        if extensions:
            flags |= FLAG.ED
        return cast(
            AuthenticatorData,
            AuthenticatorData.create(
                rp_id_hash, flags, state.sign_count, credential_data, dict(extensions) if extensions else None
            ),
        )

    # --- makeCredential (0x01) ---------------------------------------------------------------------
    def _make_credential(
        self, req: Mapping[int, Any], state: SimTokenState, keepalive: Keepalive, cancel: threading.Event
    ) -> dict[int, Any]:
        cdh = _get(req, 1, bytes, required=True)
        rp = _get(req, 2, Mapping, required=True)
        user = _get(req, 3, Mapping, required=True)
        params = _get(req, 4, list, required=True)
        exclude = _get(req, 5, list) or []
        extensions = _get(req, 6, Mapping) or {}
        rp_id = rp.get("id")
        if not isinstance(rp_id, str) or not isinstance(user.get("id"), bytes):
            raise CtapStatus(
                ERR.MISSING_PARAMETER if rp_id is None or user.get("id") is None else ERR.CBOR_UNEXPECTED_TYPE
            )
        if not any(
            isinstance(p, Mapping) and p.get("type") == "public-key" and p.get("alg") == ES256.ALGORITHM for p in params
        ):
            raise CtapStatus(ERR.UNSUPPORTED_ALGORITHM)
        uv_by_pin = req.get(8) is not None
        options = self._options(req, 7, uv_by_pin)
        if options.get("rk"):
            raise CtapStatus(ERR.UNSUPPORTED_OPTION)  # no resident keys: every credential is in its id
        if options.get("up") is False:
            raise CtapStatus(ERR.INVALID_OPTION)
        uv = self._user_verified(req, 8, cdh, PERM.MAKE_CREDENTIAL, rp_id, state, keepalive, cancel)
        if not uv and state.pin is not None:
            raise CtapStatus(ERR.PUAT_REQUIRED)  # clientPin set and no makeCredUvNotRqd
        cred_protect = extensions.get("credProtect", 1)
        if cred_protect not in CRED_PROTECT_LEVELS or isinstance(cred_protect, bool):
            raise CtapStatus(ERR.INVALID_OPTION)
        rp_id_hash = _sha256(rp_id.encode())
        for entry in exclude:
            cred_id = entry.get("id") if isinstance(entry, Mapping) else None
            found = (
                credentials.open_credential(state.master_key, rp_id_hash, cred_id)
                if isinstance(cred_id, bytes)
                else None
            )
            if found is not None and (found.cred_protect != UV_REQUIRED or uv):
                self._user_presence(keepalive, cancel)
                raise CtapStatus(ERR.CREDENTIAL_EXCLUDED)

        self._user_presence(keepalive, cancel, state)
        if uv:
            self.pin_uv.consume_token()
        hmac_secret = extensions.get("hmac-secret") is True
        cred = credentials.SimCredential.generate(cred_protect=cred_protect, hmac_secret=hmac_secret)
        cred_id = credentials.seal(state.master_key, rp_id_hash, cred)
        public = ES256.from_cryptography_key(cred.private_key.public_key())
        outputs: dict[str, Any] = {}
        if hmac_secret:
            outputs["hmac-secret"] = True
        if "credProtect" in extensions:
            outputs["credProtect"] = cred_protect
        flags = FLAG.UP | FLAG.AT | (FLAG.UV if uv else 0)
        auth_data = self._auth_data(
            state, rp_id_hash, flags, AttestedCredentialData.create(state.aaguid, cred_id, public), outputs
        )
        fmt, att_stmt = self._attest(state, auth_data, cdh, cred.private_key)
        logger.debug("sim:%s created a credential for %s", self.name, rp_id)
        return {1: fmt, 2: bytes(auth_data), 3: att_stmt}

    @staticmethod
    def _attest(
        state: SimTokenState, auth_data: AuthenticatorData, cdh: bytes, cred_key: ec.EllipticCurvePrivateKey
    ) -> tuple[str, dict[str, Any]]:
        """The attestation statement (WebAuthn §8.2): packed with x5c, packed self, or none."""
        signed = bytes(auth_data) + cdh
        if "no-attestation" in state.quirks:
            return "none", {}
        if "self-attestation" in state.quirks:
            return "packed", {"alg": ES256.ALGORITHM, "sig": cred_key.sign(signed, ec.ECDSA(hashes.SHA256()))}
        att_key = load_attestation_key(state.attestation_key)
        signature = att_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return "packed", {"alg": ES256.ALGORITHM, "sig": signature, "x5c": [state.attestation_cert]}

    # --- getAssertion (0x02) -----------------------------------------------------------------------
    def _get_assertion(
        self, req: Mapping[int, Any], state: SimTokenState, keepalive: Keepalive, cancel: threading.Event
    ) -> dict[int, Any]:
        rp_id = _get(req, 1, str, required=True)
        cdh = _get(req, 2, bytes, required=True)
        allow = _get(req, 3, list) or []
        extensions = _get(req, 4, Mapping) or {}
        uv_by_pin = req.get(6) is not None
        options = self._options(req, 5, uv_by_pin)
        if "rk" in options:
            raise CtapStatus(ERR.UNSUPPORTED_OPTION)
        up = options.get("up", True)
        uv = self._user_verified(req, 6, cdh, PERM.GET_ASSERTION, rp_id, state, keepalive, cancel)

        rp_id_hash = _sha256(rp_id.encode())
        found: tuple[bytes, credentials.SimCredential] | None = None
        for entry in allow:
            if not isinstance(entry, Mapping) or entry.get("type") != "public-key":
                continue
            cred_id = entry.get("id")
            if not isinstance(cred_id, bytes):
                continue
            cred = credentials.open_credential(state.master_key, rp_id_hash, cred_id)
            # credProtect 3 (userVerificationRequired): invisible without UV, even to a pre-flight.
            if cred is not None and (cred.cred_protect != UV_REQUIRED or uv):
                found = (cred_id, cred)
                break

        if up:
            # A real token makes the user touch even when it holds none of the credentials, so a
            # page cannot probe silently which tokens are plugged in; only up=false answers at once.
            self._user_presence(keepalive, cancel, state)
            if uv:
                self.pin_uv.consume_token()
        if found is None:
            raise CtapStatus(ERR.NO_CREDENTIALS)
        cred_id, cred = found

        outputs: dict[str, Any] = {}
        hmac_input = extensions.get("hmac-secret")
        if up and cred.hmac_secret and hmac_input is not None:
            proto, shared, salts = self.pin_uv.open_salts(hmac_input)
            cred_random = cred.cred_random_with_uv if uv else cred.cred_random_without_uv
            output = b"".join(hmac.digest(cred_random, salts[i : i + 32], "sha256") for i in range(0, len(salts), 32))
            outputs["hmac-secret"] = bytes(proto.encrypt(shared, output))
        flags = (FLAG.UP if up else 0) | (FLAG.UV if uv else 0)
        auth_data = self._auth_data(state, rp_id_hash, FLAG(flags), extensions=outputs)
        signature = cred.private_key.sign(bytes(auth_data) + cdh, ec.ECDSA(hashes.SHA256()))
        return {1: {"id": cred_id, "type": "public-key"}, 2: bytes(auth_data), 3: signature}

    # --- reset (0x07) --------------------------------------------------------------------------
    def _reset(self, state: SimTokenState, keepalive: Keepalive, cancel: threading.Event) -> None:
        """Forget every credential and the PIN (a new master key); keep AAGUID and attestation."""
        if time.monotonic() - self._powered_at > RESET_WINDOW_SECONDS:
            raise CtapStatus(ERR.NOT_ALLOWED)
        self._user_presence(keepalive, cancel)
        state.master_key = secrets.token_bytes(32)
        state.pin, state.pin_retries = None, PIN_RETRIES
        self.pin_uv = PinUvState()
        logger.info("sim:%s was reset", self.name)
