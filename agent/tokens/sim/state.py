"""Persistent state of a simulated FIDO2 token: ``<home>/sim/<name>.fido2.json`` (INSECURE).

What a real authenticator keeps in flash lives here: the device master key that seals its
(non-resident) credentials into their credential ids, the PIN and its retry counter, the global
signature counter, the AAGUID, the attestation key and certificate, and whether the token is
"plugged in". What a real token forgets at power-off (the key-agreement key, the pinUvAuthToken,
the 3-wrong-PINs lock) lives in :class:`~agent.tokens.sim.authenticator.SimAuthenticator`.

.. warning:: the PIN and all keys are stored in clear, on purpose: the simulator answers its own
   PIN prompt in demos (:func:`sim_pin`). Nothing here protects anything.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import PinRequired, StateError, TokenNotFound, UsageError
from agent.tokens.sim.attestation import new_attestation_identity
from agent.tokens.sim.storage import locked, read_json, sim_dir, write_json

SCHEMA = 1
SUFFIX = ".fido2.json"
DEFAULT_PIN = "123456"
PIN_RETRIES = 8
#: The AAGUID every simulated token reports ("kms-agent-sim" + model 1): easy to recognise.
SIM_AAGUID = b"kms-agent-sim\x00\x00\x01"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_BYTES_FIELDS = ("aaguid", "master_key", "attestation_key", "attestation_cert")
#: Ways a simulated FIDO2 token can be built broken, so tests can prove enrolment refuses it.
FIDO2_QUIRKS: dict[str, str] = {
    "no-user-presence": "getInfo says up=false; it never waits for a touch yet still sets the UP flag",
    "self-attestation": "packed self attestation (no certificate chain) and an all-zero AAGUID",
    "no-attestation": 'attestation format "none" and an all-zero AAGUID',
}


@dataclass
class SimTokenState:
    """Everything one simulated token persists (bytes fields are base64 in the JSON)."""

    name: str
    aaguid: bytes
    #: AES-256-GCM key sealing credential private keys and CredRandoms into credential ids.
    master_key: bytes
    pin: str | None
    pin_retries: int
    sign_count: int
    plugged: bool
    attestation_key: bytes  # PKCS#8 DER
    attestation_cert: bytes  # DER, issued by the per-home test CA
    created: str
    #: Deliberate defects (:data:`FIDO2_QUIRKS`); absent from older state files.
    quirks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in _BYTES_FIELDS:
            data[key] = base64.b64encode(data[key]).decode()
        data["schema"] = SCHEMA
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimTokenState:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unknown schema {data.get('schema')!r}")
        values = {k: v for k, v in data.items() if k != "schema"}
        for key in _BYTES_FIELDS:
            values[key] = base64.b64decode(values[key], validate=True)
        state = cls(**values)
        if len(state.master_key) != 32 or len(state.aaguid) != 16:
            raise ValueError("bad key or AAGUID length")
        if not isinstance(state.quirks, list) or set(state.quirks) - set(FIDO2_QUIRKS):
            raise ValueError(f"unknown quirks {state.quirks!r}")
        return state


def check_quirks(quirks: list[str] | tuple[str, ...]) -> list[str]:
    """Return ``quirks`` sorted if every one is a known FIDO2 simulator quirk, else raise UsageError."""
    unknown = sorted(set(quirks) - set(FIDO2_QUIRKS))
    if unknown:
        raise UsageError(f"unknown FIDO2 simulator quirk(s) {', '.join(unknown)}: use {', '.join(FIDO2_QUIRKS)}")
    if {"self-attestation", "no-attestation"} <= set(quirks):
        raise UsageError("choose one of self-attestation and no-attestation")
    return sorted(set(quirks))


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid simulated token name, else raise UsageError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"invalid simulated token name {name!r}: use 1-32 of A-Z a-z 0-9 _ . -")
    return name


class SimStateFile:
    """The state file of one simulated token; changes happen only inside :meth:`transaction`."""

    def __init__(self, home: Path, name: str) -> None:
        self.name = check_name(name)
        self.home = Path(home)
        self.path = self.home / "sim" / f"{name}{SUFFIX}"
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def exists(self) -> bool:
        return self.path.is_file()

    def _parse(self, data: dict[str, Any] | None) -> SimTokenState:
        if data is None:
            raise TokenNotFound(
                f"simulated token sim:{self.name} does not exist", hint=f"create it: kms-agent sim create {self.name}"
            )
        try:
            return SimTokenState.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"simulated token state {self.path} is corrupt: {exc}") from None

    def read(self) -> SimTokenState:
        """A consistent snapshot without locking (writers rename whole files).

        :raises TokenNotFound: no such token.
        :raises StateError: the file is corrupt.
        """
        try:
            data = read_json(self.path)
        except ValueError as exc:
            raise StateError(f"simulated token state {self.path} is corrupt: {exc}") from None
        return self._parse(data)

    @contextlib.contextmanager
    def transaction(self, waiting: Callable[[], None] | None = None) -> Iterator[SimTokenState]:
        """Lock, load, yield for changes, and write back if changed and the block did not raise.

        :raises TokenNotFound: no such token (checked before locking, so no stray lock file appears).
        """
        self.read()
        with locked(self.lock_path, waiting):
            state = self.read()
            before = state.to_json()
            yield state
            after = state.to_json()
            if after != before:
                write_json(self.path, after)

    def create(self, *, pin: str, quirks: list[str] | tuple[str, ...] = ()) -> None:
        """Create a factory-fresh token with ``pin`` set; leave an existing one untouched."""
        wanted = check_quirks(quirks)
        sim_dir(self.home)
        with locked(self.lock_path):
            if self.exists():
                return
            # A token without attestation usually hides its model too: zero AAGUID (CTAP 2.1 §6.1.2).
            aaguid = bytes(16) if {"self-attestation", "no-attestation"} & set(wanted) else SIM_AAGUID
            att_key, att_cert = new_attestation_identity(self.home, self.name, aaguid)
            state = SimTokenState(
                name=self.name,
                aaguid=aaguid,
                master_key=secrets.token_bytes(32),
                pin=pin,
                pin_retries=PIN_RETRIES,
                sign_count=0,
                plugged=True,
                attestation_key=att_key,
                attestation_cert=att_cert,
                created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                quirks=wanted,
            )
            write_json(self.path, state.to_json())


# --- public helpers (exported from agent.tokens.sim) ------------------------------------------------


def create_sim_token(
    home: Path, name: str, *, pin: str = DEFAULT_PIN, quirks: list[str] | tuple[str, ...] = ()
) -> Path:
    """Create the simulated token ``sim:NAME`` (PIN ``pin``) unless it exists; return its state file.

    :param quirks: deliberate defects from :data:`FIDO2_QUIRKS`, for tests of what enrolment refuses.
    :raises UsageError: invalid name, PIN (4-63 bytes of UTF-8) or quirk.
    """
    if len(pin) < 4 or len(pin.encode()) > 63:
        raise UsageError("a simulated token PIN must be 4 to 63 bytes long")
    store = SimStateFile(home, name)
    store.create(pin=pin, quirks=quirks)
    return store.path


def sim_token_names(home: Path) -> list[str]:
    """Names of all simulated FIDO2 tokens under ``home``, plugged in or not, sorted."""
    directory = Path(home) / "sim"
    if not directory.is_dir():
        return []
    names = (p.name[: -len(SUFFIX)] for p in directory.glob(f"*{SUFFIX}") if p.is_file())
    return sorted(n for n in names if _NAME.fullmatch(n))


def sim_token_exists(home: Path, name: str) -> bool:
    """True if ``sim:NAME`` was created under ``home`` (plugged in or not)."""
    return SimStateFile(home, name).exists()


def sim_token_identity(home: Path, name: str) -> bytes | None:
    """Which power-up of ``sim:NAME`` is plugged in: changes when it is reset or re-created; None when unplugged."""
    try:
        state = SimStateFile(home, name).read()
    except (TokenNotFound, StateError):
        return None
    return hashlib.sha256(b"kms-agent sim identity\0" + state.master_key).digest() if state.plugged else None


def sim_pin(home: Path, name: str) -> str:
    """The PIN ``sim:NAME`` currently has (simulator convenience for auto mode; never for real tokens).

    :raises TokenNotFound: no such token.
    :raises PinRequired: the token has no PIN (it was reset).
    """
    pin = SimStateFile(home, name).read().pin
    if pin is None:
        raise PinRequired(f"simulated token sim:{name} has no PIN set (it was reset)")
    return pin


def set_plugged(home: Path, name: str, plugged: bool) -> None:
    """Plug ``sim:NAME`` in or pull it out; open connections fail at their next packet once pulled.

    :raises TokenNotFound: no such token.
    """
    with SimStateFile(home, name).transaction() as state:
        state.plugged = plugged
