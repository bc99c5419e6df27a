"""Typed records of the wallet.dat v1 header (docs/wallet-format.md §3, §3.1, §3.2, §5, §6).

The file stores the header as a canonical CBOR map; :meth:`VaultHeader.from_cbor_map` checks that
map strictly (:mod:`agent.vault.schema`) and turns it into frozen records, and
:meth:`VaultHeader.to_cbor_map` gives back exactly the map it came from, so the same content always
encodes to the same bytes. Records never change in place: an :class:`~agent.vault.vault.UnlockedVault`
replaces its header with the ``with_*`` methods below (or :func:`dataclasses.replace`).

Two fields stay opaque mappings: a slot's ``public`` part, which belongs to the token backend, and
the ``policy`` document, which belongs to :mod:`agent.policy` (the vault never imports it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from agent.vault.schema import OPERATOR, RECOVERY, SLOT, WALLET_FIELDS, check, check_header, check_wallet_rows

WALLET_TYPES = ("MNEMONIC", "PRIVATE_KEY")


def _by_field(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of a record whose fields are named as its (already checked) CBOR keys."""
    return {f.name: raw[f.name] for f in fields(cls)}


def _field_map(record: Any) -> dict[str, Any]:
    """The CBOR map of such a record: its fields, by name, in declaration order."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


@dataclass(frozen=True, slots=True)
class OperatorEntry:
    """One person (§3.1). All of their slots unwrap the same share and count once in a quorum."""

    operator_id: bytes
    name: str

    @classmethod
    def from_cbor_map(cls, raw: Any) -> OperatorEntry:
        """:raises VaultFormatError: a missing, unknown or mistyped field."""
        check(raw, OPERATOR, "operator")
        return cls._of(raw)

    @classmethod
    def _of(cls, raw: Mapping[str, Any]) -> OperatorEntry:
        return cls(**_by_field(cls, raw))

    def to_cbor_map(self) -> dict[str, Any]:
        return _field_map(self)


@dataclass(frozen=True, slots=True)
class SlotEntry:
    """One token credential wrapping its operator's share (§5). ``public`` is the backend's own map."""

    slot_id: bytes
    operator_id: bytes
    kind: str
    label: str
    simulated: bool
    enrolled_at: int
    public: Mapping[str, Any]
    kdf_salt: bytes
    nonce: bytes
    wrapped: bytes

    @classmethod
    def from_cbor_map(cls, raw: Any) -> SlotEntry:
        """:raises VaultFormatError: a missing, unknown or mistyped field."""
        check(raw, SLOT, "slot")
        return cls._of(raw)

    @classmethod
    def _of(cls, raw: Mapping[str, Any]) -> SlotEntry:
        return cls(**{**_by_field(cls, raw), "public": dict(raw["public"])})

    def to_cbor_map(self) -> dict[str, Any]:
        return {**_field_map(self), "public": dict(self.public)}


@dataclass(frozen=True, slots=True)
class RecoveryEntry:
    """The data key wrapped under the recovery officers' SLIP-39 secret (§6)."""

    kind: str
    threshold: int
    shares: int
    nonce: bytes
    wrapped: bytes

    @classmethod
    def from_cbor_map(cls, raw: Any) -> RecoveryEntry:
        """:raises VaultFormatError: a missing, unknown or mistyped field."""
        check(raw, RECOVERY, "recovery")
        return cls._of(raw)

    @classmethod
    def _of(cls, raw: Mapping[str, Any]) -> RecoveryEntry:
        return cls(**_by_field(cls, raw))

    def to_cbor_map(self) -> dict[str, Any]:
        return _field_map(self)


@dataclass(frozen=True, slots=True)
class WalletRow:
    """One row of the public wallet index (§3.2): a fixed-order array in the file.

    :meth:`to_json` gives the shape users see, with Tatum's field names (``signatureId``) and the
    absent one of ``xpub`` / ``address`` left out.
    """

    signature_id: str
    type: str
    chain: str
    testnet: bool
    created_at: int
    xpub: str | None = None
    address: str | None = None

    @classmethod
    def from_cbor_row(cls, raw: Any) -> WalletRow:
        """:raises VaultFormatError: not an array of the seven typed fields."""
        check_wallet_rows([raw], "wallet")
        return cls(*raw)

    def to_cbor_row(self) -> list[Any]:
        return [self.signature_id, self.type, self.chain, self.testnet, self.created_at, self.xpub, self.address]

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in zip(WALLET_FIELDS, self.to_cbor_row(), strict=True) if v is not None}


