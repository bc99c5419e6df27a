"""Alerts: the channels of ``$KMS_AGENT_HOME/alerts.json``, rate limits, delivery with retries (docs/monitoring.md).

* Slack-compatible, e-mail and any other Apprise URL go through `Apprise <https://github.com/caronc/apprise>`_;
  we write no per-service HTTP.
* The generic ``webhook`` is ours: a JSON body signed with HMAC-SHA256 over ``timestamp + "." + body``
  (headers ``X-KMS-Timestamp``, ``X-KMS-Signature: sha256=<hex>``, ``X-KMS-Alert-Id``), posted with httpx.
* Every channel is retried with exponential backoff, bounded in attempts and in total time. An alert a
  channel still refuses is written to the events log (:func:`agent.events.note`), so none is lost silently.
* Token buckets per kind and overall: what they hold back is counted and sent as one ``summary`` alert,
  at most once per ``summary_seconds``, so a storm becomes a handful of messages.

Secrets (webhook keys, passwords of e-mail URLs) come from 0600 files named in the config, never from
argv or the environment, and never appear in a log line, an event or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import stat
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import UsageError

logger = logging.getLogger(__name__)

CONFIG_NAME = "alerts.json"
SIGNATURE_HEADER = "X-KMS-Signature"
TIMESTAMP_HEADER = "X-KMS-Timestamp"
ALERT_ID_HEADER = "X-KMS-Alert-Id"
#: What the events log names an alert that no retry delivered (``error`` field).
UNDELIVERED_EVENT = "AlertUndelivered"

#: Every kind an alert can have (a channel's ``kinds`` filter names some of them).
ALERT_KINDS = frozenset(
    {
        "policy-deny",
        "policy-escalate",
        "velocity-near-limit",
        "new-destination",
        "failed-unlock",
        "pin-low",
        "signcount-regression",
        "audit-failure",
        "recovery-used",
        "queue-tampered",
        "approval-overdue",
        "approval-waiting",
        "alert",
        "summary",
    }
)
CHANNEL_TYPES = ("webhook", "slack", "email", "apprise")
#: URL schemes Apprise accepts for each typed channel (``apprise`` takes any URL Apprise knows).
_SCHEMES = {
    "slack": ("slack", "mmost", "mmosts", "https"),
    "email": ("mailto", "mailtos"),
    "webhook": ("http", "https"),
}
_SEVERITY = {"info": "info", "warning": "warning", "critical": "failure"}


class AlertConfigError(UsageError):
    """``alerts.json`` (or a secret file it names) is unusable; the message names the field."""


@dataclass(frozen=True)
class Alert:
    """One thing worth telling the operators. ``seq`` is the audit row that raised it, if any."""

    kind: str
    title: str
    detail: str
    ts: int
    request_id: str | None = None
    severity: str = "warning"
    seq: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Stable across retries and restarts, so a receiver can drop a repeat."""
        key = json.dumps([self.kind, self.seq, self.request_id, self.title, self.detail, self.ts], sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "detail": self.detail,
            "request_id": self.request_id,
            "audit_seq": self.seq,
            "ts": self.ts,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    def text(self) -> str:
        lines = [self.detail]
        if self.request_id:
            lines.append(f"request: {self.request_id}")
        if self.seq is not None:
            lines.append(f"audit row: {self.seq}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``burst`` alerts at once, refilled at ``per_minute``."""

    burst: int
    per_minute: float


@dataclass(frozen=True)
class Channel:
    type: str
    #: Apprise URL or webhook URL, with ``{secret}`` already filled in. Never printed (it may hold a token).
    url: str = field(repr=False)
    name: str
    kinds: frozenset[str] | None = None
    secret: bytes | None = field(default=None, repr=False)

    def wants(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds or kind == "summary"


@dataclass(frozen=True)
class AlertConfig:
    channels: tuple[Channel, ...]
    #: A pending request waiting longer than this raises ``approval-overdue`` (once per request).
    overdue_minutes: float = 30.0
    #: A wrong PIN leaving this many tries or fewer raises ``pin-low``.
    pin_retries_low: int = 2
    per_kind: RateLimit = RateLimit(5, 1.0)
    overall: RateLimit = RateLimit(20, 6.0)
    summary_seconds: float = 60.0
    retry_attempts: int = 5
    retry_seconds: float = 30.0
    retry_base_seconds: float = 0.5
    #: After a channel exhausted its retries, skip it (straight to the events log) for this long.
    channel_cooldown_seconds: float = 60.0
    poll_seconds: float = 5.0
    #: Full :meth:`AuditLog.verify` this often; every poll re-hashes the new rows anyway.
    verify_minutes: float = 10.0
    desktop: bool = True


# --- configuration ----------------------------------------------------------------------------------
_TOP_KEYS = {
    "v",
    "channels",
    "overdue_minutes",
    "pin_retries_low",
    "rate_limit",
    "retry",
    "poll_seconds",
    "verify_minutes",
    "desktop",
}
_CHANNEL_KEYS = {"type", "url", "secret_file", "kinds", "name"}


def config_path(home: Path) -> Path:
    return Path(home) / CONFIG_NAME


def load_config(home: Path) -> AlertConfig | None:
    """The alert configuration, or None when ``alerts.json`` does not exist (alerting is off).

    :raises AlertConfigError: one message naming the file, the field and what is wrong with it.
    """
    path = config_path(home)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    _private(path, mode, "alerts config")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AlertConfigError(f"{path}: not readable JSON ({type(exc).__name__}: {exc})") from None
    return parse_config(doc, home=Path(home), where=str(path))


def parse_config(doc: Any, *, home: Path, where: str = CONFIG_NAME) -> AlertConfig:
    def fail(field_name: str, what: str) -> AlertConfigError:
        return AlertConfigError(f"{where}: {field_name}: {what}", hint="see docs/monitoring.md, 'Configuration'")

    if not isinstance(doc, dict):
        raise fail("(top)", "must be a JSON object")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise fail(unknown[0], "unknown key")
    if doc.get("v", 1) != 1:
        raise fail("v", "only version 1 is known")
    raw_channels = doc.get("channels")
    if not isinstance(raw_channels, list) or not raw_channels:
        raise fail("channels", "must be a non-empty list")
    channels = tuple(_channel(c, i, home, fail) for i, c in enumerate(raw_channels))
    names = [c.name for c in channels]
    if len(set(names)) != len(names):
        raise fail("channels", "two channels have the same name")

    def number(key: str, default: float, *, low: float, integer: bool = False, src: Mapping[str, Any] = doc) -> float:
        value = src.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            raise fail(key, f"must be {'an integer' if integer else 'a number'}")
        if value < low:
            raise fail(key, f"must be at least {low}")
        return float(value)

    rate = doc.get("rate_limit", {})
    retry = doc.get("retry", {})
    for key, section, allowed in (
        ("rate_limit", rate, {"per_kind", "overall", "summary_seconds"}),
        ("retry", retry, {"attempts", "max_seconds", "base_seconds", "channel_cooldown_seconds"}),
    ):
        if not isinstance(section, dict):
            raise fail(key, "must be an object")
        extra = sorted(set(section) - allowed)
        if extra:
            raise fail(f"{key}.{extra[0]}", "unknown key")

    def bucket(key: str, default: RateLimit) -> RateLimit:
        raw = rate.get(key, {})
        if not isinstance(raw, dict) or set(raw) - {"burst", "per_minute"}:
            raise fail(f"rate_limit.{key}", 'must be {"burst": int, "per_minute": number}')
        return RateLimit(
            int(number("burst", default.burst, low=1, integer=True, src=raw)),
            number("per_minute", default.per_minute, low=0.01, src=raw),
        )

    desktop = doc.get("desktop", True)
    if not isinstance(desktop, bool):
        raise fail("desktop", "must be true or false")
    return AlertConfig(
        channels=channels,
        overdue_minutes=number("overdue_minutes", 30, low=0),
        pin_retries_low=int(number("pin_retries_low", 2, low=0, integer=True)),
        per_kind=bucket("per_kind", RateLimit(5, 1.0)),
        overall=bucket("overall", RateLimit(20, 6.0)),
        summary_seconds=number("summary_seconds", 60, low=0, src=rate),
        retry_attempts=int(number("attempts", 5, low=1, integer=True, src=retry)),
        retry_seconds=number("max_seconds", 30, low=0, src=retry),
        retry_base_seconds=number("base_seconds", 0.5, low=0, src=retry),
        channel_cooldown_seconds=number("channel_cooldown_seconds", 60, low=0, src=retry),
        poll_seconds=number("poll_seconds", 5, low=0.05),
        verify_minutes=number("verify_minutes", 10, low=0),
        desktop=desktop,
    )


def _channel(raw: Any, i: int, home: Path, fail: Callable[[str, str], AlertConfigError]) -> Channel:
    at = f"channels[{i}]"
    if not isinstance(raw, dict):
        raise fail(at, "must be an object")
    unknown = sorted(set(raw) - _CHANNEL_KEYS)
    if unknown:
        raise fail(f"{at}.{unknown[0]}", "unknown key")
    kind = raw.get("type")
    if kind not in CHANNEL_TYPES:
        raise fail(f"{at}.type", f"must be one of {', '.join(CHANNEL_TYPES)}")
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise fail(f"{at}.url", "must be a non-empty string")
    name = raw.get("name", f"{kind}-{i}")
    if not isinstance(name, str) or not name:
        raise fail(f"{at}.name", "must be a non-empty string")
    kinds = raw.get("kinds")
    if kinds is not None:
        if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
            raise fail(f"{at}.kinds", "must be a non-empty list of alert kinds")
        bad = sorted(set(kinds) - ALERT_KINDS)
        if bad:
            raise fail(f"{at}.kinds", f"unknown alert kind {bad[0]!r} (known: {', '.join(sorted(ALERT_KINDS))})")
    secret: bytes | None = None
    secret_file = raw.get("secret_file")
    if secret_file is not None:
        if not isinstance(secret_file, str) or not secret_file:
            raise fail(f"{at}.secret_file", "must be a path")
        secret = _read_secret(home / secret_file, f"{at}.secret_file", fail)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if kind in _SCHEMES and scheme not in _SCHEMES[kind]:
        raise fail(
            f"{at}.url", f"a URL of a {kind!r} channel starts with {' or '.join(s + '://' for s in _SCHEMES[kind])}"
        )
    if kind == "webhook":
        if secret is None or len(secret) < 16:
            raise fail(f"{at}.secret_file", "a webhook needs an HMAC key of at least 16 bytes in a 0600 file")
        return Channel(kind, url, name, frozenset(kinds) if kinds else None, secret)
    if "{secret}" in url:
        if secret is None:
            raise fail(f"{at}.url", "holds {secret} but the channel names no secret_file")
        url = url.replace("{secret}", urllib.parse.quote(secret.decode("utf-8", "replace"), safe=""))
    if kind == "slack" and scheme == "https" and not url.lower().startswith("https://hooks.slack.com/"):
        raise fail(f"{at}.url", "an https Slack URL must be a https://hooks.slack.com/services/... webhook")
    import apprise

    if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
        raise fail(f"{at}.url", "Apprise does not accept this URL (see its wiki for the URL syntax)")
    return Channel(kind, url, name, frozenset(kinds) if kinds else None, secret)


def _private(path: Path, mode: int, what: str) -> None:
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AlertConfigError(
            f"{what} {path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); refusing to use it",
            hint=f"chmod 600 {path}",
        )


def _read_secret(path: Path, at: str, fail: Callable[[str, str], AlertConfigError]) -> bytes:
    try:
        _private(path, path.stat().st_mode, "secret file")
        data = path.read_bytes().rstrip(b"\r\n")
    except AlertConfigError:
        raise
    except OSError as exc:
        raise fail(at, f"cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    if not data:
        raise fail(at, f"{path} is empty")
    return data


# --- webhook signature ------------------------------------------------------------------------------
def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-KMS-Signature`` value: ``sha256=`` + hex HMAC-SHA256(secret, ``b"<timestamp>." + body``)."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify_signature(
    secret: bytes, headers: Mapping[str, str], body: bytes, *, now: int | None = None, tolerance: int = 300
) -> bool:
    """What a receiver does: constant-time compare, and refuse a timestamp more than ``tolerance`` s away."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        ts = int(lower[TIMESTAMP_HEADER.lower()])
        given = lower[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        return False
    now = int(time.time()) if now is None else now
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(given, sign(secret, ts, body))


# --- rate limits ------------------------------------------------------------------------------------
class TokenBucket:
    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.last = now

    def take(self, now: float) -> bool:
        self.tokens = min(float(self.limit.burst), self.tokens + (now - self.last) * self.limit.per_minute / 60.0)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class Stats:
    """What this process did with alerts (exported as ``kms_agent_alerts_total``)."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, kind: str, result: str, n: int = 1) -> None:
        self.counts[(kind, result)] += n


class DeliveryFailed(Exception):
    """One attempt failed; ``reason`` names no URL and no secret (a class name or a status code)."""

    def __init__(self, reason: str, *, retry: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


# --- the dispatcher ---------------------------------------------------------------------------------
class Dispatcher:
    """Rate-limits alerts and delivers them to every channel that wants them. Thread-safe.

    :param clock: monotonic seconds (rate limits, backoff); alerts carry their own wall-clock ``ts``.
    :param sleep: the backoff's sleep (tests may shorten it; the default is :func:`time.sleep`).
    """

    def __init__(
        self,
        home: Path,
        config: AlertConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.home = Path(home)
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.stats = Stats()
        self._lock = threading.Lock()
        now = clock()
        self._overall = TokenBucket(config.overall, now)
        self._per_kind: dict[str, TokenBucket] = {}
        self._suppressed: Counter[str] = Counter()
        self._suppressed_requests: list[str] = []
        self._last_summary = now - config.summary_seconds
        self._down_until: dict[str, float] = {}

    def submit(self, alerts: Iterable[Alert]) -> list[Alert]:
        """Deliver what the rate limits let through (and a summary when due); returns what was sent."""
        passed: list[Alert] = []
        with self._lock:
            now = self.clock()
            for alert in alerts:
                bucket = self._per_kind.setdefault(alert.kind, TokenBucket(self.config.per_kind, now))
                # Both buckets must agree; take from the kind's first so a noisy kind cannot drain the rest.
                if bucket.take(now) and self._overall.take(now):
                    passed.append(alert)
                else:
                    self._suppressed[alert.kind] += 1
                    self.stats.add(alert.kind, "suppressed")
                    if alert.request_id and len(self._suppressed_requests) < 20:
                        self._suppressed_requests.append(alert.request_id)
            summary = self._summary_due(now)
        for alert in passed:
            self._deliver_all(alert)
        if summary is not None:
            self._deliver_all(summary)
            passed.append(summary)
        return passed

    def flush(self) -> Alert | None:
        """Send the summary of what was held back, if one is due (the watcher calls this every poll)."""
        with self._lock:
            summary = self._summary_due(self.clock())
        if summary is not None:
            self._deliver_all(summary)
        return summary

    def _summary_due(self, now: float) -> Alert | None:
        if not self._suppressed or now - self._last_summary < self.config.summary_seconds:
            return None
        counts = dict(sorted(self._suppressed.items()))
        total = sum(counts.values())
        ids = list(dict.fromkeys(self._suppressed_requests))
        self._suppressed.clear()
        self._suppressed_requests.clear()
        self._last_summary = now
        detail = f"{total} alerts held back by the rate limit: " + ", ".join(f"{k} x{n}" for k, n in counts.items())
        if ids:
            detail += f"; requests include {', '.join(ids)}"
        detail += "; the audit log and `kms-agent report anomalies` have every one"
        return Alert(
            "summary",
            f"kms-agent: {total} alerts rate-limited",
            detail,
            int(time.time()),
            severity="warning",
            extra={"suppressed": counts},
        )

    def _deliver_all(self, alert: Alert) -> None:
        for channel in self.config.channels:
            if channel.wants(alert.kind):
                self.deliver(channel, alert)

    def deliver(self, channel: Channel, alert: Alert) -> bool:
        """Try one channel with backoff; on failure write the alert to the events log. Never raises."""
        from agent import events

        cfg = self.config
        with self._lock:
            down = self._down_until.get(channel.name, 0.0) > self.clock()
        attempts = 0
        reason = "the channel failed recently (cooling down)"
        if not down:
            start = self.clock()
            delay = cfg.retry_base_seconds
            while True:
                attempts += 1
                try:
                    self._send(channel, alert)
                    self.stats.add(alert.kind, "sent")
                    with self._lock:
                        self._down_until.pop(channel.name, None)
                    return True
                except DeliveryFailed as exc:
                    reason = exc.reason
                    retry = exc.retry
                except Exception as exc:  # a library bug must not stop the watcher
                    reason, retry = type(exc).__name__, True
                elapsed = self.clock() - start
                if not retry or attempts >= cfg.retry_attempts or elapsed + delay > cfg.retry_seconds:
                    break
                logger.info("alert %s to %s failed (%s); retrying in %.1fs", alert.id, channel.name, reason, delay)
                self.sleep(delay)
                delay *= 2
            with self._lock:
                self._down_until[channel.name] = self.clock() + cfg.channel_cooldown_seconds
        self.stats.add(alert.kind, "undelivered")
        message = (
            f"{alert.kind} alert {alert.id}"
            + (f" (request {alert.request_id})" if alert.request_id else "")
            + f" not delivered to channel {channel.name!r} ({channel.type}) after {attempts} attempts: {reason}. "
            + f"{alert.title}: {alert.detail}"
        )
        logger.warning("%s", message)
        events.note(self.home / "state", "alert", UNDELIVERED_EVENT, message)
        return False

    def _send(self, channel: Channel, alert: Alert) -> None:
        if channel.type == "webhook":
            self._send_webhook(channel, alert)
        else:
            self._send_apprise(channel, alert)

    def _send_webhook(self, channel: Channel, alert: Alert) -> None:
        import httpx

        assert channel.secret is not None  # checked by parse_config
        body = json.dumps(alert.to_json(), sort_keys=True, separators=(",", ":")).encode()
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "kms-agent-alerts/1",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(channel.secret, ts, body),
            ALERT_ID_HEADER: alert.id,
        }
        try:
            response = httpx.post(channel.url, content=body, headers=headers, timeout=5.0, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(type(exc).__name__) from None
        if response.is_success:
            return
        status = response.status_code
        raise DeliveryFailed(f"HTTP {status}", retry=status >= 500 or status in (408, 425, 429))

    def _send_apprise(self, channel: Channel, alert: Alert) -> None:
        import apprise

        _quiet_apprise()
        notifier = apprise.Apprise()
        if not notifier.add(channel.url):
            raise DeliveryFailed("Apprise refused the URL", retry=False)
        ok = notifier.notify(
            title=alert.title,
            body=alert.text(),
            notify_type=_SEVERITY.get(alert.severity, "warning"),
        )
        if not ok:
            raise DeliveryFailed("Apprise reported a failed notification")


def _quiet_apprise() -> None:
    """Apprise logs URLs (which may hold a token) at DEBUG: keep its logger at WARNING whatever ``-l`` says."""
    apprise_logger = logging.getLogger("apprise")
    if apprise_logger.getEffectiveLevel() < logging.WARNING:
        apprise_logger.setLevel(logging.WARNING)


_shared: dict[Path, tuple[float, Dispatcher | None]] = {}
_shared_lock = threading.Lock()


def dispatcher_for(home: Path) -> Dispatcher | None:
    """The process's one dispatcher for ``home`` (shared rate limits); None when alerting is not configured.

    Re-read when ``alerts.json`` changes. :raises AlertConfigError: the file is there but unusable.
    """
    home = Path(home).absolute()
    path = config_path(home)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        mtime = -1.0
    with _shared_lock:
        cached = _shared.get(home)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        config = load_config(home)
        dispatcher = Dispatcher(home, config) if config is not None else None
        _shared[home] = (mtime, dispatcher)
        return dispatcher


def stats_for(home: Path) -> Stats | None:
    """What this process's dispatcher for ``home`` did so far (None before alerting started)."""
    with _shared_lock:
        cached = _shared.get(Path(home).absolute())
    return cached[1].stats if cached is not None and cached[1] is not None else None
