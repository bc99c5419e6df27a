"""In-process fixtures for the PIV card simulator and PivToken: no pcscd needed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from yubikit.core import TRANSPORT
from yubikit.core.smartcard import SmartCardConnection

from agent.tokens.sim.piv_card import SimPivConnection, open_sim_piv_connection
from agent.tokens.sim.piv_state import PivStateFile, create_piv_sim
from agent.tokens.sim.touch import TouchResult


class Recorder(SmartCardConnection):
    """Wraps a connection and keeps every C-APDU / SW that went through it."""

    def __init__(self, inner: SimPivConnection) -> None:
        self.inner = inner
        self.sent: list[bytes] = []
        self.sws: list[int] = []

    @property
    def transport(self) -> TRANSPORT:
        return self.inner.transport

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(bytes(apdu))
        data, sw = self.inner.send_and_receive(apdu)
        self.sws.append(sw)
        return data, sw

    def close(self) -> None:
        self.inner.close()


@dataclass
class Touches:
    """A touch provider for tests: answers from ``script`` (then ``default``), counting calls."""

    default: TouchResult = TouchResult.GRANTED
    script: list[TouchResult] = field(default_factory=list)
    delay: float = 0.0
    calls: int = 0

    def __call__(self, card_name: str, stop: threading.Event) -> TouchResult:
        self.calls += 1
        if self.delay:
            stop.wait(self.delay)
        return self.script.pop(0) if self.script else self.default


@dataclass
class SimCard:
    home: Path
    name: str
    state: PivStateFile
    touches: Touches

    @property
    def serial(self) -> int:
        return self.state.read().serial

    def connect(self, transport: TRANSPORT = TRANSPORT.USB, *, max_response: int = 65536) -> Recorder:
        return Recorder(
            open_sim_piv_connection(
                self.home, self.name, touch=self.touches, transport=transport, max_response=max_response
            )
        )


@pytest.fixture
def new_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., SimCard]:
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "auto")
    home = tmp_path / "kms"

    def make(name: str = "card", **kwargs: object) -> SimCard:
        state = create_piv_sim(home, name, **kwargs)  # type: ignore[arg-type]
        return SimCard(home, name, state, Touches())

    return make


@pytest.fixture
def card(new_card: Callable[..., SimCard]) -> SimCard:
    return new_card()


@pytest.fixture
def session_for(card: SimCard) -> Iterator[Callable[..., object]]:
    from yubikit.piv import PivSession

    opened: list[Recorder] = []

    def open_session(transport: TRANSPORT = TRANSPORT.USB, **kwargs: int) -> PivSession:
        conn = card.connect(transport, **kwargs)
        opened.append(conn)
        return PivSession(conn)

    yield open_session
    for conn in opened:
        conn.close()


@dataclass
class Prompts:
    """Answers the PIN prompt with ``pin`` and records the touch notices."""

    pin_value: str = "123456"
    touched: list[str] = field(default_factory=list)
    asked: list[int | None] = field(default_factory=list)

    def touch(self, token_label: str) -> None:
        self.touched.append(token_label)

    def pin(self, token_label: str, attempts_remaining: int | None) -> bytearray:
        self.asked.append(attempts_remaining)
        return bytearray(self.pin_value.encode())
