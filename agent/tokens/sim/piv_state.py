"""Persistent state of a simulated YubiKey PIV card: ``<home>/sim/<name>.piv.json``.

What a real card keeps across power cycles lives here: serial, firmware version, PIN/PUK and their
retry counters, the management key, the private keys with their PIN/touch policies, the data
objects, and the attestation key + certificate (slot F9). What a real card forgets on power-off or
re-SELECT (PIN verified, management key authenticated) lives in :class:`~.piv_card.PivCard`.

Several processes may drive one card at once (the vpcd server for pcscd, an in-process test, a
second ``kms-agent``), so every APDU exchange runs inside :meth:`PivStateFile.transaction`: an
exclusive ``fcntl`` lock on a sidecar ``.lock`` file, a fresh read, and, only when something
changed, an atomic write (temp file, fsync, rename) with mode 0600. The file holds private keys in
clear: it is a simulator, and :func:`sim_attestation_root` is a *public* test CA whose only job is
to mark attestation chains as simulated.

.. warning:: nothing here is secret or secure. Never trust a chain to :func:`sim_attestation_root`
   for a real deployment; :mod:`agent.tokens.piv_token` reports such cards as ``simulated``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import StateError, TokenNotFound, UsageError
from agent.tokens.sim.storage import write_json

SCHEMA = 1
SUFFIX = ".piv.json"

DEFAULT_PIN = b"123456"
DEFAULT_PUK = b"12345678"
DEFAULT_MANAGEMENT_KEY = bytes(range(1, 9)) * 3
DEFAULT_FIRMWARE = (5, 7, 2)
DEFAULT_RETRIES = 3

# Wire values shared with yubikit.piv (kept as plain ints: this module stores them in JSON).
KEY_ECCP256 = 0x11
KEY_ECCP384 = 0x14
MGM_TDES = 0x03
MGM_AES128 = 0x08
MGM_AES192 = 0x0A
MGM_AES256 = 0x0C
MGM_KEY_LEN = {MGM_TDES: 24, MGM_AES128: 16, MGM_AES192: 24, MGM_AES256: 32}
ORIGIN_GENERATED = 1
ORIGIN_IMPORTED = 2
SLOT_ATTESTATION = 0xF9
OBJ_ATTESTATION = 0x5FFF01
PIN_POLICY_ONCE = 2
TOUCH_POLICY_NEVER = 1

#: The Yubico attestation extensions (developers.yubico.com/PIV/Introduction/PIV_attestation.html).
OID_FIRMWARE = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.3")
OID_SERIAL = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.7")
OID_POLICY = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.8")
OID_FORM_FACTOR = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.9")

OBJ_CHUID = 0x5FC102

#: Ways a simulated card can be built unlike a YubiKey 5, so tests can prove enrolment refuses it
#: cleanly and ``doctor`` explains why (docs/tokens.md).
PIV_QUIRKS: dict[str, str] = {
    "no-attestation": "no attestation key or certificate in slot F9; ATTEST answers 6D00",
    "no-touch-policy": "GENERATE with a touch policy answers 6A81 (function not supported)",
    "bare-slot-metadata": "GET METADATA of an empty slot answers 9000 without a key type",
    "not-yubikey": "a plain NIST PIV card: no GET VERSION/SERIAL/METADATA/ATTEST, no YubiKey "
    "management applet, a generic ATR; its CHUID names it",
}

SIM_ROOT_CN = "kms-agent simulated PIV attestation root (public test key)"
_SIM_ROOT_SEED = b"kms-agent/v1/sim/piv-attestation-root"
_VALID_FROM = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_VALID_TO = datetime.datetime(2099, 12, 31, tzinfo=datetime.UTC)


def pad_pin(value: bytes) -> bytes:
    """PIN/PUK as the card stores and compares them: 8 bytes, right-padded with 0xFF."""
    return value.ljust(8, b"\xff")


@dataclass
class KeySlot:
    """One private key in a PIV slot, with the policies fixed when it was generated or imported."""

    key_type: int
    pin_policy: int
    touch_policy: int
    origin: int
    private_der: bytes  # PKCS#8 DER

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_der_private_key(self.private_der, None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise StateError("simulated PIV card holds a non-EC key")
        return key


@dataclass
class PivData:
    """Everything a YubiKey's PIV applet remembers across power cycles."""

    serial: int
    firmware: tuple[int, int, int]
    pin: bytes
    puk: bytes
    pin_default: bool = True
    puk_default: bool = True
    pin_total: int = DEFAULT_RETRIES
    pin_remaining: int = DEFAULT_RETRIES
    puk_total: int = DEFAULT_RETRIES
    puk_remaining: int = DEFAULT_RETRIES
    mgm_type: int = MGM_AES192
    mgm_key: bytes = DEFAULT_MANAGEMENT_KEY
    mgm_touch: int = TOUCH_POLICY_NEVER
    mgm_default: bool = True
    keys: dict[int, KeySlot] = field(default_factory=dict)
    objects: dict[int, bytes] = field(default_factory=dict)
    #: Deliberate defects (:data:`PIV_QUIRKS`); fixed at creation, survive a reset.
    quirks: frozenset[str] = frozenset()

    def reset(self) -> None:
        """PIV RESET: factory PIN/PUK/management key, no keys, no objects; attestation survives."""
        f9 = self.keys.get(SLOT_ATTESTATION)
        f9_cert = self.objects.get(OBJ_ATTESTATION)
        self.pin, self.puk = pad_pin(DEFAULT_PIN), pad_pin(DEFAULT_PUK)
        self.pin_default = self.puk_default = True
        self.pin_total = self.pin_remaining = self.puk_total = self.puk_remaining = DEFAULT_RETRIES
        self.mgm_type = default_management_key_type(self.firmware)
        self.mgm_key, self.mgm_touch, self.mgm_default = DEFAULT_MANAGEMENT_KEY, TOUCH_POLICY_NEVER, True
        self.keys = {SLOT_ATTESTATION: f9} if f9 else {}
        self.objects = {OBJ_ATTESTATION: f9_cert} if f9_cert else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "serial": self.serial,
            "firmware": list(self.firmware),
            "pin": self.pin.hex(),
            "puk": self.puk.hex(),
            "pin_default": self.pin_default,
            "puk_default": self.puk_default,
            "pin_retries": [self.pin_total, self.pin_remaining],
            "puk_retries": [self.puk_total, self.puk_remaining],
            "management_key": {
                "type": self.mgm_type,
                "key": self.mgm_key.hex(),
                "touch": self.mgm_touch,
                "default": self.mgm_default,
            },
            "keys": {
                f"{slot:02x}": {
                    "type": k.key_type,
                    "pin_policy": k.pin_policy,
                    "touch_policy": k.touch_policy,
                    "origin": k.origin,
                    "private": k.private_der.hex(),
                }
                for slot, k in sorted(self.keys.items())
            },
            "objects": {f"{oid:06x}": data.hex() for oid, data in sorted(self.objects.items())},
            # Only when set, so the state files of ordinary cards stay byte-identical.
            **({"quirks": sorted(self.quirks)} if self.quirks else {}),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PivData:
        if raw.get("schema") != SCHEMA:
            raise StateError(f"simulated PIV card state has unknown schema {raw.get('schema')!r}")
        fw = raw["firmware"]
        mgm = raw["management_key"]
        return cls(
            serial=int(raw["serial"]),
            firmware=(int(fw[0]), int(fw[1]), int(fw[2])),
            pin=bytes.fromhex(raw["pin"]),
            puk=bytes.fromhex(raw["puk"]),
            pin_default=bool(raw["pin_default"]),
            puk_default=bool(raw["puk_default"]),
            pin_total=int(raw["pin_retries"][0]),
            pin_remaining=int(raw["pin_retries"][1]),
            puk_total=int(raw["puk_retries"][0]),
            puk_remaining=int(raw["puk_retries"][1]),
            mgm_type=int(mgm["type"]),
            mgm_key=bytes.fromhex(mgm["key"]),
            mgm_touch=int(mgm["touch"]),
            mgm_default=bool(mgm["default"]),
            keys={
                int(slot, 16): KeySlot(
                    int(k["type"]),
                    int(k["pin_policy"]),
                    int(k["touch_policy"]),
                    int(k["origin"]),
                    bytes.fromhex(k["private"]),
                )
                for slot, k in raw["keys"].items()
            },
            objects={int(oid, 16): bytes.fromhex(data) for oid, data in raw["objects"].items()},
            quirks=frozenset(check_piv_quirks(raw.get("quirks", []), error=StateError)),
        )


