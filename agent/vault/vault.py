"""The vault's few public verbs: create, load (no token), unlock (quorum of touches), recover, save.

Reading what a vault *is* (operators, tokens, wallets and their xpubs) needs no token: the header is
signed by a key the agent pinned at init. Anything that reads or changes secrets needs the data key,
which exists only after ``quorum`` distinct operators each touched one of their own tokens (or the
recovery officers combined their words), and is wiped by :meth:`UnlockedVault.close`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import (
    KmsAgentError,
    QuorumNotMet,
    TokenNotFound,
    UsageError,
    VaultIntegrityError,
    VaultUntrusted,
    WrongToken,
)
from agent.faults import crash_point
from agent.files import atomic_write
from agent.locks import writer_lock
from agent.tokens.base import Approval, Prompts, Token
from agent.vault import format as fmt
from agent.vault import keyslots, quorum
from agent.vault import primitives as p
from agent.vault.index import IndexEditor, IndexReader
from agent.vault.pin import VaultPin, check_pin, load_pin, save_pin
from agent.vault.records import WALLET_TYPES, OperatorEntry, RecoveryEntry, SlotEntry, VaultHeader, WalletRow
from agent.vault.sealed import (
    VaultKeys,
    check_file_signature,
    open_body,
    open_entry,
    open_wallet_entry,
    seal_head,
    seal_wallet_entry,
)
from agent.vault.store import FileBuffer, write_stream

logger = logging.getLogger(__name__)

#: Given a slot, return an opened token that holds its credential, or None if none is plugged in.
TokenFinder = Callable[[SlotEntry], Token | None]

T = TypeVar("T")

DEFAULT_RP_ID = "kms-agent.local"
#: Reads of wallet.dat while a rotation moves the pin to a new signing key (see PublicVault.load).
_PIN_RETRIES = 5


@dataclass(frozen=True)
class Touch:
    """One operator's touch during an unlock: who, with which token, and the signed evidence."""

    operator: str
    token_label: str
    approval: Approval
    operator_id: bytes = b""
    slot_id: bytes = b""


def unlock_digest(vault_id: bytes, generation: int) -> bytes:
    """What a token signs when it unwraps for an unlock (approvals sign the transaction digest)."""
    return p.sha256(p.DOMAIN + b"unlock\0" + vault_id + generation.to_bytes(8, "big"))


class Wallets:
    """Every wallet row, streamed afresh on each iteration (so at 1M wallets nothing holds them all).

    Re-iterable, with ``len()`` from the signed header: it stands in for the list v1 returned.
    """

    def __init__(self, rows: Callable[[], Iterator[WalletRow]], count: int) -> None:
        self._rows, self._count = rows, count

    def __iter__(self) -> Iterator[WalletRow]:
        return self._rows()

    def __len__(self) -> int:
        return self._count


