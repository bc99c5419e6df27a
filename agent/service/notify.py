"""Tell the operators that a request waits for their touches: a desktop notification and the alert channels.

The desktop notification uses ``notify-send`` when it is on PATH (and is skipped quietly otherwise or
when it fails: a headless host has no notification daemon). The channels get an ``approval-waiting``
alert through the same rate-limited dispatcher as every other alert.
"""

from __future__ import annotations

import html
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

from agent.errors import KmsAgentError
from agent.service.alerts import Alert, dispatcher_for
from agent.text import escape_text

logger = logging.getLogger(__name__)

_DESKTOP_TIMEOUT = 5.0


def desktop_notify(title: str, body: str) -> bool:
    """``notify-send TITLE BODY`` if there is one; True when it ran and succeeded. Never raises."""
    exe = shutil.which("notify-send")
    if exe is None:
        return False
    try:
        done = subprocess.run(
            [exe, "--app-name=kms-agent", "--urgency=critical", title, body],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=_DESKTOP_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def notify_waiting(home: Path, request_id: str, summary_text: str, *, wait: bool = False) -> None:
    """A request started waiting for touches: notify the desktop and the ``approval-waiting`` channels.

    Returns at once (delivery and its retries run in a daemon thread) unless ``wait`` is true, which a
    one-shot process must pass so it does not exit before delivering. Never raises: a bad
    ``alerts.json`` is logged, and an undeliverable alert lands in the events log.
    """
    text = escape_text(summary_text)
    title = f"kms-agent: request {request_id} waits for approvals"

    def work() -> None:
        try:
            dispatcher = dispatcher_for(home)
        except KmsAgentError as exc:
            logger.warning("alerts: %s", exc.message)
            dispatcher = None
        if dispatcher is None or dispatcher.config.desktop:
            desktop_notify(title, html.escape(text))  # notification daemons read the body as markup
        if dispatcher is not None:
            alert = Alert("approval-waiting", title, text, int(time.time()), request_id=request_id, severity="info")
            dispatcher.submit([alert])

    if wait:
        work()
    else:
        threading.Thread(target=work, name="kms-agent-notify", daemon=True).start()
