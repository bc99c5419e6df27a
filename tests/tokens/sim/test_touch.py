"""Touch outcomes as python-fido2's CtapHidDevice sees them: keepalives, refusals, timeouts, cancel, removal."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from fido2.ctap import STATUS, CtapError
from fido2.ctap2 import Ctap2

from agent.tokens.sim import FixedTouch, TouchResult, set_plugged
from agent.tokens.sim import touch as touch_module

from .conftest import OpenDevice, hmac_assertion, make_credential, preflight

ERR = CtapError.ERR
SALT = b"\x42" * 32


def _enrolled(open_device: OpenDevice) -> bytes:
    return make_credential(Ctap2(open_device("alice"))).cred_id


def test_keepalive_upneeded_reaches_on_keepalive(open_device: OpenDevice) -> None:
    cred_id = _enrolled(open_device)
    statuses: list[int] = []
    ctap = Ctap2(open_device("alice", touch=FixedTouch(TouchResult.GRANTED, delay=0.35)))
    out, _ = hmac_assertion(ctap, cred_id, SALT, uv=True, on_keepalive=statuses.append)
    assert len(out) == 32
    assert statuses == [STATUS.UPNEEDED]  # CtapHidDevice reports each status change once


def test_selection_waits_for_touch(open_device: OpenDevice) -> None:
    touch = FixedTouch(TouchResult.GRANTED)
    ctap = Ctap2(open_device(touch=touch))
    ctap.selection()
    assert touch.calls == 1


@pytest.mark.parametrize(
    ("result", "code"), [(TouchResult.DENIED, ERR.OPERATION_DENIED), (TouchResult.TIMEOUT, ERR.USER_ACTION_TIMEOUT)]
)
def test_refused_or_missed_touch(open_device: OpenDevice, result: TouchResult, code: int) -> None:
    cred_id = _enrolled(open_device)
    ctap = Ctap2(open_device("alice", touch=FixedTouch(result, delay=0.05)))
    with pytest.raises(CtapError) as info:
        hmac_assertion(ctap, cred_id, SALT, uv=True)
    assert info.value.code == code
    with pytest.raises(CtapError) as info:
        make_credential(ctap)
    assert info.value.code == code
    preflight(ctap, cred_id)  # no touch needed: still works


def test_host_cancel_gives_keepalive_cancel(open_device: OpenDevice) -> None:
    cred_id = _enrolled(open_device)
    slow = FixedTouch(TouchResult.GRANTED, delay=30)
    ctap = Ctap2(open_device("alice", touch=slow))
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(CtapError) as info:
            hmac_assertion(ctap, cred_id, SALT, uv=True, event=cancel)
    finally:
        timer.cancel()
    assert info.value.code == ERR.KEEPALIVE_CANCEL
    assert time.monotonic() - started < 5
    cancel.clear()
    preflight(ctap, cred_id)  # the device answers again afterwards


def test_removed_at_touch_fails_like_a_pulled_device(open_device: OpenDevice) -> None:
    cred_id = _enrolled(open_device)
    dev = open_device("alice", touch=FixedTouch(TouchResult.REMOVED))
    ctap = Ctap2(dev)
    with pytest.raises(OSError):
        hmac_assertion(ctap, cred_id, SALT, uv=True)
    with pytest.raises(OSError):
        ctap.get_info()


def test_unplugged_from_elsewhere_mid_session(home: Path, open_device: OpenDevice) -> None:
    from agent.errors import TokenNotFound
    from agent.tokens.sim import open_sim_hid_device

    ctap = Ctap2(open_device())
    set_plugged(home, "alice", False)
    with pytest.raises(OSError):
        ctap.get_info()
    with pytest.raises(TokenNotFound):
        open_sim_hid_device(home, "alice")
    set_plugged(home, "alice", True)
    assert Ctap2(open_device()).info.versions


# --- KMS_AGENT_SIM_TOUCH (the default provider) ---------------------------------------------------


@pytest.mark.parametrize(("mode", "code"), [("deny", ERR.OPERATION_DENIED), ("timeout", ERR.USER_ACTION_TIMEOUT)])
def test_env_modes(home: Path, open_device: OpenDevice, monkeypatch: pytest.MonkeyPatch, mode: str, code: int) -> None:
    from agent.tokens.sim import create_sim_token, open_sim_hid_device

    create_sim_token(home, "alice")
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "auto")
    ctap = Ctap2(open_sim_hid_device(home, "alice"))
    ctap.selection()
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", mode)
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH_TIMEOUT", "0.1")
    started = time.monotonic()
    with pytest.raises(CtapError) as info:
        ctap.selection()
    assert info.value.code == code
    assert time.monotonic() - started < 3
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "remove")
    with pytest.raises(OSError):
        ctap.selection()
    ctap.device.close()


def test_env_unset_without_terminal_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KMS_AGENT_SIM_TOUCH", raising=False)
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH_TIMEOUT", "0.05")
    real_open = os.open

    def no_tty(path: str, *args: int) -> int:
        if path == "/dev/tty":
            raise OSError(6, "No such device or address")
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", no_tty)
    assert touch_module.env_touch("alice", threading.Event()) == TouchResult.TIMEOUT


def test_env_timeout_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "timeout")
    monkeypatch.delenv("KMS_AGENT_SIM_TOUCH_TIMEOUT", raising=False)
    started = time.monotonic()
    assert touch_module.env_touch("alice", threading.Event()) == TouchResult.TIMEOUT
    assert 0.25 <= time.monotonic() - started < 2