class PublicVault:
    """A wallet.dat read and checked without any token: signature and pin only.

    Loading reads the header and body; a v2 vault's wallet index is read later, a node at a time,
    through the descriptor ``source`` kept open (so a later rename of wallet.dat does not change
    what this object reads). A legacy v1 file is read whole, as before.
    """

    def __init__(self, path: Path, pin_path: Path, vf: fmt.VaultFile | fmt.V1File, source: FileBuffer | bytes) -> None:
        self.path = path
        self.pin_path = pin_path
        self.file = vf
        self.source = source
        self._rows = {row.signature_id: row for row in vf.rows} if isinstance(vf, fmt.V1File) else None

    @classmethod
    def load(cls, path: Path, pin_path: Path, *, require_pin: bool = True) -> PublicVault:
        for attempt in range(_PIN_RETRIES):
            try:
                return cls._load(path, pin_path, require_pin=require_pin)
            except VaultUntrusted:
                # A data-key rotation renames the new file, then moves the pin to its new signing key:
                # a reader that read the pin in between sees a mismatch that the next read resolves.
                if attempt == _PIN_RETRIES - 1 or not pin_path.exists():
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, path: Path, pin_path: Path, *, require_pin: bool) -> PublicVault:
        # The pin first: a writer replaces wallet.dat and then moves the pin forward, so a pin read
        # before the file is never newer than the file (reading them the other way round, a save
        # landing in between would look like a rollback).
        pin = load_pin(pin_path) if require_pin else None
        buf = FileBuffer.open_private(path)
        vf: fmt.VaultFile | fmt.V1File
        source: FileBuffer | bytes
        if fmt.version_of(buf) == fmt.VERSION:
            vf, source = fmt.parse(buf), buf
        else:
            source = buf.read_all()
            buf.close()
            vf = fmt.parse_v1(source)
        check_file_signature(vf)
        if require_pin:
            h = vf.header
            check_pin(
                pin,
                vault_id=h.vault_id,
                signing_key=h.signing_key,
                generation=h.generation,
                header_mac=vf.header_mac,
            )
        return cls(path, pin_path, vf, source)

    # --- public facts -------------------------------------------------------------------------
    @property
    def header(self) -> VaultHeader:
        return self.file.header

    @property
    def version(self) -> int:
        return fmt.VERSION_V1 if isinstance(self.file, fmt.V1File) else fmt.VERSION

    @property
    def fingerprint(self) -> str:
        return p.fingerprint(self.header.signing_key)

    @property
    def simulated(self) -> bool:
        return self.header.simulated

    def operator_name(self, operator_id: bytes) -> str:
        return _name(self.header, operator_id)

    def index(self) -> IndexReader | None:
        """The authenticated wallet index of a v2 file (None for a legacy v1 file)."""
        return IndexReader(self.file) if isinstance(self.file, fmt.VaultFile) else None

    def wallet(self, signature_id: str) -> WalletRow:
        """One row of the public index (``.to_json()`` is the Tatum-shaped dict users see).

        Costs one node per tree level, each hashed against its parent: the same at 1 wallet as at 1M.

        :raises UsageError: no wallet with that signatureId.
        :raises VaultIntegrityError: a node on the way does not match the signed root.
        """
        if self._rows is not None:
            row = self._rows.get(signature_id)
        else:
            found = _find(self.index(), signature_id)
            row = fmt.row_of(found) if found is not None else None
        if row is None:
            raise UsageError(f"no wallet with signatureId {signature_id!r} in this vault")
        return row

    def find_wallet(self, signature_id: str) -> WalletRow | None:
        """As :meth:`wallet`, but None when there is no such wallet (what ``header.wallet`` was in v1)."""
        try:
            return self.wallet(signature_id)
        except UsageError:
            return None

    def wallets(self) -> Wallets:
        """Every wallet: in signatureId order for v2 (streamed, one leaf at a time), file order for v1."""
        if self._rows is not None:
            rows = self._rows
            return Wallets(lambda: iter(rows.values()), len(rows))
        reader = self.index()
        assert reader is not None
        return Wallets(lambda: (fmt.row_of(row) for row in IndexEditor(reader).rows()), self.header.wallet_count)

    def verify(self) -> None:
        """Check every byte of the file without a token: the whole index against the signed root (O(n)).

        :meth:`load` already checked the header, body and pin; a v1 file was checked whole there.

        :raises VaultIntegrityError: a node does not match its parent's hash.
        :raises VaultFormatError: the index breaks a structural rule (§10.1).
        """
        reader = self.index()
        if reader is not None:
            reader.verify()

    def trust(self) -> VaultPin:
        """Pin this vault (after an operator compared the fingerprint printed at init)."""
        pin = VaultPin(self.header.vault_id, self.header.signing_key, self.header.generation, self.file.header_mac)
        save_pin(self.pin_path, pin)
        return pin

    # --- opening ------------------------------------------------------------------------------
    def unlock(
        self,
        finder: TokenFinder,
        prompts: Prompts,
        *,
        operators: Sequence[str] | None = None,
        digest: bytes | None = None,
    ) -> UnlockedVault:
        """Collect one share from each of ``quorum`` distinct operators, then open the body.

        :param operators: names to ask, in order (default: every operator, in enrolment order).
        :raises QuorumNotMet: fewer distinct operators had a token present.
        :raises TokenError: a token refused (wrong PIN, no touch, removed): nothing is changed.
        """
        digest = digest or unlock_digest(self.header.vault_id, self.header.generation)
        collected = self.collect(finder, prompts, digest=digest, operators=operators, want=self.header.quorum)
        return self.open_with(collected)

    def collect(
        self,
        finder: TokenFinder,
        prompts: Prompts,
        *,
        digest: bytes,
        want: int,
        operators: Sequence[str] | None = None,
        skip: Sequence[bytes] = (),
        hold: Callable[[bytes], bool] | None = None,
    ) -> Collected:
        """Touch the tokens of up to ``want`` distinct operators over ``digest``; keep their shares.

        Each touch both signs ``digest`` (the approval) and unwraps that operator's share. Operators
        in ``skip`` (by id) are not asked; operators are asked in enrolment order, so that ``hold``
        (called before an operator is asked; False skips them) takes per-operator locks in one
        global order. The caller must :meth:`Collected.wipe` (or open) the result.
        """
        by_name = {op.name: op for op in self.header.operators}
        wanted = list(operators) if operators else [op.name for op in self.header.operators]
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise UsageError(f"no operator named {', '.join(unknown)} in this vault (see `kms-agent operator list`)")
        names = [op.name for op in self.header.operators if op.name in wanted]
        collected = Collected(self)
        try:
            for name in names:
                if len(collected.touches) >= want:
                    break
                op_id = by_name[name].operator_id
                if op_id in skip:
                    continue
                if hold is not None and not hold(op_id):
                    continue
                got = self._unwrap_operator(op_id, finder, prompts, digest)
                if got is None:
                    collected.absent.append(name)
                    continue
                collected.shares[op_id], touch, kek = got
                collected.touches.append(touch)
                collected.keks[touch.slot_id] = kek
        except BaseException:
            collected.wipe()
            raise
        return collected

    def open_with(self, collected: Collected) -> UnlockedVault:
        """Rebuild the data key from collected shares (quorum distinct operators) and open the body."""
        need = self.header.quorum
        try:
            if len(collected.shares) < need:
                touched = ", ".join(t.operator for t in collected.touches) or "nobody"
                raise QuorumNotMet(
                    f"{need} distinct operators must touch a token; got {len(collected.shares)} ({touched})"
                    + (f"; no token present for {', '.join(collected.absent)}" if collected.absent else ""),
                    hint="plug in the tokens of more operators, or name them with --operator",
                )
            dek = quorum.combine([bytes(s).decode() for s in collected.shares.values()], need)
            keks, collected.keks = collected.keks, {}
        finally:
            collected.wipe()
        return UnlockedVault.open(self, dek, collected.touches, keks=keks)

    def _unwrap_operator(
        self, op_id: bytes, finder: TokenFinder, prompts: Prompts, digest: bytes
    ) -> tuple[bytearray, Touch, bytearray] | None:
        """The first of the operator's tokens that is present unwraps; a wrong one defers to a backup."""
        wrong: WrongToken | None = None
        for slot in self.header.slots_of(op_id):
            try:
                token = finder(slot)
            except WrongToken as exc:
                wrong = wrong or exc
                continue
            if token is None:
                continue
            with token:
                unwrapped = token.unwrap(slot.public, digest=digest, prompts=prompts)
            try:
                kek = keyslots.slot_kek(slot, unwrapped.ikm, self.header.vault_id)
            finally:
                p.wipe(unwrapped.ikm)
            try:
                share = keyslots.unwrap_share_with_kek(slot, kek, self.header.vault_id)
            except BaseException:
                p.wipe(kek)
                raise
            touch = Touch(self.operator_name(op_id), slot.label, unwrapped.approval, op_id, slot.slot_id)
            return share, touch, kek
        if wrong is not None:
            raise wrong
        return None

    def recover(self, shares: Sequence[str]) -> UnlockedVault:
        """Open with the recovery officers' SLIP-39 words instead of tokens (bypasses the quorum)."""
        rec = self.header.recovery
        secret = quorum.combine(shares, rec.threshold)
        try:
            dek = keyslots.unwrap_recovery(rec, secret, self.header.vault_id)
        finally:
            p.wipe(secret)
        return UnlockedVault.open(self, dek, [])


