"""Rolling velocity from running totals carried in the audit log (docs/withdrawals.md §5).

Every ``signature`` row carries, inside its hashed payload, a ``tally``: for each velocity scope
the withdrawal counts under (its wallet, and its chain and network), the cumulative base units
signed in that scope so far per asset, the time it counts at, and the seq of the scope's previous
signature row. What was signed in a rolling window is then the difference of two totals: the
newest row of the scope minus the newest row at or before the window's start. The audit index
(:class:`EvidenceIndexer`) finds those two rows in O(log n); both are read back and re-hashed, and
the boundary is proven by its successor, whose hashed ``prev`` names it and whose time is inside
the window. So a decision reads at most four rows however busy the day was, and every number it
uses comes from a hashed row: an edited index can make a check fail, never make it pass.

Signature rows written before tallies existed are found through their own index entry and counted
one by one, as before; after a day none of them is in any window.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.audit import AuditIndexer, AuditKind, AuditRow, IndexLookup
from agent.audit.log import row_is_intact
from agent.errors import AuditIntegrityError
from agent.policy import HistoryEntry, HistoryVelocity, RequestSummary, SummaryOutput, VelocityScope, scope_key

TALLY_VERSION = 1
#: Index entry names: one per scope a tallied signature row counts under (key: its tally time).
VELOCITY = "velocity:"
#: Signature rows from before tallies (key: their ts).
LEGACY_SIGNATURE = "velocity-legacy"
#: The highest signCount an approval row recorded per token slot (key: the count).
SIGN_COUNT = "signcount:"
#: Approval rows that carry a slot's public fields inline, by their SHA-256 (later rows refer to them).
SLOT_PUBLIC = "slot-public:"
#: Requests made for an outside system's id (``tatum:<pending-tx id>``), so one id never becomes two requests.
EXTERNAL = "external:"


class EvidenceIndexer(AuditIndexer):
    """Index entries for the evidence a decision looks up: velocity totals, signCounts, outside ids."""

    version = "evidence-2"

    def entries(self, row: AuditRow) -> Iterable[tuple[str, int]]:
        payload = row.payload if isinstance(row.payload, dict) else {}
        if row.kind == AuditKind.SIGNATURE.value:
            tally = payload.get("tally")
            scopes = tally.get("scopes") if isinstance(tally, dict) else None
            if not isinstance(scopes, dict):
                return [(LEGACY_SIGNATURE, row.ts)]
            return [
                (VELOCITY + key, entry["t"])
                for key, entry in scopes.items()
                if isinstance(entry, dict) and type(entry.get("t")) is int
            ]
        if row.kind == AuditKind.APPROVAL.value:
            entries = []
            approval, slot_record = payload.get("approval"), payload.get("slot")
            if isinstance(approval, dict):
                slot, count = approval.get("slot_id"), approval.get("sign_count")
                if isinstance(slot, str) and type(count) is int:
                    entries.append((SIGN_COUNT + slot, count))
            public = slot_record.get("public_cbor") if isinstance(slot_record, dict) else None
            if isinstance(public, str):
                with contextlib.suppress(ValueError):
                    entries.append((SLOT_PUBLIC + hashlib.sha256(bytes.fromhex(public)).hexdigest(), 0))
            return entries
        if row.kind == AuditKind.REQUEST.value and isinstance(payload.get("external"), str):
            return [(EXTERNAL + payload["external"], 0)]
        return []


def velocity_summary(row: AuditRow) -> RequestSummary | None:
    """The summary a ``signature`` row recorded for velocity limits (None: an older row without one)."""
    velocity = row.payload.get("velocity") if isinstance(row.payload, dict) else None
    if not isinstance(velocity, dict):
        return None
    outputs = tuple(SummaryOutput(a, int(n), asset, bool(change)) for a, n, asset, change in velocity["outputs"])
    return RequestSummary(
        velocity["chain"],
        velocity["network"],
        velocity["signature_id"],
        outputs,
        int(velocity["fee"]),
        velocity["fee_asset"],
        bool(velocity["opaque"]),
    )


@dataclass(frozen=True)
class TallyEntry:
    """One scope's running total as one signature row records it."""

    seq: int
    t: int
    prev: int
    totals: Mapping[str, int]


def _refuse(what: str) -> AuditIntegrityError:
    return AuditIntegrityError(
        f"{what}: the audit log's velocity totals were edited; refusing to decide on them",
        hint="run `kms-agent audit verify`",
    )


def read_entry(index: IndexLookup, seq: int, key: str) -> TallyEntry:
    """Row ``seq``'s total for scope ``key``, from the row itself after re-hashing it."""
    row = index.row(seq)
    if row is None or not row_is_intact(row) or row.kind != AuditKind.SIGNATURE.value:
        raise _refuse(f"audit row {seq}, indexed as a signature of {key}, is not one or does not match its hash")
    entry = parse_entry(row, key)
    if entry is None:
        raise _refuse(f"audit row {seq} carries no well-formed running total for {key}")
    return entry


def parse_entry(row: AuditRow, key: str) -> TallyEntry | None:
    tally = row.payload.get("tally") if isinstance(row.payload, dict) else None
    scopes = tally.get("scopes") if isinstance(tally, dict) and tally.get("v") == TALLY_VERSION else None
    entry = scopes.get(key) if isinstance(scopes, dict) else None
    if not isinstance(entry, dict) or set(entry) != {"t", "prev", "spent"}:
        return None
    t, prev, spent = entry["t"], entry["prev"], entry["spent"]
    if type(t) is not int or type(prev) is not int or not 0 <= prev < row.seq or not isinstance(spent, dict):
        return None
    totals: dict[str, int] = {}
    for asset, text in spent.items():
        if not isinstance(text, str) or not text.isdigit() or len(text) > 80:
            return None
        totals[asset] = int(text)
    return TallyEntry(row.seq, t, prev, totals)


