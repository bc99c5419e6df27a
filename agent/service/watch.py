"""The alert follower: reads what happened since it last looked and hands alerts to the dispatcher.

Sources, all durable, so a restart neither repeats nor loses an alert:

* the audit log, after the last seq handled: denials and escalations, velocity near its limit, a new
  destination, signCount regressions, recovery use, queue edits; each new row is re-hashed and chained
  to the one before, and the whole log is verified every ``verify_minutes`` (an audit failure alerts);
* the events log (``state/events.jsonl``), after the last byte handled: failed unlocks, low PIN retries;
* the queue index: a request pending longer than ``overdue_minutes`` (once per request).

The position (audit seq and hash, events offset, overdue requests already told) is written to
``state/alerts-position.json`` (0600) after the alerts of a poll were handed over. A crash in between
repeats that one poll's alerts, with the same alert ids (receivers may drop repeats by id); nothing is
skipped. A first start begins at the current end of both logs: history is for reports, not for alerts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.audit import AuditKind, AuditLog, AuditRow
from agent.audit.log import row_is_intact
from agent.errors import KmsAgentError
from agent.files import atomic_write
from agent.service.alerts import UNDELIVERED_EVENT, Alert, AlertConfig, Dispatcher, dispatcher_for

logger = logging.getLogger(__name__)

POSITION_NAME = "alerts-position.json"
EVENTS_NAME = "events.jsonl"
#: Rows are read by time (the log's public query); this much clock slack, then a full read if seqs skip.
_TS_SLACK = 3600
_TRIES_LEFT = re.compile(r"(\d+) (?:try|tries) left")

#: Event error classes that are token events (metrics label ``event``).
TOKEN_EVENTS = {
    "PinInvalid": "pin_error",
    "PinBlocked": "pin_blocked",
    "PinRequired": "pin_required",
    "TouchTimeout": "touch_timeout",
    "TouchDenied": "touch_denied",
    "TokenRemoved": "token_removed",
    "WrongToken": "wrong_token",
    "TokenNotFound": "token_not_found",
}


# --- following the logs (shared with metrics.py) -------------------------------------------------------
def rows_after(log: AuditLog, seq: int, last_ts: int | None) -> list[AuditRow]:
    """Audit rows with seq > ``seq``, in order, without re-reading the whole log when it can be helped.

    Seqs are gapless from 1, so a read by time that does not continue exactly at ``seq + 1`` (a clock
    that went back more than an hour) is retried as a full read.
    """
    if log.last_seq() <= seq:
        return []
    since = None if seq == 0 or last_ts is None else last_ts - _TS_SLACK
    rows = [r for r in log.rows(since=since) if r.seq > seq]
    if since is not None and (not rows or rows[0].seq != seq + 1 or rows[-1].seq - rows[0].seq + 1 != len(rows)):
        rows = [r for r in log.rows() if r.seq > seq]
    return rows


@dataclass(frozen=True)
class EventsTail:
    events: list[dict[str, Any]]
    offset: int
    inode: int


def events_after(state_dir: Path, offset: int, inode: int) -> EventsTail:
    """Whole lines of ``events.jsonl`` past ``offset`` (from 0 if the file was replaced or truncated)."""
    path = state_dir / EVENTS_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return EventsTail([], 0, 0)
    try:
        st = os.fstat(fd)
        if st.st_ino != inode or st.st_size < offset:
            offset = 0
        os.lseek(fd, offset, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
    out = []
    for line in complete.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return EventsTail(out, offset + len(complete), st.st_ino)


def is_failed_unlock(event: dict[str, Any]) -> bool:
    command = str(event.get("command", ""))
    error = event.get("error")
    return error != UNDELIVERED_EVENT and (error == "QuorumNotMet" or command.split(" ")[0] == "unlock")


def tries_left(event: dict[str, Any]) -> int | None:
    """Tries left after a wrong PIN (0 when blocked), from the event's message; None if not a PIN error."""
    if event.get("error") == "PinBlocked":
        return 0
    if event.get("error") != "PinInvalid":
        return None
    found = _TRIES_LEFT.search(str(event.get("message", "")))
    return int(found.group(1)) if found else None


