"""Prometheus metrics, derived from the durable state so they are right after a restart (docs/monitoring.md).

Counters come from the audit log (append-only, so a count of its rows only rises) and the events log;
gauges from the queue index and the clock. Each data directory has its own
:class:`prometheus_client.CollectorRegistry` (never the global default) holding one collector that
reads only what is new since the last scrape: the audit log after the last seq counted, the events log
after the last byte counted, and the queue again only when the audit log moved.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from agent.audit import AuditKind, AuditLog
from agent.service.alerts import stats_for
from agent.service.watch import TOKEN_EVENTS, events_after, is_failed_unlock, rows_after

#: Statuses always exported (0 when none), so dashboards see every series from the start.
STATUSES = ("pending", "signed", "denied", "rejected", "expired", "stale")


@dataclass
class _Counts:
    seq: int = 0
    head_hash: str = ""
    last_ts: int | None = None
    rows: Counter[str] = field(default_factory=Counter)
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    audit_alerts: Counter[str] = field(default_factory=Counter)
    events_offset: int = 0
    events_inode: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    token_events: Counter[str] = field(default_factory=Counter)
    unlock_failures: int = 0
    #: (status, created_at, expires_at) of every request, re-read when the audit log moved.
    requests: list[tuple[str, int, int]] = field(default_factory=list)
    requests_seq: int = -1


class StateCollector(Collector):
    """Collects one data directory's metrics; cheap per scrape (incremental, under a lock)."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.state = self.home / "state"
        self.log = AuditLog(self.state)
        self._lock = threading.Lock()
        self._c = _Counts()

    def refresh(self) -> _Counts:
        with self._lock:
            c = self._c
            last = self.log.last_seq()
            if last < c.seq:  # a shorter log than we counted (rows deleted): count again from scratch
                c = self._c = _Counts()
            for row in rows_after(self.log, c.seq, c.last_ts):
                c.rows[row.kind] += 1
                payload: Any = row.payload if isinstance(row.payload, dict) else {}
                if row.kind == AuditKind.DECISION:
                    c.decisions[(str(payload.get("stage", "")), str(payload.get("outcome", "")))] += 1
                elif row.kind == AuditKind.ALERT:
                    c.audit_alerts[str(payload.get("rule", ""))] += 1
                c.seq, c.head_hash, c.last_ts = row.seq, row.hash.hex(), row.ts
            tail = events_after(self.state, c.events_offset, c.events_inode)
            if tail.inode != c.events_inode or tail.offset < c.events_offset:
                c.errors.clear()
                c.token_events.clear()
                c.unlock_failures = 0
            for event in tail.events:
                error = str(event.get("error", ""))
                c.errors[error] += 1
                if error in TOKEN_EVENTS:
                    c.token_events[TOKEN_EVENTS[error]] += 1
                if is_failed_unlock(event):
                    c.unlock_failures += 1
            c.events_offset, c.events_inode = tail.offset, tail.inode
            if c.requests_seq != c.seq:
                from agent.withdrawals.queue import Queue

                c.requests = [
                    (str(r.get("status")), int(r.get("created_at") or 0), int(r.get("expires_at") or 0))
                    for r in Queue(self.state).list()
                ]
                c.requests_seq = c.seq
            return c

    def collect(self) -> Iterator[Any]:
        c = self.refresh()
        now = int(time.time())
        by_status: Counter[str] = Counter({s: 0 for s in STATUSES})
        waiting: list[int] = []
        for status, created, expires in c.requests:
            if status == "pending" and now >= expires:
                status = "expired"
            by_status[status] += 1
            if status == "pending":
                waiting.append(created)

        g = GaugeMetricFamily("kms_agent_requests", "Withdrawal requests by current status", labels=["status"])
        for status, n in sorted(by_status.items()):
            g.add_metric([status], n)
        yield g
        yield _counter(
            "kms_agent_requests_created",
            "Requests created (audit request rows: withdrawals and policy changes)",
            c.rows[AuditKind.REQUEST],
        )
        d = CounterMetricFamily(
            "kms_agent_decisions", "Decisions on requests by stage and outcome", labels=["stage", "outcome"]
        )
        for (stage, outcome), n in sorted(c.decisions.items()):
            d.add_metric([stage, outcome], n)
        yield d
        yield _counter("kms_agent_approvals", "Approval touches recorded", c.rows[AuditKind.APPROVAL])
        yield _counter("kms_agent_rejections", "Vetoes recorded", c.rows[AuditKind.REJECTION])
        yield GaugeMetricFamily(
            "kms_agent_approvals_waiting", "Requests pending, waiting for approvals", value=len(waiting)
        )
        yield GaugeMetricFamily(
            "kms_agent_approvals_waiting_oldest_seconds",
            "Age of the oldest request waiting for approvals (0 when none)",
            value=max(now - min(waiting), 0) if waiting else 0,
        )
        yield _counter("kms_agent_signatures", "Withdrawals signed", c.rows[AuditKind.SIGNATURE])
        e = CounterMetricFamily("kms_agent_errors", "Errors in the events log, by class", labels=["error"])
        for error, n in sorted(c.errors.items()):
            e.add_metric([error], n)
        yield e
        t = CounterMetricFamily("kms_agent_token_events", "Token events: PIN errors, touch failures", labels=["event"])
        for event in sorted(set(TOKEN_EVENTS.values())):
            t.add_metric([event], c.token_events[event])
        yield t
        yield _counter("kms_agent_unlock_failures", "Failed attempts to open the vault", c.unlock_failures)
        a = CounterMetricFamily("kms_agent_audit_alerts", "Alert rows in the audit log, by rule", labels=["rule"])
        for rule, n in sorted(c.audit_alerts.items()):
            a.add_metric([rule], n)
        yield a
        r = CounterMetricFamily("kms_agent_audit_rows", "Audit log rows by kind", labels=["kind"])
        for audit_kind in AuditKind:
            r.add_metric([audit_kind.value], c.rows[audit_kind.value])
        yield r
        yield GaugeMetricFamily("kms_agent_audit_chain_length", "Rows in the audit log's hash chain", value=c.seq)
        yield GaugeMetricFamily("kms_agent_audit_head_seq", "Seq of the audit log's newest row", value=c.seq)
        info = InfoMetricFamily("kms_agent_audit_head", "The audit log's newest row (anchor it elsewhere)")
        info.add_metric([], {"seq": str(c.seq), "hash": c.head_hash})
        yield info
        s = CounterMetricFamily(
            "kms_agent_alerts",
            "Alerts this process handled, by kind and result (sent, suppressed, undelivered)",
            labels=["kind", "result"],
        )
        stats = stats_for(self.home)
        for (alert_kind, result), n in sorted(stats.counts.items() if stats else []):
            s.add_metric([alert_kind, result], n)
        yield s


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


_registries: dict[Path, CollectorRegistry] = {}
_registries_lock = threading.Lock()


def registry_for(home: Path) -> CollectorRegistry:
    """The dedicated registry of ``home`` (one per process and data directory)."""
    home = Path(home).absolute()
    with _registries_lock:
        registry = _registries.get(home)
        if registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(StateCollector(home))
            _registries[home] = registry
        return registry


def render_metrics(home: Path) -> tuple[bytes, str]:
    """The Prometheus text exposition for ``home``: ``(body, content_type)`` for GET /metrics.

    The content type is the classic text format 0.0.4, which every Prometheus version scrapes.

    :raises StateError: the audit log or the queue cannot be read (answer 503).
    """
    return generate_latest(registry_for(home)), CONTENT_TYPE_PLAIN_0_0_4