def tally_for(index: IndexLookup, summary: RequestSummary, now: int) -> dict[str, Any]:
    """The ``tally`` of a new signature row of ``summary`` (inside the transaction that appends it)."""
    spent = summary.spent()
    scopes: dict[str, Any] = {}
    for scope in VelocityScope:
        key = scope_key(summary, scope)
        prev_seq = index.last(VELOCITY + key)
        prev = None if prev_seq is None else read_entry(index, prev_seq, key)
        totals = dict(prev.totals) if prev else {}
        for asset, amount in spent.items():
            totals[asset] = totals.get(asset, 0) + amount
        scopes[key] = {
            "t": max(now, prev.t if prev else now),
            "prev": prev.seq if prev else 0,
            "spent": {asset: str(total) for asset, total in sorted(totals.items())},
        }
    return {"v": TALLY_VERSION, "scopes": scopes}


class TallyVelocity:
    """:class:`agent.policy.Velocity` answered from the running totals (four rows at most per scope)."""

    def __init__(self, index: IndexLookup, legacy: Callable[[AuditRow], HistoryEntry]) -> None:
        self._index = index
        self._legacy = legacy

    def used(self, summary: RequestSummary, scope: VelocityScope, since: int) -> dict[str, int]:
        totals = self._legacy_used(summary, scope, since)
        key = scope_key(summary, scope)
        name = VELOCITY + key
        index = self._index
        last_seq = index.last(name)
        if last_seq is None:
            return totals
        last = read_entry(index, last_seq, key)
        if last.t <= since:
            return totals
        floor_seq = index.floor(name, since)
        base: Mapping[str, int]
        if floor_seq is None:
            first_seq = index.first(name)
            first = last if first_seq is None or first_seq == last_seq else read_entry(index, first_seq, key)
            if first.prev != 0 or first.t <= since:
                raise _refuse(f"the running totals of {key} do not start at its first withdrawal")
            base = {}
        else:
            floor = read_entry(index, floor_seq, key)
            next_seq = index.after(name, floor_seq)
            following = None if next_seq is None else read_entry(index, next_seq, key)
            if floor.t > since or following is None or following.prev != floor.seq or following.t <= since:
                raise _refuse(f"the running totals of {key} around row {floor_seq} do not follow each other")
            base = floor.totals
        for asset, total in last.totals.items():
            used = total - base.get(asset, 0)
            if used < 0:
                raise _refuse(f"the running total of {asset} in {key} shrinks")
            if used:
                totals[asset] = totals.get(asset, 0) + used
        return totals

    def _legacy_used(self, summary: RequestSummary, scope: VelocityScope, since: int) -> dict[str, int]:
        seqs = self._index.above(LEGACY_SIGNATURE, since)
        if not seqs:
            return {}
        history = []
        for seq in seqs:
            row = self._index.row(seq)
            if row is None or not row_is_intact(row) or row.kind != AuditKind.SIGNATURE.value:
                raise _refuse(f"audit row {seq}, indexed as a signature, is not one or does not match its hash")
            history.append(self._legacy(row))
        return HistoryVelocity(history).used(summary, scope, since)


@dataclass(frozen=True)
class TallyProblem:
    seq: int
    what: str


def check_tallies(
    rows: Iterable[AuditRow], spent_of: Callable[[AuditRow], RequestSummary | None]
) -> list[TallyProblem]:
    """Recompute every running total from the signature rows, oldest first (``audit verify``)."""
    latest: dict[str, TallyEntry] = {}
    problems: list[TallyProblem] = []
    for row in rows:
        if row.kind != AuditKind.SIGNATURE.value or not isinstance(row.payload, dict) or "tally" not in row.payload:
            continue
        summary = spent_of(row)
        if summary is None:
            problems.append(TallyProblem(row.seq, "a signature row with a running total but no readable velocity"))
            continue
        spent = summary.spent()
        keys = {scope_key(summary, scope) for scope in VelocityScope}
        tally = row.payload["tally"]
        scopes = tally.get("scopes") if isinstance(tally, dict) else None
        if not isinstance(scopes, dict) or set(scopes) != keys:
            problems.append(TallyProblem(row.seq, f"its running totals are not for {', '.join(sorted(keys))}"))
            continue
        for key in sorted(keys):
            entry, prev = parse_entry(row, key), latest.get(key)
            want = dict(prev.totals) if prev else {}
            for asset, amount in spent.items():
                want[asset] = want.get(asset, 0) + amount
            what = None
            if entry is None:
                what = "is malformed"
            elif entry.prev != (prev.seq if prev else 0):
                what = f"does not follow row {prev.seq if prev else 0}"
            elif {a: n for a, n in entry.totals.items() if n} != {a: n for a, n in want.items() if n}:
                what = "is not the sum of the withdrawals"
            elif entry.t < row.ts or (prev is not None and entry.t < prev.t):
                what = "goes back in time"
            if what:
                problems.append(TallyProblem(row.seq, f"its running total for {key} {what}"))
            if entry is not None:
                latest[key] = entry
    return problems
