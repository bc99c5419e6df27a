"""Authenticator side of CTAP 2.1 clientPIN (PIN/UV auth protocols 1 and 2) for the simulator.

The symmetric halves of both protocols (KDF, AES-CBC, HMAC) are python-fido2's own
``PinProtocolV1/V2``: the math is identical on both ends, so the simulator cannot drift from the
client it is tested with. The authenticator-only parts (its key-agreement key, the
pinUvAuthToken with permissions and RP ID, retry counters) live in :class:`PinUvState`, which,
like a real token's RAM, starts fresh at every power-up (every ``open_sim_hid_device``).

Spec: CTAP 2.1 §6.5 (authenticatorClientPIN) and §6.5.5.7 (pinUvAuthToken permissions).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2

from agent.tokens.sim.ctap_status import ERR, CtapStatus
from agent.tokens.sim.state import PIN_RETRIES, SimTokenState

PERM = ClientPin.PERMISSION
#: Permissions this authenticator can grant (it has no credMgmt, bioEnroll, largeBlobs, config).
SUPPORTED_PERMISSIONS = PERM.MAKE_CREDENTIAL | PERM.GET_ASSERTION
#: After three wrong PINs in a row the token refuses PIN entry until it is power-cycled.
MAX_CONSECUTIVE_PIN_FAILURES = 3
#: PinProtocolV2 extends V1, so V1 is the type that has ``kdf`` for both.
PROTOCOLS: dict[int, PinProtocolV1] = {1: PinProtocolV1(), 2: PinProtocolV2()}
_CMD = ClientPin.CMD
_RESULT = ClientPin.RESULT


def protocol(version: Any) -> PinProtocolV1:
    """The PIN/UV protocol ``version`` names, or INVALID_PARAMETER / MISSING_PARAMETER."""
    if version is None:
        raise CtapStatus(ERR.MISSING_PARAMETER)
    if not isinstance(version, int) or isinstance(version, bool) or version not in PROTOCOLS:
        raise CtapStatus(ERR.INVALID_PARAMETER)
    return PROTOCOLS[version]


def _mac_ok(proto: PinProtocolV1, key: bytes, message: bytes, mac: Any) -> bool:
    return isinstance(mac, bytes) and hmac.compare_digest(bytes(proto.authenticate(key, message)), mac)


def _decrypt(proto: PinProtocolV1, key: bytes, ciphertext: Any, plain_len: int) -> bytes:
    """Decrypt a block-aligned ciphertext of exactly ``plain_len`` plaintext bytes."""
    iv_len = 16 if proto.VERSION == 2 else 0
    if not isinstance(ciphertext, bytes) or len(ciphertext) != iv_len + plain_len:
        raise CtapStatus(ERR.INVALID_PARAMETER)
    return bytes(proto.decrypt(key, ciphertext))


class PinUvState:
    """What the token holds in RAM for PIN/UV: reset at power-up, never persisted."""

    def __init__(self) -> None:
        self.key_agreement = ec.generate_private_key(ec.SECP256R1())
        self.consecutive_failures = 0
        self.token: bytes | None = None
        self.permissions = PERM(0)
        self.rp_id: str | None = None

    # --- shared secret --------------------------------------------------------------------------
    def public_cose_key(self) -> dict[int, Any]:
        numbers = self.key_agreement.public_key().public_numbers()
        # alg -25 (ECDH-ES+HKDF-256) "although this is NOT the algorithm actually used" (spec).
        return {1: 2, 3: -25, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}

    def shared_secret(self, proto: PinProtocolV1, peer: Any) -> bytes:
        """ECDH with the platform's COSE key, then the protocol's KDF."""
        if not isinstance(peer, Mapping) or peer.get(1) != 2 or peer.get(-1) != 1:
            raise CtapStatus(ERR.INVALID_PARAMETER)
        x, y = peer.get(-2), peer.get(-3)
        if not (isinstance(x, bytes) and isinstance(y, bytes) and len(x) == len(y) == 32):
            raise CtapStatus(ERR.INVALID_PARAMETER)
        try:
            point = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            ).public_key()
        except ValueError:
            raise CtapStatus(ERR.INVALID_PARAMETER) from None
        z = self.key_agreement.exchange(ec.ECDH(), point)
        return bytes(proto.kdf(z))

    def regenerate_key_agreement(self) -> None:
        self.key_agreement = ec.generate_private_key(ec.SECP256R1())

    # --- pinUvAuthToken -------------------------------------------------------------------------
    def reset_token(self) -> None:
        """Invalidate the current pinUvAuthToken (a new PIN, a reset, a failed check)."""
        self.token, self.permissions, self.rp_id = None, PERM(0), None

    def verify_token(self, version: Any, param: Any, message: bytes, permission: PERM, rp_id: str) -> None:
        """Check a command's pinUvAuthParam, its permission and its RP binding (binding it if unbound).

        :raises CtapStatus: PIN_AUTH_INVALID on any mismatch (CTAP 2.1 §6.1.2 step 11, §6.2.2 step 6).
        """
        proto = protocol(version)
        if self.token is None or not _mac_ok(proto, self.token, message, param):
            raise CtapStatus(ERR.PIN_AUTH_INVALID)
        if not self.permissions & permission:
            raise CtapStatus(ERR.PIN_AUTH_INVALID)
        if self.rp_id is not None and self.rp_id != rp_id:
            raise CtapStatus(ERR.PIN_AUTH_INVALID)
        self.rp_id = rp_id

    def consume_token(self) -> None:
        """After a user-present mc/ga: clear the UP/UV flags and every permission except lbw.

        CTAP 2.1 §6.1.2 step 14 / §6.2.2 step 9: a token that was used with a touch cannot be used
        again for another makeCredential or getAssertion; the platform must get a new one.
        """
        self.permissions &= PERM.LARGE_BLOB_WRITE

    # --- the clientPIN command ------------------------------------------------------------------
    def handle(self, req: Mapping[int, Any], state: SimTokenState) -> dict[int, Any]:
        """Run one clientPIN subcommand against ``state`` (which the caller persists)."""
        sub = req.get(2)
        if sub is None:
            raise CtapStatus(ERR.MISSING_PARAMETER)
        if sub == _CMD.GET_PIN_RETRIES:
            return {
                _RESULT.PIN_RETRIES: state.pin_retries,
                _RESULT.POWER_CYCLE_STATE: self.consecutive_failures >= MAX_CONSECUTIVE_PIN_FAILURES,
            }
        proto = protocol(req.get(1))
        if sub == _CMD.GET_KEY_AGREEMENT:
            return {_RESULT.KEY_AGREEMENT: self.public_cose_key()}
        if sub == _CMD.SET_PIN:
            self._set_pin(proto, req, state)
            return {}
        if sub == _CMD.CHANGE_PIN:
            self._change_pin(proto, req, state)
            return {}
        if sub in (_CMD.GET_TOKEN_USING_PIN_LEGACY, _CMD.GET_TOKEN_USING_PIN):
            return self._get_token(proto, sub, req, state)
        raise CtapStatus(ERR.INVALID_SUBCOMMAND)

    def _new_pin(self, proto: PinProtocolV1, shared: bytes, new_pin_enc: Any) -> str:
        padded = _decrypt(proto, shared, new_pin_enc, 64)
        raw = padded.split(b"\0", 1)[0]
        if padded[len(raw) :] != bytes(64 - len(raw)):
            raise CtapStatus(ERR.PIN_POLICY_VIOLATION)
        try:
            pin = raw.decode()
        except UnicodeDecodeError:
            raise CtapStatus(ERR.PIN_POLICY_VIOLATION) from None
        if len(pin) < 4 or len(raw) > 63:
            raise CtapStatus(ERR.PIN_POLICY_VIOLATION)
        return pin

    def _set_pin(self, proto: PinProtocolV1, req: Mapping[int, Any], state: SimTokenState) -> None:
        peer, param, new_pin_enc = req.get(3), req.get(4), req.get(5)
        if peer is None or param is None or new_pin_enc is None:
            raise CtapStatus(ERR.MISSING_PARAMETER)
        if state.pin is not None:
            raise CtapStatus(ERR.PIN_AUTH_INVALID)
        shared = self.shared_secret(proto, peer)
        if not isinstance(new_pin_enc, bytes) or not _mac_ok(proto, shared, new_pin_enc, param):
            raise CtapStatus(ERR.PIN_AUTH_INVALID)
        state.pin = self._new_pin(proto, shared, new_pin_enc)
        state.pin_retries = PIN_RETRIES

    def _check_pin(self, proto: PinProtocolV1, shared: bytes, pin_hash_enc: Any, state: SimTokenState) -> None:
        """Compare the platform's encrypted LEFT(SHA-256(PIN), 16), spending a retry first (§6.5.5.5)."""
        assert state.pin is not None
        pin_hash = _decrypt(proto, shared, pin_hash_enc, 16)
        state.pin_retries -= 1
        if hmac.compare_digest(pin_hash, hashlib.sha256(state.pin.encode()).digest()[:16]):
            state.pin_retries = PIN_RETRIES
            self.consecutive_failures = 0
            return
        self.regenerate_key_agreement()
        self.consecutive_failures += 1
        if state.pin_retries <= 0:
            raise CtapStatus(ERR.PIN_BLOCKED)
        if self.consecutive_failures >= MAX_CONSECUTIVE_PIN_FAILURES:
            raise CtapStatus(ERR.PIN_AUTH_BLOCKED)
        raise CtapStatus(ERR.PIN_INVALID)

    def _pin_gate(self, state: SimTokenState) -> None:
        if state.pin is None:
            raise CtapStatus(ERR.PIN_NOT_SET)
        if state.pin_retries <= 0:
            raise CtapStatus(ERR.PIN_BLOCKED)
        if self.consecutive_failures >= MAX_CONSECUTIVE_PIN_FAILURES:
            raise CtapStatus(ERR.PIN_AUTH_BLOCKED)

    def _change_pin(self, proto: PinProtocolV1, req: Mapping[int, Any], state: SimTokenState) -> None:
        peer, param, new_pin_enc, pin_hash_enc = req.get(3), req.get(4), req.get(5), req.get(6)
        if peer is None or param is None or new_pin_enc is None or pin_hash_enc is None:
            raise CtapStatus(ERR.MISSING_PARAMETER)
        self._pin_gate(state)
        shared = self.shared_secret(proto, peer)
        if not (
            isinstance(new_pin_enc, bytes)
            and isinstance(pin_hash_enc, bytes)
            and _mac_ok(proto, shared, new_pin_enc + pin_hash_enc, param)
        ):
            raise CtapStatus(ERR.PIN_AUTH_INVALID)
        self._check_pin(proto, shared, pin_hash_enc, state)
        state.pin = self._new_pin(proto, shared, new_pin_enc)
        self.reset_token()

    def _get_token(
        self, proto: PinProtocolV1, sub: int, req: Mapping[int, Any], state: SimTokenState
    ) -> dict[int, Any]:
        peer, pin_hash_enc, perms, rp_id = req.get(3), req.get(6), req.get(9), req.get(10)
        if peer is None or pin_hash_enc is None:
            raise CtapStatus(ERR.MISSING_PARAMETER)
        if sub == _CMD.GET_TOKEN_USING_PIN_LEGACY:
            if perms is not None or rp_id is not None:
                raise CtapStatus(ERR.INVALID_PARAMETER)
            granted, bound = PERM.MAKE_CREDENTIAL | PERM.GET_ASSERTION, None
        else:
            if perms is None:
                raise CtapStatus(ERR.MISSING_PARAMETER)
            if not isinstance(perms, int) or perms <= 0 or (rp_id is not None and not isinstance(rp_id, str)):
                raise CtapStatus(ERR.INVALID_PARAMETER)
            if perms & ~SUPPORTED_PERMISSIONS:
                raise CtapStatus(ERR.UNAUTHORIZED_PERMISSION)
            granted, bound = PERM(perms), rp_id
        self._pin_gate(state)
        shared = self.shared_secret(proto, peer)
        self._check_pin(proto, shared, pin_hash_enc, state)
        self.token = secrets.token_bytes(32)
        self.permissions, self.rp_id = granted, bound
        return {_RESULT.PIN_UV_TOKEN: bytes(proto.encrypt(shared, self.token))}

    # --- hmac-secret salts ------------------------------------------------------------------------
    def open_salts(self, ext: Any) -> tuple[PinProtocolV1, bytes, bytes]:
        """Decrypt an hmac-secret input ``{1: keyAgreement, 2: saltEnc, 3: saltAuth, 4: protocol}``.

        :return: the protocol, the shared secret and salt1 (32 bytes) or salt1‖salt2 (64 bytes).
        """
        if not isinstance(ext, Mapping):
            raise CtapStatus(ERR.INVALID_PARAMETER)
        peer, salt_enc, salt_auth = ext.get(1), ext.get(2), ext.get(3)
        if peer is None or salt_enc is None or salt_auth is None:
            raise CtapStatus(ERR.MISSING_PARAMETER)
        proto = protocol(ext.get(4, 1))
        shared = self.shared_secret(proto, peer)
        if not isinstance(salt_enc, bytes) or not _mac_ok(proto, shared, salt_enc, salt_auth):
            raise CtapStatus(ERR.PIN_AUTH_INVALID)
        iv_len = 16 if proto.VERSION == 2 else 0
        if len(salt_enc) - iv_len not in (32, 64):
            raise CtapStatus(ERR.INVALID_LENGTH)
        return proto, shared, bytes(proto.decrypt(shared, salt_enc))