def check_piv_quirks(quirks: Any, *, error: type[Exception] = UsageError) -> list[str]:
    """``quirks`` sorted if each is a known :data:`PIV_QUIRKS` name; else raise ``error``."""
    if not isinstance(quirks, list | tuple | set | frozenset) or not all(isinstance(q, str) for q in quirks):
        raise error(f"simulated PIV quirks must be a list of names, not {quirks!r}")
    unknown = sorted(set(quirks) - set(PIV_QUIRKS))
    if unknown:
        raise error(f"unknown PIV simulator quirk(s) {', '.join(unknown)}: use {', '.join(PIV_QUIRKS)}")
    return sorted(set(quirks))


def default_management_key_type(firmware: tuple[int, int, int]) -> int:
    """YubiKey 5.7 changed the factory management key from 3DES to AES-192 (same bytes)."""
    return MGM_AES192 if firmware >= (5, 7, 0) else MGM_TDES


def piv_state_path(home: Path, name: str) -> Path:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise UsageError(f"invalid simulated token name {name!r}")
    return Path(home) / "sim" / f"{name}{SUFFIX}"


def list_piv_sims(home: Path) -> list[str]:
    """Names of the simulated PIV cards under ``home``."""
    directory = Path(home) / "sim"
    if not directory.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in directory.glob(f"*{SUFFIX}"))


