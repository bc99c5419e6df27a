"""Typed records of the wallet.dat header (docs/wallet-format.md §3, §5, §6, §10; legacy appendix A).

The file stores the header as a canonical CBOR map; :meth:`VaultHeader.from_cbor_map` checks that
map strictly (:mod:`agent.vault.schema`) and turns it into frozen records, and
:meth:`VaultHeader.to_cbor_map` gives back exactly the map it came from, so the same content always
encodes to the same bytes. A v2 header carries no wallet rows, only the signed root of the wallet
index (:class:`IndexRoot`); a legacy v1 header's rows come back separately from
:meth:`VaultHeader.from_v1_cbor_map`. Records never change in place: an :class:`~agent.vault.vault.UnlockedVault`
replaces its header with the ``with_*`` methods below (or :func:`dataclasses.replace`).

Two fields stay opaque mappings: a slot's ``public`` part, which belongs to the token backend, and
the ``policy`` document, which belongs to :mod:`agent.policy` (the vault never imports it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from agent.vault.schema import (
    HEADER_V2,
    OPERATOR,
    RECOVERY,
    SLOT,
    WALLET_FIELDS,
    check,
    check_header,
    check_wallet_rows,
)

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
class IndexRoot:
    """Where the v2 wallet index starts and what it holds (§3.3), under the header MAC and signature.

    ``root`` is the hash of node ``root_node`` (§10.1); ``nodes`` is how many nodes the file holds and
    ``wallets`` how many rows their leaves hold. A legacy v1 header has no index: its
    :data:`NO_INDEX` root only carries the row count.
    """

    root: bytes
    root_node: int
    nodes: int
    wallets: int

    def to_cbor_map(self) -> dict[str, Any]:
        return _field_map(self)


NO_INDEX = IndexRoot(bytes(32), 0, 0, 0)


@dataclass(frozen=True, slots=True)
class VaultHeader:
    """The whole public header (§3): readable and checkable without any token.

    The wallet rows are not part of it: they sit in the index (§10), whose root is ``index``.
    """

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
    #: The custody policy document (docs/policy.md), opaque here: ``agent.policy.Policy.from_dict``
    #: parses it strictly.
    policy: Mapping[str, Any]
    index: IndexRoot = NO_INDEX
    #: Bytes of the sealed body that follows the signature (§2).
    body_len: int = 0

    @property
    def wallet_count(self) -> int:
        """How many wallets the vault holds (what ``len(header.wallets)`` was in v1)."""
        return self.index.wallets

    @classmethod
    def from_cbor_map(cls, raw: Any) -> VaultHeader:
        """Check a decoded v2 header map strictly, then build the records.

        :raises VaultFormatError: naming the offending field (unknown keys, wrong types or lengths,
            an impossible quorum, a slot of no operator).
        """
        check_header(raw, HEADER_V2)
        return cls(
            **cls._common(raw),
            index=IndexRoot(**raw["index"]),
            body_len=raw["body_len"],
        )

    @classmethod
    def from_v1_cbor_map(cls, raw: Any) -> tuple[VaultHeader, tuple[WalletRow, ...]]:
        """A legacy v1 header (appendix A): the header, and the wallet rows it carried."""
        check_header(raw)
        rows = tuple(WalletRow(*row) for row in raw["wallets"])
        return cls(**cls._common(raw), index=replace(NO_INDEX, wallets=len(rows))), rows

    @staticmethod
    def _common(raw: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "vault_id": raw["vault_id"],
            "generation": raw["generation"],
            "created_at": raw["created_at"],
            "updated_at": raw["updated_at"],
            "rp_id": raw["rp_id"],
            "quorum": raw["quorum"],
            "operators": tuple(OperatorEntry._of(op) for op in raw["operators"]),
            "slots": tuple(SlotEntry._of(slot) for slot in raw["slots"]),
            "recovery": RecoveryEntry._of(raw["recovery"]),
            "signing_key": raw["signing_key"],
            "body_nonce": raw["body_nonce"],
            "simulated": raw["simulated"],
            "policy": dict(raw["policy"]),
        }

    def _common_map(self) -> dict[str, Any]:
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
            "policy": dict(self.policy),
        }

    def to_cbor_map(self) -> dict[str, Any]:
        """The v2 map the file stores; its canonical CBOR is the header's exact bytes."""
        return {**self._common_map(), "index": self.index.to_cbor_map(), "body_len": self.body_len}

    def to_v1_cbor_map(self, rows: Iterable[WalletRow]) -> dict[str, Any]:
        """The legacy v1 map of this header with ``rows`` (tests and vectors only: v1 is never written)."""
        return {**self._common_map(), "wallets": [row.to_cbor_row() for row in rows]}

    # --- lookups --------------------------------------------------------------------------------
    def operator(self, operator_id: bytes) -> OperatorEntry | None:
        return next((op for op in self.operators if op.operator_id == operator_id), None)

    def operator_named(self, name: str) -> OperatorEntry | None:
        return next((op for op in self.operators if op.name == name), None)

    def slots_of(self, operator_id: bytes) -> tuple[SlotEntry, ...]:
        return tuple(slot for slot in self.slots if slot.operator_id == operator_id)

    # --- changed copies -------------------------------------------------------------------------
    def with_slots(self, slots: Iterable[SlotEntry]) -> VaultHeader:
        """The slots replaced; ``simulated`` follows them (true if any slot is a simulated token)."""
        new = tuple(slots)
        return replace(self, slots=new, simulated=any(slot.simulated for slot in new))

    def with_policy(self, policy: Mapping[str, Any]) -> VaultHeader:
        return replace(self, policy=dict(policy))

    def with_index(self, index: IndexRoot, *, body_len: int | None = None) -> VaultHeader:
        return replace(self, index=index, body_len=self.body_len if body_len is None else body_len)

    def next_write(self, *, updated_at: int, body_nonce: bytes) -> VaultHeader:
        """The header of the next write (§7): generation + 1, a fresh body nonce."""
        return replace(self, generation=self.generation + 1, updated_at=updated_at, body_nonce=body_nonce)