@dataclass
class Collected:
    """Shares and approvals gathered from operators' touches; holds secrets until wiped."""

    vault: PublicVault
    shares: dict[bytes, bytearray] = field(default_factory=dict)
    touches: list[Touch] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    #: Slot KEKs of the touches (slot id -> KEK), handed to the opened vault (see UnlockedVault._rebase).
    keks: dict[bytes, bytearray] = field(default_factory=dict)

    def wipe(self) -> None:
        p.wipe(*self.shares.values(), *self.keks.values())

    def merge(self, other: Collected) -> None:
        for op_id, share in other.shares.items():
            if op_id in self.shares:
                p.wipe(share)
            else:
                self.shares[op_id] = share
        self.touches.extend(other.touches)
        self.absent = other.absent
        for slot_id, kek in other.keks.items():
            if slot_id in self.keks:
                p.wipe(kek)
            else:
                self.keks[slot_id] = kek
        other.keks = {}


@dataclass
class _Legacy:
    """A v1 vault's wallets, kept as read until the first change migrates them to a v2 index."""

    rows: dict[str, WalletRow]
    entries: dict[str, bytes]
    data: bytes  # the v1 file as read: the backup written before the first v2 save


@dataclass
class UnlockedVault:
    """A vault with its data key in memory. Use as a context manager so the key is always wiped.

    ``header`` is an immutable :class:`VaultHeader`: the methods below replace it with a changed
    copy, and :meth:`save` writes whichever header is current. Wallet changes go to a copy-on-write
    :class:`~agent.vault.index.IndexEditor` over the file last read or written, so a save rewrites
    O(log n) nodes and copies the rest.
    """

    path: Path
    pin_path: Path
    _header: VaultHeader
    body: dict[str, Any]
    keys: VaultKeys
    touches: list[Touch] = field(default_factory=list)
    #: Index node limits for new and split nodes (tests build deep trees from few wallets with small ones).
    leaf_max: int = fmt.LEAF_MAX
    node_max: int = fmt.NODE_MAX
    _base: IndexReader | None = field(default=None, repr=False)
    _source: FileBuffer | None = field(default=None, repr=False)
    _editor: IndexEditor | None = field(default=None, repr=False)
    _legacy: _Legacy | None = field(default=None, repr=False)
    _migrating: bytes | None = field(default=None, repr=False)
    #: KEKs of the slots touched to open this vault: they follow a data-key rotation (see _rebase).
    _keks: dict[bytes, bytearray] = field(default_factory=dict, repr=False)
    #: Slots made by prepare_slot, with the signing key (so the data key) their share belongs to.
    _prepared: dict[bytes, bytes] = field(default_factory=dict, repr=False)

    @property
    def header(self) -> VaultHeader:
        count = self.wallet_count
        if count != self._header.index.wallets:
            self._header = self._header.with_index(replace(self._header.index, wallets=count))
        return self._header

    @header.setter
    def header(self, header: VaultHeader) -> None:
        self._header = header

    @property
    def wallet_count(self) -> int:
        if self._legacy is not None:
            return len(self._legacy.rows)
        if self._editor is not None:
            return self._editor.count
        return self._header.index.wallets

    @classmethod
    def open(
        cls,
        public: PublicVault,
        dek: bytearray,
        touches: list[Touch],
        *,
        keks: dict[bytes, bytearray] | None = None,
    ) -> UnlockedVault:
        keys = VaultKeys(dek, public.header.vault_id)
        try:
            body = open_body(public.file, keys)
        except KmsAgentError:
            keys.wipe()
            p.wipe(*(keks or {}).values())
            raise
        vault = cls(public.path, public.pin_path, public.header, {}, keys, touches)
        vault._keks = dict(keks or {})
        vault._adopt(public, body)
        return vault

    def _adopt(self, public: PublicVault, body: dict[str, Any]) -> None:
        """Take ``public`` (opened with this vault's key) as the state every change starts from."""
        self._header, self._editor, self._migrating = public.header, None, None
        if isinstance(public.file, fmt.V1File):
            assert isinstance(public.source, bytes)
            rows = {row.signature_id: row for row in public.file.rows}
            self._legacy = _Legacy(rows, dict(body.pop("entries")), public.source)
            self._base, self._source = None, None
        else:
            assert isinstance(public.source, FileBuffer)
            self._legacy = None
            self._base, self._source = IndexReader(public.file), public.source
        self.body = body

    def __enter__(self) -> UnlockedVault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.keys.wipe()
        p.wipe(*self._keks.values())
        self._keks = {}
        self.body = {}
        self._editor = self._legacy = None

    # --- operators and tokens -------------------------------------------------------------------
    def operator_id(self, name: str) -> bytes:
        op = self.header.operator_named(name)
        if op is None:
            raise UsageError(f"no operator named {name!r} in this vault")
        return op.operator_id

    def enrol_token(self, operator: str, token: Token, prompts: Prompts, *, now: int | None = None) -> SlotEntry:
        """Add ``token`` as another token of ``operator``: it wraps that operator's own share."""
        slot = self.prepare_slot(operator, token, prompts, now=now)
        self.add_slot(slot)
        return slot

    def prepare_slot(self, operator: str, token: Token, prompts: Prompts, *, now: int | None = None) -> SlotEntry:
        """Enrol ``token`` (PIN, touch) and wrap ``operator``'s share for it, without changing the header.

        Kept apart from :meth:`add_slot` so the touch happens before the writer lock is taken.
        """
        op_id = self.operator_id(operator)
        self._check_new_label(token.label)
        share = bytearray(self.body["shares"][op_id.hex()].encode())
        try:
            slot = _enrol_slot(self.header, op_id, operator, token, share, prompts, now=now)
        finally:
            p.wipe(share)
        self._prepared[slot.slot_id] = self.keys.signing_public
        return slot

    def add_slot(self, slot: SlotEntry) -> None:
        """Add a slot made by :meth:`prepare_slot` (re-checked: the header may have moved on since)."""
        _name(self.header, slot.operator_id)  # the operator must still be in this vault
        self._check_new_label(slot.label)
        if self._prepared.get(slot.slot_id, self.keys.signing_public) != self.keys.signing_public:
            raise VaultIntegrityError(
                "the vault's data key was rotated while this token was enrolled; nothing was written",
                hint="enrol the token again",
            )
        self.header = self.header.with_slots([*self.header.slots, slot])

    def _check_new_label(self, label: str) -> None:
        if any(s.label == label for s in self.header.slots):
            raise UsageError(f"token {label} is already enrolled in this vault")

    def remove_token(self, label: str) -> SlotEntry:
        slots = self.header.slots
        match = [s for s in slots if s.label == label]
        if not match:
            raise TokenNotFound(f"no token {label} is enrolled in this vault")
        slot = match[0]
        left = [s for s in slots if s.operator_id == slot.operator_id and s is not slot]
        if not left:
            raise UsageError(
                f"{label} is the last token of operator {_name(self.header, slot.operator_id)}; "
                "enrol another token first, or that operator's share is lost",
            )
        self.header = self.header.with_slots(s for s in slots if s is not slot)
        return slot

    # --- policy -------------------------------------------------------------------------------
    def set_policy(self, policy: Mapping[str, Any]) -> None:
        """Replace the policy document (the caller checked it and its approvals: agent.policy)."""
        self.header = self.header.with_policy(policy)

    # --- wallets ------------------------------------------------------------------------------
    def _index(self) -> IndexEditor:
        """The index every change goes to; a legacy v1 vault's wallets move into a new one first."""
        if self._editor is not None:
            return self._editor
        if self._legacy is not None:
            self._editor = self._migrate(self._legacy)
            self._migrating, self._legacy = self._legacy.data, None
        else:
            self._editor = IndexEditor(self._base, leaf_max=self.leaf_max, node_max=self.node_max)
        return self._editor

    def _migrate(self, legacy: _Legacy) -> IndexEditor:
        """Re-seal every v1 entry as a v2 entry (bound to its public row) and bulk-build the index."""

        def rows() -> Iterator[list[Any]]:
            for sig_id in sorted(legacy.rows):
                row = legacy.rows[sig_id]
                plaintext = open_entry(self.keys, sig_id, legacy.entries[sig_id])
                try:
                    yield [*row.to_cbor_row(), seal_wallet_entry(self.keys, row, plaintext)]
                finally:
                    p.wipe(plaintext)

        if set(legacy.rows) != set(legacy.entries):
            raise VaultIntegrityError("wallet.dat v1 lists wallets and secrets that do not match")
        return IndexEditor.bulk(rows(), leaf_max=self.leaf_max, node_max=self.node_max)

    def _find(self, signature_id: str) -> tuple[WalletRow, bytes, bool] | None:
        """(row, sealed entry, sealed as v2?) of one wallet."""
        if self._legacy is not None:
            row = self._legacy.rows.get(signature_id)
            return None if row is None else (row, self._legacy.entries[signature_id], False)
        found = _find(self._index(), signature_id)
        return None if found is None else (fmt.row_of(found), found[-1], True)

    def wallet(self, signature_id: str) -> WalletRow:
        """:raises UsageError: no wallet with that signatureId."""
        found = self._find(signature_id)
        if found is None:
            raise UsageError(f"no wallet with signatureId {signature_id!r} in this vault")
        return found[0]

    def find_wallet(self, signature_id: str) -> WalletRow | None:
        found = self._find(signature_id)
        return None if found is None else found[0]

    def wallets(self) -> Wallets:
        """Every wallet (see :meth:`PublicVault.wallets`), changes not yet saved included."""
        if self._legacy is not None:
            rows = list(self._legacy.rows.values())
            return Wallets(lambda: iter(rows), len(rows))
        index = self._index()
        return Wallets(lambda: (fmt.row_of(row) for row in index.rows()), index.count)

    def add_wallet(
        self,
        *,
        wallet_type: str,
        chain: str,
        testnet: bool,
        secret: bytearray,
        xpub: str | None = None,
        address: str | None = None,
        signature_id: str | None = None,
        now: int | None = None,
    ) -> WalletRow:
        """Store one secret (mnemonic or private key, UTF-8) and its public index entry."""
        if wallet_type not in WALLET_TYPES:
            raise UsageError(f"unknown wallet type {wallet_type!r}")
        sig_id = signature_id or str(uuid.uuid4())
        index = self._index()
        if _find(index, sig_id) is not None:
            raise UsageError(f"a wallet {sig_id} already exists")
        row = WalletRow(
            sig_id, wallet_type, chain, testnet, int(now if now is not None else time.time()), xpub, address
        )
        plaintext = bytearray(wallet_type.encode() + b"\0") + secret
        try:
            sealed = seal_wallet_entry(self.keys, row, plaintext)
        finally:
            p.wipe(plaintext)
        index.insert([*row.to_cbor_row(), sealed])
        return row

    def fill(self, wallets: Iterable[tuple[WalletRow, bytearray]]) -> int:
        """Fill a vault that holds no wallet yet in one pass: rows sorted by signatureId, distinct.

        The bulk path (large imports, benchmarks): every entry is sealed as :meth:`add_wallet` seals
        it, and the index is built bottom-up instead of by n inserts. Secrets are wiped as they go.

        :returns: how many wallets were added.
        :raises UsageError: the vault already holds wallets, or the rows are out of order.
        """
        if self.wallet_count:
            raise UsageError("fill() needs a vault without wallets; use add_wallet")

        def rows() -> Iterator[list[Any]]:
            for row, secret in wallets:
                if row.type not in WALLET_TYPES:
                    raise UsageError(f"unknown wallet type {row.type!r}")
                plaintext = bytearray(row.type.encode() + b"\0") + secret
                try:
                    yield [*row.to_cbor_row(), seal_wallet_entry(self.keys, row, plaintext)]
                finally:
                    p.wipe(plaintext, secret)

        self._migrating = self._legacy.data if self._legacy is not None else self._migrating
        self._legacy = None
        self._editor = IndexEditor.bulk(rows(), leaf_max=self.leaf_max, node_max=self.node_max)
        return self._editor.count

    def remove_wallet(self, signature_id: str) -> None:
        """:raises UsageError: no wallet with that signatureId."""
        self._index().remove(signature_id)

    def read_secret(self, signature_id: str) -> tuple[str, bytearray]:
        """Decrypt exactly one wallet's secret; the caller wipes the returned bytearray."""
        found = self._find(signature_id)
        if found is None:
            raise UsageError(f"no wallet with signatureId {signature_id!r} in this vault")
        row, blob, v2 = found
        plaintext = open_wallet_entry(self.keys, row, blob) if v2 else open_entry(self.keys, signature_id, blob)
        sep = plaintext.index(0)
        wallet_type = bytes(plaintext[:sep]).decode()
        secret = plaintext[sep + 1 :]
        p.wipe(plaintext)
        if wallet_type != row.type:
            p.wipe(secret)
            raise VaultIntegrityError()
        return wallet_type, secret

    # --- persistence --------------------------------------------------------------------------
    def transact(self, change: Callable[[UnlockedVault], T], *, now: int | None = None) -> T:
        """Apply ``change`` to the newest wallet.dat and save it, as the data directory's only writer.

        Under the writer lock the file is read again. If another process saved since this vault was
        opened, its header and index are taken over (the data key is the same, so no touch is needed)
        and ``change`` is applied on top of them: a concurrent write is never overwritten. The file
        is then written as generation + 1 (compare-and-swap on the generation the lock protects).

        :raises VaultIntegrityError: wallet.dat was replaced by a vault under another data key.
        """
        with writer_lock(self.pin_path.parent):
            current = PublicVault.load(self.path, self.pin_path)
            if current.header.generation != self._header.generation:
                self._rebase(current)
            result = change(self)
            self.save(now=now)
            return result

    def _rebase(self, current: PublicVault) -> None:
        if current.header.vault_id == self.header.vault_id and current.header.signing_key != self.keys.signing_public:
            if self._follow_rotation(current):
                return
            raise VaultIntegrityError(
                "the vault's data key was rotated while this command ran; nothing was written",
                hint="run the command again: it opens the vault with the new key",
            )
        if current.header.vault_id != self.header.vault_id:
            raise VaultIntegrityError(
                "wallet.dat was replaced by another vault while this command ran; nothing was written"
            )
        self._adopt(current, open_body(current.file, self.keys))

    def _follow_rotation(self, current: PublicVault) -> bool:
        """The data key was rotated since this vault was opened: re-open it with the KEKs of the slots
        touched then, if those slots still belong to ``current`` and make its quorum (a slot or operator
        the rotation removed counts for nothing). No new touch: the same operators' touches stand."""
        header = current.header
        shares: dict[bytes, bytearray] = {}
        try:
            for slot in header.slots:
                kek = self._keks.get(slot.slot_id)
                if kek is None or slot.operator_id in shares:
                    continue
                try:
                    shares[slot.operator_id] = keyslots.unwrap_share_with_kek(slot, kek, header.vault_id)
                except KmsAgentError:
                    continue
            if len(shares) < header.quorum:
                return False
            dek = quorum.combine([bytes(s).decode() for s in shares.values()], header.quorum)
        finally:
            p.wipe(*shares.values())
        keys = VaultKeys(dek, header.vault_id)
        try:
            body = open_body(current.file, keys)
        except KmsAgentError:
            keys.wipe()
            return False
        self.keys.wipe()
        self.keys = keys
        self._adopt(current, body)
        return True

    def save(self, *, now: int | None = None) -> None:
        """Write generation + 1 atomically (a v2 file, streamed) and move the pin forward with it.

        The first save of a vault read from a legacy v1 file first writes that file, unchanged, to
        ``wallet.dat.v1.bak`` next to it (0600): the pin then refuses it as a rollback, but it is
        there for an operator who needs it. Callers other than :meth:`transact` and a new vault's
        first write hold the writer lock themselves (or are alone: tests, the crash harness).
        """
        index = self._index()
        built = index.build()
        header = self.header.next_write(
            updated_at=int(now if now is not None else time.time()), body_nonce=p.random_bytes(p.NONCE_LEN)
        )
        header, head, header_mac = seal_head(header.with_index(built.root), self.body, self.keys)
        crash_point("before-vault-save")
        # Every change backs up the file it replaces first; a failed backup refuses the change here,
        # before wallet.dat is touched (docs/operations.md "Backups").
        from agent.vault.backups import before_save

        before_save(self.path)
        if self._migrating is not None:
            backup = _write_backup(self.path, self._migrating)
            logger.warning(
                "migrating %s from format v1 to v2: the v1 file is kept as %s (the pin refuses it from now on)",
                self.path,
                backup,
            )
        source = self._source.fd if self._source is not None else None
        written = write_stream(self.path, [head, *built.nodes, built.table()], source)
        crash_point("after-vault-save")
        save_pin(self.pin_path, VaultPin(header.vault_id, self.keys.signing_public, header.generation, header_mac))
        # From now on, changes start from the file just written.
        vf = fmt.parse(written)
        self._header, self._migrating, self._editor = vf.header, None, None
        self._base, self._source = IndexReader(vf), written

    @property
    def fingerprint(self) -> str:
        return p.fingerprint(self.keys.signing_public)


