"""The public helpers around the simulated token's state file."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest
from fido2.ctap2 import Ctap2

import agent.tokens.sim as sim
from agent.errors import TokenNotFound, UsageError
from agent.tokens.sim.state import SimStateFile

from .conftest import OpenDevice, make_credential


def test_exported_members() -> None:
    assert set(sim.__all__) == {
        "FixedTouch",
        "TouchProvider",
        "TouchResult",
        "create_sim_token",
        "list_sim_hid_devices",
        "open_sim_hid_device",
        "set_plugged",
        "sim_pin",
        "sim_token_exists",
        "sim_token_identity",
        "sim_token_names",
        "create_piv_sim",
        "list_piv_sims",
        "piv_sim_pin",
        "simulated_pin",
    }


def test_create_is_idempotent_and_private(home: Path) -> None:
    path = sim.create_sim_token(home, "alice")
    assert path == home / "sim" / "alice.fido2.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    before = path.read_bytes()
    assert sim.create_sim_token(home, "alice", pin="999999") == path
    assert path.read_bytes() == before
    assert sim.sim_pin(home, "alice") == "123456"
    assert sim.create_sim_token(home, "bob", pin="4321") and sim.sim_pin(home, "bob") == "4321"
    assert sim.sim_token_names(home) == ["alice", "bob"]
    assert sim.sim_token_exists(home, "bob") and not sim.sim_token_exists(home, "carol")
    assert json.loads(path.read_text())["plugged"] is True


def test_state_stays_private_after_writes(home: Path, ctap: Ctap2) -> None:
    make_credential(ctap)
    path = home / "sim" / "alice.fido2.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["sign_count"] >= 1
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name", ["", "a/b", "x" * 33, "sim:alice", "ä", "a b"])
def test_bad_names(home: Path, name: str) -> None:
    with pytest.raises(UsageError):
        sim.create_sim_token(home, name)
    with pytest.raises(UsageError):
        sim.open_sim_hid_device(home, name)


def test_bad_pin(home: Path) -> None:
    with pytest.raises(UsageError):
        sim.create_sim_token(home, "alice", pin="123")


def test_missing_and_unplugged_tokens(home: Path, open_device: OpenDevice) -> None:
    with pytest.raises(TokenNotFound):
        sim.open_sim_hid_device(home, "nobody")
    with pytest.raises(TokenNotFound):
        sim.set_plugged(home, "nobody", True)
    open_device("alice")
    open_device("bob")
    sim.set_plugged(home, "bob", False)
    with pytest.raises(TokenNotFound, match="unplugged"):
        sim.open_sim_hid_device(home, "bob")
    devices = sim.list_sim_hid_devices(home)
    try:
        assert [d.descriptor.path for d in devices] == ["sim:alice"]
    finally:
        for dev in devices:
            dev.close()
    assert sim.sim_token_names(home) == ["alice", "bob"]


def test_concurrent_writers_do_not_lose_updates(home: Path) -> None:
    sim.create_sim_token(home, "alice")
    store = SimStateFile(home, "alice")

    def bump() -> None:
        for _ in range(20):
            with store.transaction() as state:
                state.sign_count += 1

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read().sign_count == 80
