"""Rotating the data key: who holds it (operators, tokens, quorum, recovery) changes with a new key.

A rotation (docs/wallet-format.md §6.1) draws a new random DEK, splits it SLIP-39 across the
operators with the quorum to come, re-wraps each operator's new share for every token of theirs
(one touch per token: a token's key material exists only while it is touched), wraps the new DEK
for recovery under KEK_R, and re-seals the body and every wallet entry under the new key, all in
one new generation written atomically. A slot or operator left out of the new header therefore
opens no later file: its wrapped share belongs to a data key that no later file uses.

It runs in two steps so that no touch happens under the writer lock: :func:`plan` (every touch and
enrolment, outside the lock) and :func:`commit` (under :meth:`UnlockedVault.transact`, refusing if
the operators or tokens changed meanwhile).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.errors import StateError, TokenNotFound, UsageError, VaultIntegrityError
from agent.tokens.base import Prompts, Token
from agent.vault import keyslots, quorum
from agent.vault import primitives as p
from agent.vault.index import IndexEditor
from agent.vault.records import OperatorEntry, RecoveryEntry, SlotEntry
from agent.vault.sealed import VaultKeys, open_wallet_entry, seal_wallet_entry
from agent.vault.vault import TokenFinder, Touch, UnlockedVault, _enrol_slot, _name


def rotation_digest(vault_id: bytes, generation: int) -> bytes:
    """What each token signs when it is touched to re-wrap its operator's new share."""
    return p.sha256(p.DOMAIN + b"rotate\0" + vault_id + generation.to_bytes(8, "big"))


@dataclass
class Plan:
    """A rotation prepared outside the writer lock. Holds secrets: :func:`commit` it or :meth:`wipe` it."""

    base_operators: tuple[bytes, ...]
    base_slots: frozenset[bytes]
    base_signing_key: bytes
    operators: tuple[OperatorEntry, ...]
    quorum: int
    slots: tuple[SlotEntry, ...]
    dropped: tuple[SlotEntry, ...]
    shares: dict[str, str]
    keys: VaultKeys
    recovery: RecoveryEntry
    recovery_kek: bytearray
    #: New recovery words when the recovery secret was replaced (shown once by the caller).
    recovery_words: list[str] = field(default_factory=list)
    touches: list[Touch] = field(default_factory=list)
    _adopted: bool = False
    _retired: VaultKeys | None = None

    @property
    def fingerprint(self) -> str:
        return p.fingerprint(self.keys.signing_public)

    def wipe(self) -> None:
        p.wipe(self.recovery_kek)
        self.shares.clear()
        if not self._adopted:
            self.keys.wipe()
        if self._retired is not None:
            self._retired.wipe()

    def check_recovery(self, words: Sequence[str]) -> None:
        """Prove that ``words`` rebuild the new data key through the new recovery entry."""
        secret = quorum.combine(words, self.recovery.threshold)
        try:
            dek = keyslots.unwrap_recovery(self.recovery, secret, self.keys.vault_id)
        finally:
            p.wipe(secret)
        ok = p.sha256(bytes(dek)) == p.sha256(bytes(self.keys.dek))
        p.wipe(dek)
        if not ok:
            raise VaultIntegrityError("the new recovery words do not open the rotated vault")