def _find(index: IndexReader | IndexEditor | None, signature_id: str) -> list[Any] | None:
    if index is None:
        return None
    if isinstance(index, IndexReader):
        index = IndexEditor(index)
    return index.find(signature_id)


def _write_backup(path: Path, data: bytes) -> Path:
    """Keep a legacy file next to ``path`` before it is replaced; never overwrite a different backup."""
    backup = path.with_name(path.name + ".v1.bak")
    if backup.exists() and backup.read_bytes() != data:
        backup = path.with_name(f"{path.name}.v1-{p.sha256(data).hex()[:12]}.bak")
    atomic_write(backup, data)
    return backup


def _name(header: VaultHeader, operator_id: bytes) -> str:
    """An operator's name; an id the header does not list means the header is not what it claims."""
    op = header.operator(operator_id)
    if op is None:
        raise VaultIntegrityError()
    return op.name


def _enrol_slot(
    header: VaultHeader,
    operator_id: bytes,
    operator: str,
    token: Token,
    share: bytearray,
    prompts: Prompts,
    *,
    now: int | None,
) -> SlotEntry:
    slot_id = p.random_bytes(16)
    enrolment = token.enrol(
        rp_id=header.rp_id, user_id=slot_id, user_name=operator, salt=p.random_bytes(32), prompts=prompts
    )
    try:
        kind = enrolment.kind
        kdf_salt = bytes(enrolment.slot_public["kdf_salt"])
        nonce, wrapped = keyslots.wrap_share(
            share,
            enrolment.ikm,
            kind=kind,
            kdf_salt=kdf_salt,
            vault_id=header.vault_id,
            slot_id=slot_id,
            operator_id=operator_id,
        )
    finally:
        p.wipe(enrolment.ikm)
    return SlotEntry(
        slot_id=slot_id,
        operator_id=operator_id,
        kind=kind,
        label=enrolment.token_label,
        simulated=enrolment.simulated,
        enrolled_at=int(now if now is not None else time.time()),
        public=enrolment.slot_public,
        kdf_salt=kdf_salt,
        nonce=nonce,
        wrapped=wrapped,
    )


