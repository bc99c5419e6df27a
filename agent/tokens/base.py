"""The narrow contract between the vault and a hardware token.

The vault never imports fido2 or yubikit: it hands a token the public part of a keyslot and gets
back key material (``ikm``) that only that token, with its PIN and a touch, can produce. The same
touch also yields an *approval*: a signature by the token over a 32-byte digest that the caller
chose (the transaction's approval digest, or a fixed unlock context), so one touch both unwraps the
operator's share and proves which operator agreed to what.

Backends: :mod:`agent.tokens.fido2_token` (hmac-secret, any python-fido2 ``CtapDevice``: HID,
PC/SC, or the simulator) and, later, PIV (on-card ECDH) over yubikit.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class Prompts(Protocol):
    """How a token talks to the person holding it. The CLI prints to stderr; tests answer directly."""

    def touch(self, token_label: str) -> None:
        """The token is waiting for a touch now (called as soon as the device says so)."""

    def pin(self, token_label: str, attempts_remaining: int | None) -> bytearray:
        """Return the PIN for ``token_label`` as UTF-8 in a bytearray the token wipes after use."""


@dataclass(frozen=True)
class Approval:
    """Evidence of one touch over one digest, enough for anyone to re-verify later offline."""

    kind: str
    #: What was signed over: FIDO2 ``authData``; empty for PIV (it signs the digest itself).
    auth_data: bytes
    signature: bytes
    sign_count: int
    #: True when the token reported user presence and user verification (PIN) for this touch.
    user_present: bool
    user_verified: bool


@dataclass
class Unwrapped:
    """Key material from one token operation. ``ikm`` must be wiped by the caller."""

    ikm: bytearray
    approval: Approval


@dataclass
class Enrolment:
    """A freshly enrolled credential: public slot fields for the header plus the first ``ikm``."""

    kind: str
    token_label: str
    #: CBOR-encodable public fields the backend needs to find the token and unwrap again.
    slot_public: dict[str, Any]
    ikm: bytearray
    #: True for simulated tokens: the vault records it and says so on every command.
    simulated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Token(abc.ABC):
    """One physical (or simulated) token, opened for the length of an operation."""

    kind: str
    label: str
    simulated: bool = False

    @abc.abstractmethod
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
        """Create a credential bound to ``rp_id`` and return its public data and first key material.

        Every backend checks the token's capabilities and attestation first (docs/tokens.md) and
        raises :class:`~agent.errors.TokenUnsupported` naming what is missing.

        :param allow_unattested: enrol a token whose attestation chains to no trusted root; None
            keeps the choice made when the token was opened (default: refuse).
        """

    @abc.abstractmethod
    def holds(self, slot_public: Mapping[str, Any]) -> bool:
        """Cheap check (no PIN, no touch) whether this token holds the slot's credential."""

    @abc.abstractmethod
    def unwrap(self, slot_public: Mapping[str, Any], *, digest: bytes, prompts: Prompts) -> Unwrapped:
        """With PIN and touch, reproduce the slot's key material and sign ``digest`` (32 bytes)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
