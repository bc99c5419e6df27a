"""Finding tokens: by the spec an operator typed at enrolment, and by credential at unlock.

Token specs (the CLI's scripting contract): ``sim:NAME`` (a simulated token kept under
``$KMS_AGENT_HOME/sim``), ``fido2`` / ``fido2:ID`` (a FIDO2 authenticator over USB HID or a PC/SC
reader; ID is a substring of its path, serial or product name) and ``piv`` / ``piv:SERIAL``.

At unlock we never ask "which token is this?": for each enrolled slot we look for a token that
*holds* its credential (FIDO2 ``up=false`` pre-flight, PIV serial), so several tokens plugged in at
once, or a token in another port, just work (research §4 items 2-4).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.errors import TokenNotFound, UsageError, WrongToken
from agent.tokens.base import Token
from agent.tokens.pool import POOL

if TYPE_CHECKING:
    from agent.tokens.fido2_token import Fido2Token

logger = logging.getLogger(__name__)

SIM_PREFIX = "sim:"


class EnrolledSlot(Protocol):
    """What finding a slot's token reads from it (``agent.vault.records.SlotEntry`` has these)."""

    @property
    def kind(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def public(self) -> Mapping[str, Any]: ...


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``kind[:arg]``; kind is ``sim``, ``fido2`` or ``piv``."""
    kind, _, arg = spec.partition(":")
    if kind not in ("sim", "fido2", "piv"):
        raise UsageError(f"unknown token {spec!r}: use sim:NAME, fido2[:ID] or piv[:SERIAL]")
    if kind == "sim" and not arg:
        raise UsageError("a simulated token needs a name: sim:NAME")
    return kind, arg


def simulator_anchors(home: Path) -> tuple[Any, ...]:
    """The simulator's per-home test CA as an attestation anchor, if this home has one.

    A chain to it marks the token as *simulated* (the vault says so on every command); it is
    offered to real-looking devices too, so a simulator served over PC/SC is recognised.
    """
    from agent.tokens.attestation import SIMULATOR, Anchor
    from agent.tokens.sim.attestation import CA_FILE, sim_attestation_ca_certificate

    if not (Path(home) / "sim" / CA_FILE).is_file():
        return ()
    return (Anchor(SIMULATOR, sim_attestation_ca_certificate(home)),)


def _sim_fido2(home: Path, name: str, *, allow_unattested: bool = False) -> Fido2Token:
    from agent.tokens.fido2_token import Fido2Token
    from agent.tokens.sim import open_sim_hid_device

    return Fido2Token(
        open_sim_hid_device(home, name),
        SIM_PREFIX + name,
        simulated=True,
        anchors=simulator_anchors(home),
        allow_unattested=allow_unattested,
    )


def _real_fido2_devices() -> Iterator[tuple[str, Any]]:
    """Every FIDO2 device the OS lets us open: USB HID first, then PC/SC readers (NFC/CCID)."""
    try:
        from fido2.hid import CtapHidDevice

        for dev in CtapHidDevice.list_devices():
            desc = dev.descriptor
            ident = desc.serial_number or str(desc.path)
            yield f"fido2:{desc.product_name or 'authenticator'}#{ident}", dev
    except Exception as exc:  # no hidraw access is common; doctor explains it
        logger.debug("HID enumeration failed: %s", type(exc).__name__)
    try:
        from fido2.pcsc import CtapPcscDevice

        for pcsc_dev in CtapPcscDevice.list_devices():
            yield f"fido2:{pcsc_dev}", pcsc_dev
    except Exception as exc:
        logger.debug("PC/SC enumeration failed: %s", type(exc).__name__)


def open_token(spec: str, home: Path, *, kind: str = "fido2", allow_unattested: bool = False) -> Token:
    """Open the token an operator named, for enrolment.

    :param allow_unattested: let its ``enrol`` accept a token whose attestation chains to no
        trusted root (the CLI's ``--allow-unattested``); the slot then records ``attestation_root: "none"``.
    """
    from agent.tokens.fido2_token import Fido2Token

    token_kind, arg = parse_spec(spec)
    if kind not in ("fido2", "piv"):
        raise UsageError(f"unknown token kind {kind!r}: use fido2 or piv")
    if token_kind == "sim" and kind != "piv":
        from agent.tokens.piv_token import is_piv_sim

        if is_piv_sim(home, arg):
            kind = "piv"  # `kms-agent sim create NAME --kind piv` made it a PIV card
    if token_kind == "piv" or (token_kind == "sim" and kind == "piv"):
        from agent.tokens.piv_token import open_piv_token

        token: Token = open_piv_token(spec, home, allow_unattested=allow_unattested)
        return token
    if token_kind == "sim":
        from agent.tokens.sim import create_sim_token

        create_sim_token(home, arg)
        return _sim_fido2(home, arg, allow_unattested=allow_unattested)
    matches = [(label, dev) for label, dev in _real_fido2_devices() if not arg or arg in label]
    if not matches:
        raise TokenNotFound(
            f"no FIDO2 token matching {spec!r} is plugged in",
            hint="check the USB connection and permissions: `kms-agent doctor`",
        )
    if len(matches) > 1:
        raise UsageError(f"{len(matches)} FIDO2 tokens match {spec!r}: name one, e.g. {matches[0][0]}")
    label, dev = matches[0]
    return Fido2Token(dev, label, anchors=simulator_anchors(home), allow_unattested=allow_unattested)


def find_token(slot: EnrolledSlot, home: Path) -> Token | None:
    """Return an opened token holding ``slot``'s credential, or None when none is plugged in."""
    label = slot.label
    if slot.kind == "piv":
        from agent.tokens.piv_token import find_piv_token

        found: Token | None = find_piv_token(slot.public, home)
        return found
    key: tuple[Any, ...] = (str(Path(home).resolve()), label, bytes(slot.public["cred_id"]))
    if label.startswith(SIM_PREFIX):
        from agent.tokens.sim import sim_token_exists, sim_token_identity

        name = label[len(SIM_PREFIX) :]
        if not sim_token_exists(home, name):
            return None
        # The same simulated token, not reset or re-created since it proved it holds the credential.
        key = (*key, sim_token_identity(home, name))
        pooled = _from_pool(key) if key[-1] is not None else None
        if pooled is not None:
            return pooled
        try:
            token = _sim_fido2(home, name)
        except TokenNotFound:
            return None  # unplugged
        if token.holds(slot.public):
            return _pooled(key, token)
        token.close()
        raise WrongToken(f"{label} is plugged in but does not hold its enrolled credential (reset or replaced?)")
    from agent.tokens.fido2_token import Fido2Token

    # A real device is enumerated and probed every time: only that tells a token still plugged in
    # from one pulled out meanwhile (absent, so a backup token may stand in), as an open handle cannot.
    for found_label, dev in _real_fido2_devices():
        token = Fido2Token(dev, found_label)
        if token.holds(slot.public):
            token.label = label
            return token
        token.close()
    return None


def _from_pool(key: tuple[Any, ...]) -> Fido2Token | None:
    from agent.tokens.fido2_token import Fido2Token

    token = POOL.take(key)
    if token is None:
        return None
    assert isinstance(token, Fido2Token)
    token.release = lambda t: POOL.give(key, t)
    return token


def _pooled(key: tuple[Any, ...], token: Fido2Token) -> Fido2Token:
    """A token that proved it holds ``key``'s credential: after use it waits in the pool for the next find."""
    token.release = lambda t: POOL.give(key, t)
    return token