# --- the position -----------------------------------------------------------------------------------
@dataclass
class Position:
    audit_seq: int = 0
    audit_hash: str = ""
    audit_ts: int | None = None
    events_offset: int = 0
    events_inode: int = 0
    overdue: list[str] = field(default_factory=list)
    #: Audit problems already alerted (so a broken log alerts once, not every poll).
    audit_problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, **self.__dict__}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Position:
        return cls(
            audit_seq=int(doc["audit_seq"]),
            audit_hash=str(doc.get("audit_hash", "")),
            audit_ts=doc.get("audit_ts"),
            events_offset=int(doc.get("events_offset", 0)),
            events_inode=int(doc.get("events_inode", 0)),
            overdue=[str(x) for x in doc.get("overdue", [])],
            audit_problems=[str(x) for x in doc.get("audit_problems", [])],
        )


# --- the watcher ------------------------------------------------------------------------------------
class AlertWatcher:
    """Follows one data directory and raises alerts. Not thread-safe: one thread polls it.

    :param dispatcher: where alerts go (default: a new :class:`Dispatcher` for ``config``).
    """

    def __init__(self, home: Path, config: AlertConfig, *, dispatcher: Dispatcher | None = None) -> None:
        self.home = Path(home)
        self.state = self.home / "state"
        self.config = config
        self.dispatcher = dispatcher or Dispatcher(self.home, config)
        self.log = AuditLog(self.state)
        self.position_path = self.state / POSITION_NAME
        self._last_verify = float("-inf")

    # --- position -------------------------------------------------------------------------------
    def _load(self) -> Position:
        try:
            return Position.from_json(json.loads(self.position_path.read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("alerts: %s unreadable (%s); starting at the end of the logs", self.position_path, exc)
        head = self.log.head()
        try:
            st = (self.state / EVENTS_NAME).stat()
            events = (st.st_size, st.st_ino)
        except FileNotFoundError:
            events = (0, 0)
        return Position(
            audit_seq=head.seq if head else 0,
            audit_hash=head.hash.hex() if head else "",
            # Only a hint for reading by time (rows_after falls back to a full read if it misses).
            audit_ts=int(time.time()),
            events_offset=events[0],
            events_inode=events[1],
        )

    def _save(self, pos: Position) -> None:
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.position_path, json.dumps(pos.to_json(), sort_keys=True).encode())

    def start(self) -> None:
        """Record the starting position now (a first start begins at the current end of the logs)."""
        if not self.position_path.exists():
            self._save(self._load())

    # --- one poll -------------------------------------------------------------------------------
    def poll_once(self, now: float | None = None) -> list[Alert]:
        """Read what is new, hand its alerts to the dispatcher, then move the position. Returns the alerts."""
        now = time.time() if now is None else now
        pos = self._load()
        alerts: list[Alert] = []
        alerts += self._audit(pos, int(now))
        alerts += self._events(pos, int(now))
        alerts += self._overdue(pos, now)
        if alerts:
            self.dispatcher.submit(alerts)
        else:
            self.dispatcher.flush()
        self._save(pos)
        return alerts

    def _audit_problem(self, pos: Position, key: str, detail: str, now: int, seq: int | None = None) -> list[Alert]:
        if key in pos.audit_problems:
            return []
        pos.audit_problems = [*pos.audit_problems[-49:], key]
        return [Alert("audit-failure", "kms-agent: audit log failure", detail, now, severity="critical", seq=seq)]

    def _audit(self, pos: Position, now: int) -> list[Alert]:
        out: list[Alert] = []
        try:
            last = self.log.last_seq()
            if last < pos.audit_seq:
                return self._audit_problem(
                    pos,
                    f"shorter:{last}<{pos.audit_seq}",
                    f"the audit log ends at row {last}, but row {pos.audit_seq} was seen before: rows were deleted",
                    now,
                )
            rows = rows_after(self.log, pos.audit_seq, pos.audit_ts)
        except KmsAgentError as exc:
            return self._audit_problem(pos, f"read:{exc.message}", f"the audit log cannot be read: {exc.message}", now)
        request_ids: list[str] = []
        for row in rows:
            prev_ok = not pos.audit_hash or row.prev_hash.hex() == pos.audit_hash
            if not row_is_intact(row) or not prev_ok:
                out += self._audit_problem(
                    pos,
                    f"row:{row.seq}",
                    f"audit row {row.seq} does not match its hash or does not chain to row {row.seq - 1}: "
                    "the log was edited (run `kms-agent audit verify`)",
                    now,
                    row.seq,
                )
            out += _row_alerts(row)
            if row.kind == AuditKind.REQUEST and row.request_id:
                request_ids.append(row.request_id)
            pos.audit_seq, pos.audit_hash, pos.audit_ts = row.seq, row.hash.hex(), row.ts
        if request_ids:
            out += self._new_destinations(request_ids, now)
        if self.config.verify_minutes and time.monotonic() - self._last_verify >= self.config.verify_minutes * 60:
            self._last_verify = time.monotonic()
            try:
                report = self.log.verify()
            except KmsAgentError as exc:
                out += self._audit_problem(pos, f"verify:{exc.message}", f"audit verify failed: {exc.message}", now)
            else:
                if not report.ok:
                    first = report.problems[0] if report.problems else None
                    what = f"row {first.seq}: {first.what}" if first and first.seq else (first.what if first else "")
                    out += self._audit_problem(
                        pos,
                        f"row:{report.first_bad_seq}" if report.first_bad_seq else f"verify:{what}",
                        f"audit verify found {len(report.problems)} problem(s); first: {what}",
                        now,
                        report.first_bad_seq,
                    )
        return out

    def _new_destinations(self, request_ids: list[str], now: int) -> list[Alert]:
        from agent.paths import Paths
        from agent.reports import _new_destinations
        from agent.withdrawals.ledger import Ledger
        from agent.withdrawals.queue import Queue

        try:
            Queue(self.state).sync(Ledger(self.log))  # as every command does: the index may lag a commit
            found = _new_destinations(Paths(self.home), None)
        except KmsAgentError as exc:
            logger.warning("alerts: new-destination check failed: %s", exc.message)
            return []
        wanted = set(request_ids)
        return [
            Alert(
                "new-destination",
                "kms-agent: first payment to a new destination",
                str(r["detail"]),
                now,
                request_id=str(r["request"]),
            )
            for r in found
            if r["request"] in wanted
        ]

    def _events(self, pos: Position, now: int) -> list[Alert]:
        tail = events_after(self.state, pos.events_offset, pos.events_inode)
        pos.events_offset, pos.events_inode = tail.offset, tail.inode
        out = []
        for event in tail.events:
            ts = int(event.get("ts", now))
            what = f"{event.get('command', '?')}: {event.get('message', '')}"
            if is_failed_unlock(event):
                out.append(Alert("failed-unlock", "kms-agent: failed unlock", what, ts))
            left = tries_left(event)
            if left is not None and left <= self.config.pin_retries_low:
                severity = "critical" if left == 0 else "warning"
                title = "kms-agent: PIN blocked" if left == 0 else f"kms-agent: {left} PIN tries left"
                out.append(Alert("pin-low", title, what, ts, severity=severity))
        return out

    def _overdue(self, pos: Position, now: float) -> list[Alert]:
        from agent.withdrawals.queue import Queue

        try:
            pending = Queue(self.state).list("pending")
        except KmsAgentError as exc:
            logger.warning("alerts: queue unreadable: %s", exc.message)
            return []
        limit = self.config.overdue_minutes * 60
        told = set(pos.overdue)
        out = []
        for rec in pending:
            rid = str(rec["id"])
            age = now - int(rec["created_at"])
            if age >= limit and rid not in told:
                out.append(
                    Alert(
                        "approval-overdue",
                        "kms-agent: withdrawal waiting for approvals",
                        f"request {rid} ({rec.get('chain')}) has waited {int(age // 60)} min for approvals "
                        f"({len(rec.get('approvals') or [])} so far)",
                        int(now),
                        request_id=rid,
                    )
                )
                told.add(rid)
        still = {str(r["id"]) for r in pending}
        pos.overdue = sorted(told & still)
        return out

    # --- the thread -----------------------------------------------------------------------------
    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        """Poll until ``stop`` is set. A failing poll is logged and retried; it never ends the loop."""
        interval = self.config.poll_seconds if interval is None else interval
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:
                logger.exception("alerts: poll failed; retrying in %.1fs", interval)
            stop.wait(interval)


def _row_alerts(row: AuditRow) -> Iterator[Alert]:
    payload = row.payload if isinstance(row.payload, dict) else {}
    rid = row.request_id
    if row.kind == AuditKind.DECISION:
        outcome = payload.get("outcome")
        if outcome in ("deny", "escalate"):
            reasons = "; ".join(
                f"[{r.get('rule')}] {r.get('detail')}"
                for r in payload.get("reasons", [])
                if isinstance(r, dict) and r.get("effect") in ("deny", "escalate")
            )
            yield Alert(
                f"policy-{outcome}",
                f"kms-agent: withdrawal {'denied' if outcome == 'deny' else 'escalated'} by policy",
                f"{payload.get('stage', '')} decision: {reasons or outcome}",
                row.ts,
                request_id=rid,
                severity="critical" if outcome == "deny" else "warning",
                seq=row.seq,
            )
        near = [u for u in payload.get("near_limit", []) if isinstance(u, dict)]
        if near:
            yield Alert(
                "velocity-near-limit",
                "kms-agent: velocity near its limit",
                "; ".join(
                    f"{u.get('asset')} {u.get('window')} {u.get('scope')}: {u.get('percent')}% "
                    f"({u.get('used')} of {u.get('limit')})"
                    for u in near
                ),
                row.ts,
                request_id=rid,
                seq=row.seq,
            )
    elif row.kind == AuditKind.SUSPENSION:
        yield Alert(
            "signcount-regression",
            "kms-agent: operator suspended (signCount went back)",
            f"operator {row.actor or payload.get('operator_id')}: {payload.get('reason', '')}",
            row.ts,
            request_id=rid,
            severity="critical",
            seq=row.seq,
        )
    elif row.kind == AuditKind.RECOVERY:
        yield Alert(
            "recovery-used",
            "kms-agent: the vault was opened with recovery shares",
            f"{payload.get('shares_used')} recovery shares used ({payload.get('purpose')})",
            row.ts,
            severity="critical",
            seq=row.seq,
        )
    elif row.kind == AuditKind.CONFIRMATION and payload.get("state") in ("failed", "dropped", "replaced"):
        # A signed withdrawal that will not land as signed (docs/broadcast.md §7).
        yield Alert(
            "alert",
            f"kms-agent: transaction {payload.get('state')}",
            f"{payload.get('txid')}: {payload.get('reason') or payload.get('state')}",
            row.ts,
            request_id=rid,
            severity="critical",
            seq=row.seq,
        )
    elif row.kind == AuditKind.ALERT:
        rule = payload.get("rule")
        if rule == "recovery-used":
            return  # the recovery row itself alerts
        kind = {"queue-tampered": "queue-tampered", "sign-count": "signcount-regression"}.get(str(rule), "alert")
        yield Alert(
            kind,
            f"kms-agent: {rule}",
            str(payload.get("detail", "")),
            row.ts,
            request_id=rid,
            severity="critical",
            seq=row.seq,
        )


# --- start / stop -----------------------------------------------------------------------------------
def start_alerting(home: Path, *, interval: float | None = None) -> Callable[[], None]:
    """Start the watcher in a daemon thread; returns a function that stops it (and waits for it).

    Without ``alerts.json`` alerting is off and the stopper does nothing.

    :raises AlertConfigError: ``alerts.json`` exists but is unusable (one message naming the field).
    """
    dispatcher = dispatcher_for(home)
    if dispatcher is None:
        logger.info("alerts: no %s; alerting is off", Path(home) / "alerts.json")
        return lambda: None
    watcher = AlertWatcher(home, dispatcher.config, dispatcher=dispatcher)
    watcher.start()
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop, interval), name="kms-agent-alerts", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(timeout=max(dispatcher.config.retry_seconds, 5.0) + 10.0)

    return stopper