@dataclass(frozen=True, slots=True)
class VaultHeader:
    """The whole public header (§3): readable and checkable without any token."""

    vault_id: bytes
    generation: int
    created_at: int
    updated_at: int
    rp_id: str
    quorum: int
    operators: tuple[OperatorEntry, ...]
    slots: tuple[SlotEntry, ...]
    recovery: RecoveryEntry
    signing_key: bytes
    body_nonce: bytes
    simulated: bool
    wallets: tuple[WalletRow, ...]
    #: The custody policy document (docs/policy.md), opaque here: ``agent.policy.Policy.from_dict``
    #: parses it strictly.
    policy: Mapping[str, Any]

    @classmethod
    def from_cbor_map(cls, raw: Any) -> VaultHeader:
        """Check a decoded header map strictly, then build the records.

        :raises VaultFormatError: naming the offending field (unknown keys, wrong types or lengths,
            an impossible quorum, a slot of no operator).
        """
        check_header(raw)
        return cls(
            vault_id=raw["vault_id"],
            generation=raw["generation"],
            created_at=raw["created_at"],
            updated_at=raw["updated_at"],
            rp_id=raw["rp_id"],
            quorum=raw["quorum"],
            operators=tuple(OperatorEntry._of(op) for op in raw["operators"]),
            slots=tuple(SlotEntry._of(slot) for slot in raw["slots"]),
            recovery=RecoveryEntry._of(raw["recovery"]),
            signing_key=raw["signing_key"],
            body_nonce=raw["body_nonce"],
            simulated=raw["simulated"],
            wallets=tuple(WalletRow(*row) for row in raw["wallets"]),
            policy=dict(raw["policy"]),
        )

    def to_cbor_map(self) -> dict[str, Any]:
        """The map the file stores; its canonical CBOR is the header's exact bytes."""
        return {
            "vault_id": self.vault_id,
            "generation": self.generation,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "rp_id": self.rp_id,
            "quorum": self.quorum,
            "operators": [op.to_cbor_map() for op in self.operators],
            "slots": [slot.to_cbor_map() for slot in self.slots],
            "recovery": self.recovery.to_cbor_map(),
            "signing_key": self.signing_key,
            "body_nonce": self.body_nonce,
            "simulated": self.simulated,
            "wallets": [row.to_cbor_row() for row in self.wallets],
            "policy": dict(self.policy),
        }

    # --- lookups --------------------------------------------------------------------------------
    def operator(self, operator_id: bytes) -> OperatorEntry | None:
        return next((op for op in self.operators if op.operator_id == operator_id), None)

    def operator_named(self, name: str) -> OperatorEntry | None:
        return next((op for op in self.operators if op.name == name), None)

    def slots_of(self, operator_id: bytes) -> tuple[SlotEntry, ...]:
        return tuple(slot for slot in self.slots if slot.operator_id == operator_id)

    def wallet(self, signature_id: str) -> WalletRow | None:
        return next((row for row in self.wallets if row.signature_id == signature_id), None)

    # --- changed copies -------------------------------------------------------------------------
    def with_slots(self, slots: Iterable[SlotEntry]) -> VaultHeader:
        """The slots replaced; ``simulated`` follows them (true if any slot is a simulated token)."""
        new = tuple(slots)
        return replace(self, slots=new, simulated=any(slot.simulated for slot in new))

    def with_wallets(self, wallets: Iterable[WalletRow]) -> VaultHeader:
        return replace(self, wallets=tuple(wallets))

    def with_policy(self, policy: Mapping[str, Any]) -> VaultHeader:
        return replace(self, policy=dict(policy))

    def next_write(self, *, updated_at: int, body_nonce: bytes) -> VaultHeader:
        """The header of the next write (§7): generation + 1, a fresh body nonce."""
        return replace(self, generation=self.generation + 1, updated_at=updated_at, body_nonce=body_nonce)
