"""A simulated YubiKey 5 PIV applet that answers raw APDUs, plus the in-process connection to it.

:class:`PivCard` speaks ISO 7816-4 the way a YubiKey 5.7 does over CCID: short and extended APDUs,
command chaining (CLA bit 0x10), 61xx + GET RESPONSE for long answers, and the PIV instruction set
yubikit's :class:`~yubikit.piv.PivSession` uses (research §3.3), plus just enough of the YubiKey
Management applet for ``ykman``'s device discovery. It is served two ways:

* in process, as a yubikit :class:`~yubikit.core.smartcard.SmartCardConnection`
  (:class:`SimPivConnection`, :func:`open_sim_piv_connection`);
* to a real ``pcscd`` through the vsmartcard ``vpcd`` reader (:mod:`.vpcd`, :mod:`.pcsc_server`),
  so pyscard, ``ykman`` and OpenSC see a card.

Touch: every operation on a key whose touch policy asks for it calls the touch provider shared with
the FIDO2 simulator (:mod:`agent.tokens.sim.touch`): an injected ``(card_name, stop) -> TouchResult``
callable, or by default ``KMS_AGENT_SIM_TOUCH``: ``auto`` grants, ``deny`` answers SW 6982 at once,
``timeout`` answers 6982 after ``KMS_AGENT_SIM_TOUCH_TIMEOUT`` seconds (0.3), ``remove`` pulls the
card out of the reader (the connection fails as with a real card), unset asks on the terminal.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from pathlib import Path

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding
from smartcard.Exceptions import CardConnectionException
from yubikit.core import TRANSPORT, Tlv
from yubikit.core.smartcard import SmartCardConnection

from agent.tokens.sim import piv_state as st
from agent.tokens.sim.touch import TouchProvider, TouchResult, as_touch_result, env_touch
from agent.tokens.sim.vpcd import ApduCard, CardRemoved, StatusWord

logger = logging.getLogger(__name__)

#: ATR of a YubiKey 5 over USB: ``ATR[1] & 0xF0 == 0xF0`` is how ykman and we pick USB transport.
ATR_USB = bytes.fromhex("3bfd1300008131fe158073c021c057597562694b657940")
#: ATR of a YubiKey 5 NFC seen through a contactless reader (short APDUs + command chaining).
ATR_NFC = bytes.fromhex("3b8d80018073c021c057597562694b6579f9")


def _with_tck(atr_without_tck: bytes) -> bytes:
    tck = 0
    for byte in atr_without_tck[1:]:
        tck ^= byte
    return atr_without_tck + bytes([tck])


#: ATR of a plain (non-YubiKey) PIV card: T=0/T=1, historical bytes naming no vendor applet.
ATR_GENERIC = _with_tck(bytes.fromhex("3b8c8001") + b"kms-sim-PIV\x00")

AID_PIV = bytes.fromhex("a000000308")
AID_MANAGEMENT = bytes.fromhex("a000000527471117")
#: SELECT answer of a YubiKey's PIV applet: application property template with the PIV AID.
_PIV_SELECT_RESPONSE = bytes.fromhex("61114f0600001000010079074f05a000000308")
_DISCOVERY = bytes.fromhex("7e124f0ba0000003080000100001005f2f024000")

SW_VERIFY_FAIL = 0x63C0
SW_SECURITY = 0x6982
SW_BLOCKED = 0x6983
SW_CONDITIONS = 0x6985
SW_INCORRECT_DATA = 0x6A80
SW_FUNCTION_NOT_SUPPORTED = 0x6A81
SW_FILE_NOT_FOUND = 0x6A82
SW_INCORRECT_P1P2 = 0x6A86
SW_REF_NOT_FOUND = 0x6A88
SW_INS = 0x6D00

INS_VERIFY = 0x20
INS_CHANGE_REFERENCE = 0x24
INS_RESET_RETRY = 0x2C
INS_GENERATE = 0x47
INS_AUTHENTICATE = 0x87
INS_SELECT = 0xA4
INS_GET_DATA = 0xCB
INS_PUT_DATA = 0xDB
INS_MOVE_KEY = 0xF6
INS_GET_METADATA = 0xF7
INS_GET_SERIAL = 0xF8
INS_ATTEST = 0xF9
INS_SET_PIN_RETRIES = 0xFA
INS_RESET = 0xFB
INS_GET_VERSION = 0xFD
INS_IMPORT_KEY = 0xFE
INS_SET_MGMKEY = 0xFF
INS_READ_CONFIG = 0x1D
#: YubiKey extensions to SP 800-73: a plain PIV card (quirk ``not-yubikey``) answers them 6D00.
YUBIKEY_ONLY_INS = frozenset(
    {
        INS_GET_VERSION,
        INS_GET_SERIAL,
        INS_GET_METADATA,
        INS_ATTEST,
        INS_RESET,
        INS_SET_PIN_RETRIES,
        INS_MOVE_KEY,
        INS_IMPORT_KEY,
        INS_SET_MGMKEY,
    }
)

SLOT_MGM = 0x9B
OBJ_DISCOVERY = 0x7E
OBJ_PIVMAN_PROTECTED = 0x5FC109
KEY_SLOTS = frozenset({0x9A, 0x9C, 0x9D, 0x9E, *range(0x82, 0x96)})
_CURVES: dict[int, tuple[ec.EllipticCurve, hashes.HashAlgorithm]] = {
    st.KEY_ECCP256: (ec.SECP256R1(), hashes.SHA256()),
    st.KEY_ECCP384: (ec.SECP384R1(), hashes.SHA384()),
}
PIN_NEVER, PIN_ONCE, PIN_ALWAYS = 1, 2, 3
TOUCH_NEVER, TOUCH_ALWAYS, TOUCH_CACHED = 1, 2, 3
TOUCH_CACHE_SECONDS = 15.0


def _tlvs(data: bytes) -> dict[int, bytes]:
    try:
        return Tlv.parse_dict(data)
    except (ValueError, IndexError):
        raise StatusWord(SW_INCORRECT_DATA) from None


def _ecb(key_type: int, key: bytes, data: bytes, *, encrypt: bool) -> bytes:
    algorithm = TripleDES(key) if key_type == st.MGM_TDES else algorithms.AES(key)
    cipher = Cipher(algorithm, modes.ECB())  # the PIV management-key protocol is plain ECB
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return op.update(data) + op.finalize()


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import PublicFormat

    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


class PivCard(ApduCard):
    """One simulated YubiKey: persistent state in a :class:`~.piv_state.PivStateFile`, RAM here.

    :param touch: who touches it, ``(card_name, stop) -> TouchResult``; default
        :func:`agent.tokens.sim.touch.env_touch` (``KMS_AGENT_SIM_TOUCH``).
    :param atr: :data:`ATR_USB` (extended APDUs) or :data:`ATR_NFC`.
    :param max_response: cap on response bytes per APDU even when the reader accepts more, to make
        the card use 61xx/GET RESPONSE on extended APDUs too (tests).
    """

    def __init__(
        self,
        state: st.PivStateFile,
        *,
        touch: TouchProvider | None = None,
        atr: bytes = ATR_USB,
        max_response: int = 65536,
    ) -> None:
        self.state = state
        self.touch: TouchProvider = touch or env_touch
        self._last_touch = -1e9
        self.quirks = state.read().quirks if state.exists() else frozenset()
        if "not-yubikey" in self.quirks:
            atr = ATR_GENERIC  # whatever reader it sits in, it does not claim to be a YubiKey
        super().__init__(atr, max_response=max_response)

    # --- session state (ApduCard calls this on power-up, power-off and reset) ------------------
    def _clear_session(self) -> None:
        super()._clear_session()
        self._applet: str | None = None
        self._pin_verified = False
        self._pin_fresh = False  # VERIFY was the last command: what PIN policy ALWAYS needs
        self._mgm_authenticated = False
        self._mgm_witness: bytes | None = None

    def power_off(self) -> None:
        super().power_off()
        self._last_touch = -1e9  # the touch cache lives in RAM

    def accepts_cla(self, cla: int) -> bool:
        return cla == 0x00

    def command(self, cla: int, ins: int, p1: int, p2: int, data: bytes) -> bytes:
        fresh, self._pin_fresh = self._pin_fresh, False
        return self._command(ins, p1, p2, data, fresh)

    def _command(self, ins: int, p1: int, p2: int, data: bytes, fresh: bool) -> bytes:
        if ins == INS_SELECT:
            return self._select(p1, data)
        if self._applet == "mgmt":
            return self._management(ins, p1)
        if self._applet != "piv":
            raise StatusWord(SW_INS)
        with self.state.transaction() as d:
            try:
                return self._piv(d, ins, p1, p2, data, fresh)
            except StatusWord as reply:  # an error SW still commits what changed (a retry counter)
                failure = reply
        raise failure

    def _select(self, p1: int, aid: bytes) -> bytes:
        if p1 != 0x04:
            raise StatusWord(SW_INCORRECT_P1P2)
        self._pin_verified = self._mgm_authenticated = False
        self._mgm_witness = None
        if aid.startswith(AID_PIV):
            self._applet = "piv"
            return _PIV_SELECT_RESPONSE
        if aid == AID_MANAGEMENT and "not-yubikey" not in self.quirks:
            self._applet = "mgmt"
            fw = self.state.read().firmware
            return f"kms-agent simulated YubiKey - FW version {fw[0]}.{fw[1]}.{fw[2]}".encode()
        self._applet = None
        raise StatusWord(SW_FILE_NOT_FOUND)

    # --- Management applet (what ykman reads to identify a YubiKey) -------------------------
    def _management(self, ins: int, p1: int) -> bytes:
        if ins != INS_READ_CONFIG:
            raise StatusWord(SW_INS)
        if p1 != 0:
            return b"\0"
        d = self.state.read()
        piv_only = (0x10).to_bytes(2, "big")  # CAPABILITY.PIV
        body = b"".join(
            [
                Tlv(0x01, piv_only),
                Tlv(0x03, piv_only),
                Tlv(0x02, d.serial.to_bytes(4, "big")),
                Tlv(0x04, b"\x01"),
                Tlv(0x05, bytes(d.firmware)),
                Tlv(0x08, b"\0"),
                Tlv(0x0A, b"\0"),
            ]
        )
        return bytes([len(body)]) + body

    # --- PIV applet ---------------------------------------------------------------------------
    def _piv(self, d: st.PivData, ins: int, p1: int, p2: int, data: bytes, fresh: bool) -> bytes:
        if ins in YUBIKEY_ONLY_INS and "not-yubikey" in d.quirks:
            raise StatusWord(SW_INS)
        if ins == INS_ATTEST and "no-attestation" in d.quirks:
            raise StatusWord(SW_INS)
        handler = {
            INS_GET_VERSION: lambda: bytes(d.firmware),
            INS_GET_SERIAL: lambda: d.serial.to_bytes(4, "big"),
            INS_GET_METADATA: lambda: self._metadata(d, p2),
            INS_VERIFY: lambda: self._verify(d, p1, p2, data),
            INS_CHANGE_REFERENCE: lambda: self._change_reference(d, p2, data),
            INS_RESET_RETRY: lambda: self._reset_retry(d, p2, data),
            INS_AUTHENTICATE: lambda: self._authenticate(d, p1, p2, data, fresh),
            INS_GENERATE: lambda: self._generate(d, p2, data),
            INS_IMPORT_KEY: lambda: self._import(d, p1, p2, data),
            INS_ATTEST: lambda: self._attest(d, p1),
            INS_GET_DATA: lambda: self._get_data(d, p1, p2, data),
            INS_PUT_DATA: lambda: self._put_data(d, p1, p2, data),
            INS_SET_MGMKEY: lambda: self._set_mgm_key(d, p1, p2, data),
            INS_RESET: lambda: self._reset(d),
            INS_SET_PIN_RETRIES: lambda: self._set_pin_retries(d, p1, p2),
            INS_MOVE_KEY: lambda: self._move_key(d, p1, p2),
        }.get(ins)
        if handler is None:
            raise StatusWord(SW_INS)
        return handler()

    def _require_mgm(self) -> None:
        if not self._mgm_authenticated:
            raise StatusWord(SW_SECURITY)

    def _metadata(self, d: st.PivData, p2: int) -> bytes:
        if p2 in (0x80, 0x81):
            pin = p2 == 0x80
            total, left = (d.pin_total, d.pin_remaining) if pin else (d.puk_total, d.puk_remaining)
            default = d.pin_default if pin else d.puk_default
            return Tlv(0x01, b"\xff") + Tlv(0x05, bytes([default])) + Tlv(0x06, bytes([total, left]))
        if p2 == SLOT_MGM:
            return (
                Tlv(0x01, bytes([d.mgm_type])) + Tlv(0x02, bytes([0, d.mgm_touch])) + Tlv(0x05, bytes([d.mgm_default]))
            )
        key = d.keys.get(p2)
        if key is None:
            if "bare-slot-metadata" in d.quirks and p2 in KEY_SLOTS:
                return Tlv(0x02, b"\0\0")  # "fine", says the card, and names no key type
            raise StatusWord(SW_REF_NOT_FOUND)
        return (
            Tlv(0x01, bytes([key.key_type]))
            + Tlv(0x02, bytes([key.pin_policy, key.touch_policy]))
            + Tlv(0x03, bytes([key.origin]))
            + Tlv(0x04, Tlv(0x86, _point(key.private_key())))
        )

    def _check_pin(self, d: st.PivData, value: bytes, *, puk: bool = False) -> None:
        """Compare a PIN/PUK, counting down and blocking like the card (63Cx, then 6983)."""
        if len(value) != 8:
            raise StatusWord(SW_INCORRECT_DATA)
        left = d.puk_remaining if puk else d.pin_remaining
        if left == 0:
            raise StatusWord(SW_BLOCKED)
        stored = d.puk if puk else d.pin
        if not hmac.compare_digest(stored, value):
            left -= 1
            if puk:
                d.puk_remaining = left
            else:
                d.pin_remaining = left
                self._pin_verified = False
            raise StatusWord(SW_VERIFY_FAIL | min(left, 0xF))
        if puk:
            d.puk_remaining = d.puk_total
        else:
            d.pin_remaining = d.pin_total

    def _verify(self, d: st.PivData, p1: int, p2: int, data: bytes) -> bytes:
        if p2 != 0x80:
            raise StatusWord(SW_REF_NOT_FOUND)
        if p1 == 0xFF:  # log out
            self._pin_verified = False
            return b""
        if not data:  # status query
            if d.pin_remaining == 0:
                raise StatusWord(SW_BLOCKED)
            if self._pin_verified:
                return b""
            raise StatusWord(SW_VERIFY_FAIL | min(d.pin_remaining, 0xF))
        self._check_pin(d, data)
        self._pin_verified = self._pin_fresh = True
        return b""

    @staticmethod
    def _new_secret(value: bytes) -> bytes:
        stripped = value.rstrip(b"\xff")
        if not 6 <= len(stripped) <= 8:
            raise StatusWord(SW_INCORRECT_DATA)
        return value

    def _change_reference(self, d: st.PivData, p2: int, data: bytes) -> bytes:
        if p2 not in (0x80, 0x81) or len(data) != 16:
            raise StatusWord(SW_INCORRECT_DATA)
        puk = p2 == 0x81
        self._check_pin(d, data[:8], puk=puk)
        new = self._new_secret(data[8:])
        if puk:
            d.puk, d.puk_default = new, False
        else:
            d.pin, d.pin_default = new, False
        return b""

    def _reset_retry(self, d: st.PivData, p2: int, data: bytes) -> bytes:
        if p2 != 0x80 or len(data) != 16:
            raise StatusWord(SW_INCORRECT_DATA)
        self._check_pin(d, data[:8], puk=True)
        d.pin, d.pin_default = self._new_secret(data[8:]), False
        d.pin_remaining = d.pin_total
        return b""

    def _do_touch(self) -> None:
        result = as_touch_result(self.touch(self.state.name, threading.Event()))
        if result == TouchResult.GRANTED:
            self._last_touch = time.monotonic()
            return
        if result == TouchResult.REMOVED:
            self.power_off()
            raise CardRemoved("the simulated card was removed while waiting for a touch")
        raise StatusWord(SW_SECURITY)

    def _touch_for(self, policy: int) -> None:
        if policy == TOUCH_ALWAYS or (
            policy == TOUCH_CACHED and time.monotonic() - self._last_touch > TOUCH_CACHE_SECONDS
        ):
            self._do_touch()

    def _authenticate(self, d: st.PivData, p1: int, p2: int, data: bytes, fresh: bool) -> bytes:
        outer = _tlvs(data)
        if 0x7C not in outer:
            raise StatusWord(SW_INCORRECT_DATA)
        tlvs = _tlvs(outer[0x7C])
        if p2 == SLOT_MGM:
            return self._mgm_auth(d, p1, tlvs)
        key = d.keys.get(p2)
        if key is None or key.key_type != p1 or p2 == st.SLOT_ATTESTATION or 0x82 not in tlvs:
            raise StatusWord(SW_INCORRECT_DATA)
        if key.pin_policy == PIN_ONCE and not self._pin_verified:
            raise StatusWord(SW_SECURITY)
        if key.pin_policy == PIN_ALWAYS and not (self._pin_verified and fresh):
            raise StatusWord(SW_SECURITY)
        curve, digest_alg = _CURVES[key.key_type]
        private = key.private_key()
        if 0x81 in tlvs:  # sign: the host already hashed and truncated/padded to the key size
            message = tlvs[0x81]
            if len(message) != digest_alg.digest_size:
                raise StatusWord(SW_INCORRECT_DATA)
            self._touch_for(key.touch_policy)
            signature = private.sign(message, ec.ECDSA(Prehashed(digest_alg)))
            return Tlv(0x7C, Tlv(0x82, signature))
        if 0x85 in tlvs:  # ECDH: peer point in, shared x-coordinate out
            try:
                peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, tlvs[0x85])
            except ValueError:
                raise StatusWord(SW_INCORRECT_DATA) from None
            self._touch_for(key.touch_policy)
            return Tlv(0x7C, Tlv(0x82, private.exchange(ec.ECDH(), peer)))
        raise StatusWord(SW_INCORRECT_DATA)

    def _mgm_auth(self, d: st.PivData, p1: int, tlvs: dict[int, bytes]) -> bytes:
        if p1 != d.mgm_type:
            raise StatusWord(SW_INCORRECT_DATA)
        block = 8 if d.mgm_type == st.MGM_TDES else 16
        if tlvs.get(0x80) == b"" and 0x81 not in tlvs:  # step 1: card sends an encrypted witness
            self._touch_for(d.mgm_touch)
            self._mgm_witness = os.urandom(block)
            return Tlv(0x7C, Tlv(0x80, _ecb(d.mgm_type, d.mgm_key, self._mgm_witness, encrypt=True)))
        witness, challenge = tlvs.get(0x80), tlvs.get(0x81)
        expected, self._mgm_witness = self._mgm_witness, None
        if witness is None or challenge is None or len(challenge) != block:
            raise StatusWord(SW_INCORRECT_DATA)
        if expected is None or not hmac.compare_digest(witness, expected):
            self._mgm_authenticated = False
            raise StatusWord(SW_SECURITY)
        self._mgm_authenticated = True
        return Tlv(0x7C, Tlv(0x82, _ecb(d.mgm_type, d.mgm_key, challenge, encrypt=True)))

    @staticmethod
    def _policies(slot: int, pin: int, touch: int) -> tuple[int, int]:
        if pin == 0:
            pin = PIN_ALWAYS if slot == 0x9C else PIN_NEVER if slot == 0x9E else PIN_ONCE
        touch = touch or TOUCH_NEVER
        if pin not in (PIN_NEVER, PIN_ONCE, PIN_ALWAYS) or touch not in (TOUCH_NEVER, TOUCH_ALWAYS, TOUCH_CACHED):
            raise StatusWord(SW_INCORRECT_DATA)
        return pin, touch

    def _generate(self, d: st.PivData, slot: int, data: bytes) -> bytes:
        self._require_mgm()
        if slot not in KEY_SLOTS:
            raise StatusWord(SW_INCORRECT_P1P2)
        template = _tlvs(data).get(0xAC)
        if template is None:
            raise StatusWord(SW_INCORRECT_DATA)
        params = _tlvs(template)
        algo = params.get(0x80, b"\0")[0]
        if algo not in _CURVES:
            raise StatusWord(SW_INCORRECT_DATA)  # RSA / 25519 are not simulated
        if 0xAB in params and "no-touch-policy" in d.quirks:
            raise StatusWord(SW_FUNCTION_NOT_SUPPORTED)
        pin, touch = self._policies(slot, params.get(0xAA, b"\0")[0], params.get(0xAB, b"\0")[0])
        private = ec.generate_private_key(_CURVES[algo][0])
        d.keys[slot] = st.KeySlot(algo, pin, touch, st.ORIGIN_GENERATED, st._pkcs8(private))
        return Tlv(0x7F49, Tlv(0x86, _point(private)))

    def _import(self, d: st.PivData, algo: int, slot: int, data: bytes) -> bytes:
        self._require_mgm()
        if slot not in KEY_SLOTS | {st.SLOT_ATTESTATION}:
            raise StatusWord(SW_INCORRECT_P1P2)
        tlvs = _tlvs(data)
        if algo not in _CURVES or 0x06 not in tlvs:
            raise StatusWord(SW_INCORRECT_DATA)
        try:
            private = ec.derive_private_key(int.from_bytes(tlvs[0x06], "big"), _CURVES[algo][0])
        except ValueError:
            raise StatusWord(SW_INCORRECT_DATA) from None
        pin, touch = self._policies(slot, tlvs.get(0xAA, b"\0")[0], tlvs.get(0xAB, b"\0")[0])
        d.keys[slot] = st.KeySlot(algo, pin, touch, st.ORIGIN_IMPORTED, st._pkcs8(private))
        return b""

    def _attest(self, d: st.PivData, slot: int) -> bytes:
        key = d.keys.get(slot)
        if key is None:
            raise StatusWord(SW_REF_NOT_FOUND)
        if key.origin != st.ORIGIN_GENERATED or slot == st.SLOT_ATTESTATION:
            raise StatusWord(SW_INCORRECT_DATA)  # YubiKeys attest only keys generated on the card
        return st.attestation_certificate(d, slot).public_bytes(Encoding.DER)

    @staticmethod
    def _object_id(data: bytes) -> tuple[int, dict[int, bytes]]:
        tlvs = _tlvs(data)
        if 0x5C not in tlvs or not 1 <= len(tlvs[0x5C]) <= 3:
            raise StatusWord(SW_INCORRECT_DATA)
        return int.from_bytes(tlvs[0x5C], "big"), tlvs

    def _get_data(self, d: st.PivData, p1: int, p2: int, data: bytes) -> bytes:
        if (p1, p2) != (0x3F, 0xFF):
            raise StatusWord(SW_INCORRECT_P1P2)
        oid, _ = self._object_id(data)
        if oid == OBJ_DISCOVERY and "not-yubikey" not in d.quirks:
            return _DISCOVERY
        if oid == OBJ_PIVMAN_PROTECTED and not self._pin_verified:
            raise StatusWord(SW_SECURITY)
        if oid not in d.objects:
            raise StatusWord(SW_FILE_NOT_FOUND)
        return Tlv(0x53, d.objects[oid])

    def _put_data(self, d: st.PivData, p1: int, p2: int, data: bytes) -> bytes:
        if (p1, p2) != (0x3F, 0xFF):
            raise StatusWord(SW_INCORRECT_P1P2)
        self._require_mgm()
        oid, tlvs = self._object_id(data)
        if oid == OBJ_DISCOVERY or 0x53 not in tlvs:
            raise StatusWord(SW_INCORRECT_DATA)
        if tlvs[0x53]:
            d.objects[oid] = tlvs[0x53]
        else:
            d.objects.pop(oid, None)
        return b""

    def _set_mgm_key(self, d: st.PivData, p1: int, p2: int, data: bytes) -> bytes:
        if p1 != 0xFF or p2 not in (0xFE, 0xFF):
            raise StatusWord(SW_INCORRECT_P1P2)
        self._require_mgm()
        if not data:
            raise StatusWord(SW_INCORRECT_DATA)
        key_type, key = data[0], _tlvs(data[1:]).get(SLOT_MGM)
        if key is None or st.MGM_KEY_LEN.get(key_type) != len(key):
            raise StatusWord(SW_INCORRECT_DATA)
        d.mgm_type, d.mgm_key = key_type, key
        d.mgm_touch = TOUCH_ALWAYS if p2 == 0xFE else TOUCH_NEVER
        d.mgm_default = key == st.DEFAULT_MANAGEMENT_KEY
        return b""

    def _reset(self, d: st.PivData) -> bytes:
        if d.pin_remaining or d.puk_remaining:
            raise StatusWord(SW_CONDITIONS)  # only after both PIN and PUK are blocked
        d.reset()
        self._pin_verified = self._mgm_authenticated = False
        return b""

    def _set_pin_retries(self, d: st.PivData, pin: int, puk: int) -> bytes:
        self._require_mgm()
        if not self._pin_verified:
            raise StatusWord(SW_SECURITY)
        if pin == 0:
            raise StatusWord(SW_INCORRECT_P1P2)
        d.pin, d.puk = st.pad_pin(st.DEFAULT_PIN), st.pad_pin(st.DEFAULT_PUK)
        d.pin_default = d.puk_default = True
        d.pin_total = d.pin_remaining = pin
        d.puk_total = d.puk_remaining = puk
        return b""

    def _move_key(self, d: st.PivData, to_slot: int, from_slot: int) -> bytes:
        self._require_mgm()
        if from_slot not in KEY_SLOTS or (to_slot != 0xFF and to_slot not in KEY_SLOTS):
            raise StatusWord(SW_INCORRECT_P1P2)
        key = d.keys.pop(from_slot, None)
        if key is None:
            raise StatusWord(SW_REF_NOT_FOUND)
        if to_slot != 0xFF:
            d.keys[to_slot] = key
        return b""


class SimPivConnection(SmartCardConnection):
    """A :class:`PivCard` as a yubikit ``SmartCardConnection``, for PivSession in this process.

    A card removed mid-operation raises pyscard's ``CardConnectionException``, as a real reader
    would, and every later exchange on this connection fails the same way.
    """

    def __init__(self, card: ApduCard, transport: TRANSPORT = TRANSPORT.USB) -> None:
        self.card = card
        self._transport = transport
        self._removed = False
        card.power_on()

    @property
    def transport(self) -> TRANSPORT:
        return self._transport

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        if self._removed:
            raise CardConnectionException("the simulated card has been removed")
        try:
            response = self.card.transmit(apdu)
        except CardRemoved as exc:
            self._removed = True
            raise CardConnectionException(str(exc)) from exc
        return response[:-2], int.from_bytes(response[-2:], "big")

    def close(self) -> None:
        if not self._removed:
            self.card.power_off()


def open_sim_piv_connection(
    home: Path,
    name: str,
    *,
    touch: TouchProvider | None = None,
    transport: TRANSPORT = TRANSPORT.USB,
    max_response: int = 65536,
) -> SimPivConnection:
    """Open the simulated card ``<home>/sim/<name>.piv.json`` as an in-process connection.

    :raises TokenNotFound: no such simulated card.
    """
    state = st.PivStateFile(st.piv_state_path(home, name))
    if not state.exists():
        from agent.errors import TokenNotFound

        raise TokenNotFound(
            f"no simulated PIV card named {name!r} under {home}",
            hint="create it first (agent.tokens.sim.piv_state.create_piv_sim)",
        )
    atr = ATR_USB if transport == TRANSPORT.USB else ATR_NFC
    return SimPivConnection(PivCard(state, touch=touch, atr=atr, max_response=max_response), transport)