def piv_sim_pin(home: Path, name: str) -> str:
    """The PIN the simulated card ``sim:NAME`` currently has (demo/test convenience, like ``sim_pin``).

    :raises TokenNotFound: no such simulated PIV card.
    """
    return PivStateFile(piv_state_path(home, name)).read().pin.rstrip(b"\xff").decode()


class PivStateFile:
    """The state file of one simulated card, read and written only under its lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @property
    def name(self) -> str:
        return self.path.name[: -len(SUFFIX)] if self.path.name.endswith(SUFFIX) else self.path.stem

    def exists(self) -> bool:
        return self.path.exists()

    @contextlib.contextmanager
    def _locked(self, *, creating: bool = False) -> Iterator[None]:
        if not creating and not self.path.exists():
            raise TokenNotFound(f"simulated PIV card {self.name!r} does not exist ({self.path})")
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _read(self) -> tuple[PivData, str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            raise TokenNotFound(f"simulated PIV card {self.name!r} does not exist ({self.path})") from None
        try:
            return PivData.from_json(json.loads(text)), text
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise StateError(f"simulated PIV card state {self.path} is corrupt: {exc}") from None

    def _write(self, data: PivData) -> None:
        write_json(self.path, data.to_json())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PivData]:
        """Lock, load, yield the data for changes, and write it back only if it changed."""
        with self._locked():
            data, before = self._read()
            yield data
            if json.dumps(data.to_json(), indent=1, sort_keys=True) != before:
                self._write(data)

    def read(self) -> PivData:
        with self._locked():
            return self._read()[0]

    def create(self, data: PivData) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked(creating=True):
            if self.path.exists():
                raise UsageError(f"simulated PIV card {self.name!r} already exists ({self.path})")
            self._write(data)


def create_piv_sim(
    home: Path,
    name: str,
    *,
    serial: int | None = None,
    firmware: tuple[int, int, int] = DEFAULT_FIRMWARE,
    management_key_type: int | None = None,
    quirks: list[str] | tuple[str, ...] = (),
) -> PivStateFile:
    """Create a factory-fresh simulated YubiKey PIV card (PIN 123456, PUK 12345678, default key).

    :param quirks: deliberate defects from :data:`PIV_QUIRKS` (tests of what enrolment refuses).
    :raises UsageError: a card of that name already exists, or an unknown quirk.
    """
    wanted = frozenset(check_piv_quirks(list(quirks)))
    state = PivStateFile(piv_state_path(home, name))
    serial = serial if serial is not None else 10_000_000 + secrets.randbelow(80_000_000)
    data = PivData(serial=serial, firmware=firmware, pin=pad_pin(DEFAULT_PIN), puk=pad_pin(DEFAULT_PUK))
    data.mgm_type = management_key_type if management_key_type is not None else default_management_key_type(firmware)
    data.quirks = wanted
    if not wanted & {"no-attestation", "not-yubikey"}:
        f9_key = ec.generate_private_key(ec.SECP256R1())
        data.keys[SLOT_ATTESTATION] = KeySlot(
            KEY_ECCP256, PIN_POLICY_ONCE, TOUCH_POLICY_NEVER, ORIGIN_IMPORTED, _pkcs8(f9_key)
        )
        data.objects[OBJ_ATTESTATION] = _cert_object(_f9_certificate(f9_key, serial))
    if "not-yubikey" in wanted:
        data.objects[OBJ_CHUID] = chuid_object(chuid_guid(serial))
    state.create(data)
    return state


def chuid_guid(serial: int) -> bytes:
    """The CHUID GUID a simulated plain PIV card carries: a fixed prefix and its serial."""
    return b"kms-sim-" + serial.to_bytes(8, "big")


def chuid_object(guid: bytes) -> bytes:
    """A CHUID (SP 800-73-4 §3.1.2): FASC-N, GUID, expiry, empty signature, LRC."""
    from yubikit.core import Tlv

    fascn = bytes.fromhex("d4e739da739ced39ce739d836858210842108421c84210c3eb")
    return bytes(Tlv(0x30, fascn) + Tlv(0x34, guid) + Tlv(0x35, b"20991231") + Tlv(0x3E, b"") + Tlv(0xFE, b""))


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_object(cert: x509.Certificate) -> bytes:
    """A PIV certificate object: 70 cert, 71 cert-info (uncompressed), FE LRC (SP 800-73-4)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    from yubikit.core import Tlv

    return bytes(Tlv(0x70, der) + Tlv(0x71, b"\0") + Tlv(0xFE, b""))