def plan(
    vault: UnlockedVault,
    finder: TokenFinder,
    prompts: Prompts,
    *,
    quorum_size: int | None = None,
    add_operators: Sequence[tuple[str, Token]] = (),
    remove_operators: Sequence[str] = (),
    remove_tokens: Sequence[str] = (),
    new_tokens: Sequence[tuple[str, Token]] = (),
    keep_slots: bool = True,
    drop_absent: bool = False,
    recovery_secret: bytearray | None = None,
    new_recovery: tuple[int, int] | None = None,
    now: int | None = None,
) -> Plan:
    """Touch every token that stays (and enrol new ones), and wrap a new data key for them.

    :param add_operators: new operators, each with a first token (enrolled here: PIN and touch).
    :param new_tokens: more tokens for existing operators, enrolled here (``recover`` gives each
        operator a new one with ``keep_slots=False``, which drops every slot enrolled before).
    :param drop_absent: drop the slots of tokens that are not plugged in instead of refusing.
    :param recovery_secret: the recovery secret R, when the caller has it (``recover``).
    :param new_recovery: ``(threshold, shares)`` to replace the recovery secret with new words.
    :raises UsageError: the change is impossible (unknown names, a quorum out of range, an operator
        left without a token); nothing was touched.
    :raises TokenNotFound: a token that stays is absent (without ``drop_absent``).
    """
    header = vault.header
    ts = int(now if now is not None else time.time())
    by_name = {op.name: op for op in header.operators}
    for name in [*remove_operators, *(n for n, _ in new_tokens)]:
        if name not in by_name:
            raise UsageError(f"no operator named {name!r} in this vault (see `kms-agent operator list`)")
    gone = {by_name[n].operator_id for n in remove_operators}
    added = [name for name, _ in add_operators]
    if len(set(added)) != len(added) or any(n in by_name for n in added):
        raise UsageError(f"operator {', '.join(n for n in added if n in by_name) or 'names'} must be new and distinct")
    labels = [tok.label for _, tok in [*add_operators, *new_tokens]]
    kept_labels = {s.label for s in header.slots} if keep_slots else set()
    if len(set(labels)) != len(labels) or kept_labels & set(labels):
        raise UsageError("each new token must be one not enrolled yet (one token cannot serve two operators)")
    unknown = [label for label in remove_tokens if label not in {s.label for s in header.slots}]
    if unknown:
        raise TokenNotFound(f"no token {', '.join(unknown)} is enrolled in this vault")
    operators = tuple(op for op in header.operators if op.operator_id not in gone) + tuple(
        OperatorEntry(p.random_bytes(16), name) for name in added
    )
    size = quorum_size if quorum_size is not None else header.quorum
    if not 1 <= size <= len(operators):
        raise UsageError(
            f"a quorum of {size} is impossible with {len(operators)} operators",
            hint="give --quorum N with 1 <= N <= the number of operators",
        )
    stays = [s for s in header.slots if keep_slots and s.operator_id not in gone and s.label not in set(remove_tokens)]
    _check_every_operator_keeps_a_token(header, operators, stays, new_tokens, add_operators)
    kek = _recovery_kek(vault, recovery_secret, new_recovery)
    words: list[str] = []
    dek = bytearray(p.random_bytes(32))
    keys = VaultKeys(dek, header.vault_id)
    try:
        if new_recovery is not None:
            threshold, count = new_recovery
            secret = bytearray(p.random_bytes(32))
            try:
                words = quorum.split(secret, threshold, count, for_people=True)
                kek = keyslots.recovery_kek(secret, header.vault_id)
            finally:
                p.wipe(secret)
        else:
            threshold, count = header.recovery.threshold, header.recovery.shares
        nonce, wrapped = keyslots.wrap_recovery_kek(dek, kek, header.vault_id)
        recovery = RecoveryEntry(keyslots.RECOVERY_KIND, threshold, count, nonce, wrapped)
        split = quorum.split(dek, size, len(operators))
        shares = {op.operator_id.hex(): share for op, share in zip(operators, split, strict=True)}
        result = Plan(
            base_operators=tuple(op.operator_id for op in header.operators),
            base_slots=frozenset(s.slot_id for s in header.slots),
            base_signing_key=header.signing_key,
            operators=operators,
            quorum=size,
            slots=(),
            dropped=(),
            shares=shares,
            keys=keys,
            recovery=recovery,
            recovery_kek=kek,
            recovery_words=words,
        )
    except BaseException:
        keys.wipe()
        p.wipe(kek)
        raise
    try:
        named = [*new_tokens, *add_operators]
        _wrap_slots(vault, result, stays, finder, prompts, drop_absent=drop_absent, named=named)
        ids = {op.name: op.operator_id for op in operators}
        for name, token in [*new_tokens, *add_operators]:
            share = bytearray(shares[ids[name].hex()].encode())
            try:
                with token:
                    slot = _enrol_slot(header, ids[name], name, token, share, prompts, now=ts)
            finally:
                p.wipe(share)
            result.slots = (*result.slots, slot)
        result.dropped = tuple(s for s in header.slots if s.slot_id not in {x.slot_id for x in result.slots})
    except BaseException:
        result.wipe()
        raise
    return result


def _check_every_operator_keeps_a_token(
    header: Any,
    operators: Sequence[OperatorEntry],
    stays: Sequence[SlotEntry],
    new_tokens: Sequence[tuple[str, Token]],
    add_operators: Sequence[tuple[str, Token]],
) -> None:
    named = {name for name, _ in [*new_tokens, *add_operators]}
    bare = [
        op.name for op in operators if op.name not in named and not any(s.operator_id == op.operator_id for s in stays)
    ]
    if bare:
        raise UsageError(
            f"operator {', '.join(bare)} would be left without a token, and so without a share",
            hint="enrol another token for them first, or remove the operator",
        )


