"""A ready data directory (2-of-3 vault on simulated tokens, a Sepolia ETH wallet, a policy) and an agent on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AutoPrompts
from tests.service.agent_proc import AgentProcess, start_agent
from tests.withdrawals.helpers import Ready, ready_home


@pytest.fixture
def ready(home: Path, prompts: AutoPrompts) -> Ready:
    return ready_home(home, prompts)


@pytest.fixture
def agent(ready: Ready) -> Iterator[AgentProcess]:
    """``kms-agent serve --tcp 127.0.0.1:0`` on the ready directory; stopped (and checked to exit 0) after."""
    running = start_agent(ready.home)
    try:
        yield running
    finally:
        code = running.stop()
    assert code == 0, running.stderr
    assert "Traceback" not in running.stderr, running.stderr