@lru_cache(maxsize=1)
def sim_attestation_root() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The fixed, publicly known CA that signs every simulated card's F9 certificate.

    Its private key is derived from a constant, so anyone can mint certificates under it: a chain
    to this root proves only "this is a kms-agent simulator", which is exactly what it is for.
    """
    scalar = int.from_bytes(hashlib.sha256(_SIM_ROOT_SEED).digest(), "big")
    key = ec.derive_private_key(scalar % (2**255), ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SIM_ROOT_CN)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_VALID_FROM)
        .not_valid_after(_VALID_TO)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _f9_certificate(f9_key: ec.EllipticCurvePrivateKey, serial: int) -> x509.Certificate:
    root_key, root = sim_attestation_root()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Yubico PIV Attestation (kms-agent simulator)")])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.subject)
        .public_key(f9_key.public_key())
        .serial_number(serial)
        .not_valid_before(_VALID_FROM)
        .not_valid_after(_VALID_TO)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )


def attestation_certificate(data: PivData, slot: int) -> x509.Certificate:
    """The per-key attestation a YubiKey's ATTEST returns, signed by the card's F9 key.

    Like the real thing it carries the firmware (.3.3), the serial as a DER INTEGER (.3.7), the
    (PIN, touch) policies as two bytes (.3.8) and the form factor (.3.9).
    """
    key = data.keys[slot]
    f9 = data.keys[SLOT_ATTESTATION].private_key()
    f9_cert = x509.load_der_x509_certificate(_cert_der(data.objects[OBJ_ATTESTATION]))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"YubiKey PIV Attestation {slot:02x}")])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(f9_cert.subject)
        .public_key(key.private_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_VALID_FROM)
        .not_valid_after(_VALID_TO)
        .add_extension(x509.UnrecognizedExtension(OID_FIRMWARE, bytes(data.firmware)), critical=False)
        .add_extension(x509.UnrecognizedExtension(OID_SERIAL, der_integer(data.serial)), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(OID_POLICY, bytes([key.pin_policy, key.touch_policy])), critical=False
        )
        .add_extension(x509.UnrecognizedExtension(OID_FORM_FACTOR, b"\x01"), critical=False)
        .sign(f9, hashes.SHA256())
    )


def der_integer(value: int) -> bytes:
    """DER INTEGER for a non-negative int (how YubiKeys encode the serial extension)."""
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _cert_der(obj: bytes) -> bytes:
    from yubikit.core import Tlv

    return Tlv.parse_dict(obj)[0x70]