@dataclass
class PendingVault:
    """A new vault built in memory: shown recovery words must be test-recovered before it is written."""

    vault: UnlockedVault
    recovery_shares: list[str]

    def check_recovery(self, shares: Sequence[str]) -> None:
        """Prove the given words rebuild this vault's data key (init refuses to finish otherwise)."""
        rec = self.vault.header.recovery
        secret = quorum.combine(shares, rec.threshold)
        try:
            dek = keyslots.unwrap_recovery(rec, secret, self.vault.header.vault_id)
        finally:
            p.wipe(secret)
        ok = p.sha256(bytes(dek)) == p.sha256(bytes(self.vault.keys.dek))
        p.wipe(dek)
        if not ok:
            raise VaultIntegrityError("the recovery words do not open this vault")

    def commit(self, *, now: int | None = None) -> UnlockedVault:
        with writer_lock(self.vault.pin_path.parent):
            if self.vault.path.exists():
                raise UsageError(f"{self.vault.path} already exists; refusing to overwrite a vault")
            self.vault.header = replace(self.vault.header, generation=0)  # save() makes it 1
            self.vault.save(now=now)
        return self.vault


def create_vault(
    path: Path,
    pin_path: Path,
    operators: Sequence[tuple[str, Token]],
    quorum_size: int,
    prompts: Prompts,
    *,
    policy: Mapping[str, Any],
    recovery_threshold: int = 2,
    recovery_shares: int = 3,
    rp_id: str = DEFAULT_RP_ID,
    now: int | None = None,
) -> PendingVault:
    """Enrol each operator's first token, split the data key k-of-n across operators, add recovery.

    :param policy: the initial custody policy document, stored as given (the caller builds it with
        :mod:`agent.policy`; the vault keeps it opaque).
    """
    names = [name for name, _ in operators]
    if len(set(names)) != len(names):
        raise UsageError("each operator needs a distinct name")
    labels = [tok.label for _, tok in operators]
    if len(set(labels)) != len(labels):
        raise UsageError("one token cannot serve two operators: that would defeat the 4-eye principle")
    if not 1 <= quorum_size <= len(operators):
        raise UsageError(f"quorum must be between 1 and the number of operators ({len(operators)})")
    if path.exists():
        raise UsageError(f"{path} already exists; refusing to overwrite a vault")
    ts = int(now if now is not None else time.time())
    vault_id = p.random_bytes(16)
    dek = bytearray(p.random_bytes(32))
    recovery_secret = bytearray(p.random_bytes(32))
    try:
        op_shares = quorum.split(dek, quorum_size, len(operators))
        recovery_words = quorum.split(recovery_secret, recovery_threshold, recovery_shares, for_people=True)
        rec_nonce, rec_wrapped = keyslots.wrap_recovery(dek, recovery_secret, vault_id)
        rec_kek = keyslots.recovery_kek(recovery_secret, vault_id)
    finally:
        p.wipe(recovery_secret)
    keys = VaultKeys(dek, vault_id)
    ops = tuple(OperatorEntry(p.random_bytes(16), name) for name in names)
    header = VaultHeader(
        vault_id=vault_id,
        generation=0,
        created_at=ts,
        updated_at=ts,
        rp_id=rp_id,
        quorum=quorum_size,
        operators=ops,
        slots=(),
        recovery=RecoveryEntry(
            kind=keyslots.RECOVERY_KIND,
            threshold=recovery_threshold,
            shares=recovery_shares,
            nonce=rec_nonce,
            wrapped=rec_wrapped,
        ),
        signing_key=keys.signing_public,
        body_nonce=p.random_bytes(p.NONCE_LEN),
        simulated=False,
        policy=dict(policy),
    )
    shares: dict[str, Any] = {op.operator_id.hex(): share for op, share in zip(ops, op_shares, strict=True)}
    shares[keyslots.RECOVERY_KEK] = bytes(rec_kek)  # lets a data-key rotation re-wrap for recovery (§6)
    p.wipe(rec_kek)
    body: dict[str, Any] = {"shares": shares}
    vault = UnlockedVault(path, pin_path, header, body, keys)
    try:
        for (name, token), share in zip(operators, op_shares, strict=True):
            with token:
                vault.enrol_token(name, token, prompts, now=ts)
            del share
    except BaseException:
        vault.close()
        raise
    return PendingVault(vault, recovery_words)