def _recovery_kek(
    vault: UnlockedVault, recovery_secret: bytearray | None, new_recovery: tuple[int, int] | None
) -> bytearray:
    vault_id = vault.header.vault_id
    if new_recovery is not None:
        return bytearray()  # replaced by the new secret's KEK
    if recovery_secret is not None:
        return keyslots.recovery_kek(recovery_secret, vault_id)
    kept = vault.body["shares"].get(keyslots.RECOVERY_KEK)
    if not isinstance(kept, bytes) or len(kept) != p.KEY_LEN:
        raise UsageError(
            "this vault was created before data-key rotation kept the recovery key, so a rotation "
            "cannot re-wrap the data key for the recovery shares",
            hint="run `kms-agent recovery rotate` (it issues new recovery shares and rotates the data key)",
        )
    return bytearray(kept)


def _wrap_slots(
    vault: UnlockedVault,
    result: Plan,
    stays: Sequence[SlotEntry],
    finder: TokenFinder,
    prompts: Prompts,
    *,
    drop_absent: bool,
    named: Sequence[tuple[str, Token]],
) -> None:
    """Touch each staying token once: prove it holds its slot, and wrap its operator's new share."""
    header = vault.header
    digest = rotation_digest(header.vault_id, header.generation)
    present: list[tuple[SlotEntry, Token]] = []
    absent: list[SlotEntry] = []
    for slot in stays:
        token = finder(slot)
        (present.append((slot, token)) if token is not None else absent.append(slot))
    if absent and not drop_absent:
        raise TokenNotFound(
            f"token {', '.join(s.label for s in absent)} is not plugged in: every token that stays must be "
            "touched once to wrap the new data key",
            hint="plug it in, or give --drop-absent to remove its slot (it will open no later file)",
        )
    kept = [s for s in stays if s not in absent]
    _check_every_operator_keeps_a_token(header, result.operators, kept, named, [])
    for slot, token in present:
        with token:
            unwrapped = token.unwrap(slot.public, digest=digest, prompts=prompts)
        try:
            old = keyslots.unwrap_share(slot, unwrapped.ikm, header.vault_id)  # the right token, or it raises
            p.wipe(old)
            nonce, wrapped = keyslots.wrap_share(
                result.shares[slot.operator_id.hex()].encode(),
                unwrapped.ikm,
                kind=slot.kind,
                kdf_salt=slot.kdf_salt,
                vault_id=header.vault_id,
                slot_id=slot.slot_id,
                operator_id=slot.operator_id,
            )
        finally:
            p.wipe(unwrapped.ikm)
        result.slots = (*result.slots, replace(slot, nonce=nonce, wrapped=wrapped))
        result.touches.append(
            Touch(_name(header, slot.operator_id), slot.label, unwrapped.approval, slot.operator_id, slot.slot_id)
        )


def apply(vault: UnlockedVault, plan: Plan) -> None:
    """Under the writer lock: take the new key, header and body, and re-seal every wallet entry."""
    current = vault.header
    if (
        tuple(op.operator_id for op in current.operators) != plan.base_operators
        or frozenset(s.slot_id for s in current.slots) != plan.base_slots
        or current.signing_key != plan.base_signing_key  # another rotation (maybe of the recovery words)
    ):
        raise StateError(
            "the operators, tokens or data key changed while this rotation was prepared; nothing was written",
            hint="run the command again",
        )
    old, new = vault.keys, plan.keys
    index = vault._index()

    def resealed() -> Iterator[list[Any]]:
        from agent.vault import format as fmt

        for raw in index.rows():
            row = fmt.row_of(raw)
            plaintext = open_wallet_entry(old, row, raw[-1])
            try:
                yield [*row.to_cbor_row(), seal_wallet_entry(new, row, plaintext)]
            finally:
                p.wipe(plaintext)

    editor = IndexEditor.bulk(resealed(), leaf_max=vault.leaf_max, node_max=vault.node_max)
    shares: dict[str, Any] = dict(plan.shares)
    shares[keyslots.RECOVERY_KEK] = bytes(plan.recovery_kek)
    header = current.with_slots(plan.slots)
    vault.header = replace(
        header, operators=plan.operators, quorum=plan.quorum, recovery=plan.recovery, signing_key=new.signing_public
    )
    vault.body = {**vault.body, "shares": shares}
    vault._editor = editor
    vault.keys = new
    plan._adopted, plan._retired = True, old


def commit(
    vault: UnlockedVault, plan: Plan, *, record: Callable[[], object] | None = None, now: int | None = None
) -> None:
    """Write the rotation as one new generation (writer lock, compare-and-swap); wipes the plan's secrets.

    :param record: called under the writer lock once the change is checked, just before the save (the
        CLI appends its audit row there, so the log orders it with every other decision taken under
        that lock; this package never imports the audit log).
    """

    def change(v: UnlockedVault) -> None:
        apply(v, plan)
        if record is not None:
            record()

    try:
        vault.transact(change, now=now)
    finally:
        plan.wipe()
