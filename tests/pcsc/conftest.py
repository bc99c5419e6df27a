"""The real PC/SC stack for tests: pcscd with the vsmartcard vpcd reader, and our simulated card in it.

``pcscd`` (session): uses a running pcscd if there is one, else starts ``pcscd -f -c <dir>`` with a
private reader.conf that names the vpcd reader "Yubico YubiKey CCID (kms-agent vpcd)" (so ykman
treats the card as a USB YubiKey) and stops it after the run. Machines without pcscd/vpcd skip
these tests, unless ``CI=true``: there a missing pcscd fails them.

pcscd and the vpcd port are machine-wide, so the whole PC/SC session holds an exclusive file lock;
under pytest-xdist run with ``--dist loadgroup`` (every test here is in ``xdist_group("pcsc")``) so
one worker runs them all and the other never waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.tokens.piv.conftest import Prompts

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
READER_BASE = "Yubico YubiKey CCID (kms-agent vpcd)"
VPCD_PORT = 35963
LOCK_PATH = Path(tempfile.gettempdir()) / "kms-agent-pcsc-tests.lock"
#: Figures for the report: how long pcscd takes to start / to see a card arrive or leave.
TIMINGS: dict[str, list[float]] = {"pcscd_start": [], "card_insert": [], "card_remove": []}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"PC/SC tests must run in CI but cannot: {reason}")
    pytest.skip(reason)


def _pcscd_binary() -> str | None:
    return shutil.which("pcscd") or next((p for p in ("/usr/sbin/pcscd", "/sbin/pcscd") if os.access(p, os.X_OK)), None)


def _daemon_running() -> bool:
    if not PCSCD_SOCKET.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(PCSCD_SOCKET))
        except OSError:
            return False
    return True


def _vpcd_readers() -> list[str]:
    from agent.tokens.pcsc import list_reader_names

    return [n for n in list_reader_names() if "vpcd" in n.lower() or "virtual pcd" in n.lower()]


@dataclass
class Pcscd:
    reader: str  # vpcd slot 0
    reader2: str | None  # vpcd slot 1
    port: int
    transport: str  # "usb" when ykman will take the reader for a USB YubiKey, else "nfc"
    started: bool


@contextlib.contextmanager
def _machine_lock(timeout: float = 900) -> Iterator[None]:
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test run held {LOCK_PATH} for {timeout:.0f} s")
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    binary = _pcscd_binary()
    if binary is None:
        _unavailable("pcscd is not installed (apt-get install pcscd)")
    if not VPCD_DRIVER.exists():
        _unavailable("the vsmartcard vpcd reader driver is not installed (apt-get install vsmartcard-vpcd)")
    assert binary is not None
    with _machine_lock():
        proc: subprocess.Popen[bytes] | None = None
        if not _daemon_running():
            if os.geteuid() != 0:
                _unavailable("pcscd is not running and starting it needs root")
            workdir = tmp_path_factory.mktemp("pcscd")
            conf = workdir / "reader.conf.d"
            conf.mkdir()
            (conf / "kms-agent-vpcd").write_text(
                f'FRIENDLYNAME "{READER_BASE}"\nDEVICENAME   /dev/null:0x{VPCD_PORT:04X}\n'
                f"LIBPATH      {VPCD_DRIVER}\nCHANNELID    0x{VPCD_PORT:04X}\n"
            )
            log = open(workdir / "pcscd.log", "wb")  # noqa: SIM115 - lives as long as the daemon
            started = time.monotonic()
            proc = subprocess.Popen(
                [binary, "--foreground", "--config", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
            if not _wait(lambda: proc.poll() is not None or len(_vpcd_readers()) >= 1, 15):
                proc.kill()
                _unavailable("pcscd started but shows no vpcd reader")
            if proc.poll() is not None:
                _unavailable(f"pcscd exited at start: {(workdir / 'pcscd.log').read_text()[-500:]}")
            TIMINGS["pcscd_start"].append(time.monotonic() - started)
        readers = sorted(_vpcd_readers())
        if not readers:
            _unavailable("the running pcscd has no vpcd reader (is vsmartcard-vpcd configured?)")
        transport = "usb" if "yubico yubikey" in readers[0].lower() else "nfc"
        try:
            yield Pcscd(readers[0], readers[1] if len(readers) > 1 else None, VPCD_PORT, transport, proc is not None)
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def reader_serial(reader: str) -> int | None:
    """Serial of the PIV card in ``reader`` (None if empty or not answering)."""
    from yubikit.piv import PivSession

    from agent.tokens.pcsc import PcscConnection

    try:
        conn = PcscConnection(reader)
    except Exception:
        return None
    try:
        return PivSession(conn).get_serial()
    except Exception:
        return None
    finally:
        conn.close()


def reader_empty(reader: str) -> bool:
    """pcscd's *event handler* has seen the reader empty (SCardGetStatusChange).

    Not "SCardConnect fails": that can say "no card" before the event handler has polled, and a
    card inserted in that gap is never noticed by pcscd (its state goes present -> present).
    """
    from smartcard.scard import (
        SCARD_S_SUCCESS,
        SCARD_SCOPE_USER,
        SCARD_STATE_EMPTY,
        SCARD_STATE_UNAWARE,
        SCardEstablishContext,
        SCardGetStatusChange,
        SCardReleaseContext,
    )

    rc, context = SCardEstablishContext(SCARD_SCOPE_USER)
    if rc != SCARD_S_SUCCESS:
        return False
    try:
        rc, states = SCardGetStatusChange(context, 0, [(reader, SCARD_STATE_UNAWARE)])
        return rc == SCARD_S_SUCCESS and bool(states[0][1] & SCARD_STATE_EMPTY)
    finally:
        SCardReleaseContext(context)


@dataclass
class ServedCard:
    """A simulated PIV card sitting in a vpcd reader of the test pcscd."""

    home: Path
    name: str
    serial: int
    reader: str
    card: object
    #: Put one zero-argument callable here to decide touches instead of KMS_AGENT_SIM_TOUCH.
    touch_override: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def spec(self) -> str:
        return f"piv:{self.serial}"


def reader_has_piv(reader: str) -> bool:
    """The card in ``reader`` answers SELECT PIV (for cards with no YubiKey serial to wait for)."""
    from agent.tokens.inventory import list_piv_cards

    return any(c.reader == reader for c in list_piv_cards())


@contextlib.contextmanager
def serve_sim_card(
    env: Pcscd,
    home: Path,
    name: str,
    *,
    slot: int = 0,
    serial: int | None = None,
    quirks: tuple[str, ...] = (),
) -> Iterator[ServedCard]:
    """Create a fresh simulated card under ``home`` (with ``quirks``) and keep it in vpcd slot ``slot``."""
    from agent.tokens.sim import vpcd
    from agent.tokens.sim.piv_card import ATR_NFC, ATR_USB, PivCard
    from agent.tokens.sim.piv_state import create_piv_sim
    from agent.tokens.sim.touch import TouchResult, env_touch

    reader = env.reader if slot == 0 else env.reader2
    assert reader is not None, "pcscd has only one vpcd slot"
    if not _wait(lambda: reader_empty(reader), 3):
        pytest.fail(
            f"{reader!r} already holds a card: is another virtual card (kms-agent sim pcsc, vicc) "
            f"connected to vpcd port {env.port + slot}?"
        )
    state = create_piv_sim(home, name, serial=serial, quirks=quirks)
    served = ServedCard(home, name, state.read().serial, reader, None)

    def touch(card_name: str, stop: threading.Event) -> TouchResult:
        return served.touch_override[0]() if served.touch_override else env_touch(card_name, stop)

    card = PivCard(state, touch=touch, atr=ATR_USB if env.transport == "usb" else ATR_NFC)
    served.card = card
    stop, connected = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=vpcd.serve_card, args=(card, stop), kwargs={"port": env.port + slot, "connected": connected}, daemon=True
    )
    thread.start()
    try:
        if not connected.wait(10):
            pytest.fail(f"the vpcd reader {reader!r} does not accept the simulated card (port {env.port + slot})")
        plugged = time.monotonic()
        present = (lambda: reader_has_piv(reader)) if "not-yubikey" in quirks else None
        if not _wait(present or (lambda: reader_serial(reader) == served.serial), 10):
            pytest.fail(f"pcscd did not see the simulated card in {reader!r} within 10 s")
        TIMINGS["card_insert"].append(time.monotonic() - plugged)
        yield served
    finally:
        stop.set()
        thread.join(5)
        gone = time.monotonic()
        if _wait(lambda: reader_empty(reader), 10):
            TIMINGS["card_remove"].append(time.monotonic() - gone)


@pytest.fixture
def served_card(pcscd: Pcscd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServedCard]:
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "auto")
    home = tmp_path / "kms"
    home.mkdir(mode=0o700)
    with serve_sim_card(pcscd, home, "card") as served:
        yield served


@pytest.fixture
def pin_prompts() -> Prompts:
    return Prompts()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = {k: v for k, v in TIMINGS.items() if v}
    if figures:
        terminalreporter.section("PC/SC timings")
        for key, values in figures.items():
            terminalreporter.write_line(
                f"{key}: n={len(values)} min={min(values):.3f}s max={max(values):.3f}s "
                f"mean={sum(values) / len(values):.3f}s"
            )
