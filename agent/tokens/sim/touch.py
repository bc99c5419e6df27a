"""Who "touches" a simulated FIDO2 token, and how it is told (INSECURE: simulator only).

A real authenticator blinks and waits for a finger; the simulator asks a *touch provider*: any
callable ``(token_name, stop) -> TouchResult``. It may block; the authenticator runs it in a helper
thread, sends ``KEEPALIVE UPNEEDED`` every ~100 ms meanwhile, and sets ``stop`` when the host
cancels, after which the provider should return soon (its answer is then ignored).

The default, :func:`env_touch`, follows ``KMS_AGENT_SIM_TOUCH`` (read at every touch, so a test or
a demo can change it between operations):

``auto``     granted at once
``deny``     refused: the command fails with ``OPERATION_DENIED``
``timeout``  nobody touches: ``USER_ACTION_TIMEOUT`` after ``KMS_AGENT_SIM_TOUCH_TIMEOUT`` s (0.3)
``remove``   the token is pulled out at the touch: the HID connection fails with ``OSError``
unset        ask on the controlling terminal; without one, time out after
             ``KMS_AGENT_SIM_TOUCH_TIMEOUT`` s (30)

Tests and in-process callers pass a provider directly instead (``FixedTouch`` or a lambda).
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable
from enum import StrEnum

logger = logging.getLogger(__name__)

TOUCH_ENV = "KMS_AGENT_SIM_TOUCH"
TOUCH_TIMEOUT_ENV = "KMS_AGENT_SIM_TOUCH_TIMEOUT"
#: Default wait of ``timeout`` mode: short, so tests of the timeout path stay fast.
TIMEOUT_MODE_SECONDS = 0.3
#: Default wait for an answer on the terminal (and when there is no terminal to ask on).
ASK_SECONDS = 30.0


class TouchResult(StrEnum):
    """What happened when the simulated token asked for a touch."""

    GRANTED = "granted"
    DENIED = "denied"
    TIMEOUT = "timeout"
    REMOVED = "removed"


#: ``(token_name, stop) -> TouchResult``; may block until touched, refused, timed out or ``stop``.
TouchProvider = Callable[[str, threading.Event], TouchResult]


class FixedTouch:
    """Always give ``result``, after ``delay`` seconds (cut short by ``stop``). For tests and demos."""

    def __init__(self, result: TouchResult, *, delay: float = 0.0) -> None:
        self.result = result
        self.delay = delay
        self.calls = 0

    def __call__(self, token_name: str, stop: threading.Event) -> TouchResult:
        self.calls += 1
        if self.delay and stop.wait(self.delay):
            return TouchResult.TIMEOUT
        return self.result


def _timeout(default: float) -> float:
    raw = os.environ.get(TOUCH_TIMEOUT_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        logger.warning("Ignoring %s=%r: not a number of seconds", TOUCH_TIMEOUT_ENV, raw)
        return default
    return max(value, 0.0)


def env_touch(token_name: str, stop: threading.Event) -> TouchResult:
    """The default provider: obey ``KMS_AGENT_SIM_TOUCH`` (see the module docstring)."""
    mode = os.environ.get(TOUCH_ENV, "").strip().lower()
    if mode == "auto":
        return TouchResult.GRANTED
    if mode == "deny":
        return TouchResult.DENIED
    if mode == "remove":
        return TouchResult.REMOVED
    if mode == "timeout":
        stop.wait(_timeout(TIMEOUT_MODE_SECONDS))
        return TouchResult.TIMEOUT
    if mode not in ("", "ask"):
        # Never grant on a typo: asking is the safe reading of an unknown mode.
        logger.warning("Unknown %s=%r; asking on the terminal instead", TOUCH_ENV, mode)
    return ask_on_tty(token_name, stop, timeout=_timeout(ASK_SECONDS))


def ask_on_tty(token_name: str, stop: threading.Event, *, timeout: float) -> TouchResult:
    """Ask on ``/dev/tty``: Enter touches, ``n`` refuses; no terminal or no answer -> TIMEOUT."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        stop.wait(timeout)
        return TouchResult.TIMEOUT
    try:
        os.write(fd, f"Touch simulated token sim:{token_name}? [Enter = touch, n = refuse] ".encode())
        waited = 0.0
        while waited < timeout and not stop.is_set():
            step = min(0.1, timeout - waited)
            ready, _, _ = select.select([fd], [], [], step)
            waited += step
            if ready:
                answer = os.read(fd, 256).decode(errors="replace").strip().lower()
                return TouchResult.DENIED if answer.startswith("n") else TouchResult.GRANTED
        os.write(fd, b"\n")
        return TouchResult.TIMEOUT
    finally:
        os.close(fd)


def as_touch_result(answer: object) -> TouchResult:
    """A provider's answer as a TouchResult; plain callables may say True/False for touched/refused."""
    if answer is True or answer is False:
        return TouchResult.GRANTED if answer else TouchResult.DENIED
    try:
        return TouchResult(str(answer))
    except ValueError:
        logger.error("Touch provider answered %r; treating it as a refusal", answer)
        return TouchResult.DENIED
