"""Operators, tokens and quorum change with a new data key; withdrawals keep being signed in between."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.cli.context import Paths
from agent.errors import KmsAgentError
from agent.vault.vault import UnlockedVault
from tests.conftest import AutoPrompts, Cli, init_args
from tests.rotation.helpers import facts, open_copy, ops, pinned

COLD = "0x00000000000000000000000000000000000c01D0"


@pytest.fixture
def ready(cli: Cli, home: Path) -> dict[str, Any]:
    from agent.chains.evm import ETH
    from agent.policy import AssetLimits, Policy, Rule, UnknownDestination

    cli.json(*init_args())
    sig = cli.json("wallet", "generate", "ETH", "--testnet", *ops("alice", "bob"))["wallets"][0]["signatureId"]
    policy = Policy(
        generation=2,
        default=Rule(
            approvals_required=2,
            allowlist=frozenset([COLD]),
            assets={"ETH": AssetLimits(per_tx=10**18, per_hour=None, per_day=None)},
            unknown_destination=UnknownDestination.DENY,
        ),
        admin_approvals=2,
    )
    (home / "policy.json").write_text(json.dumps(policy.to_dict()))
    cli.json("policy", "set", str(home / "policy.json"), *ops("alice", "bob"))

    def request(nonce: int) -> str:
        tx = ETH.build_transfer(to=COLD, value=10**16, nonce=nonce, chain_id=11155111, max_fee_per_gas=10**10)
        rid: str = cli.json("request", "create", "ETH", sig, "0", "--tx", str(tx), "--initiator", "app:x")["id"]
        return rid

    return {"sig": sig, "request": request, "facts": facts(cli, [sig])}


def _state(home: Path) -> dict[str, bytes]:
    """wallet.dat, its pin, the audit log and the queue: what bad input must leave byte-identical."""
    paths = Paths(home)
    files = [paths.vault, paths.pin, *sorted(paths.state.glob("*.sqlite*"))]
    return {str(p): p.read_bytes() for p in files if p.is_file()}


def test_removing_an_operator_locks_their_token_out_of_every_later_file(
    cli: Cli, home: Path, ready: dict[str, Any], tmp_path: Path
) -> None:
    paths = Paths(home)
    before = tmp_path / "wallet-before.dat"
    shutil.copy2(paths.vault, before)
    rid = ready["request"](0)
    assert cli.json("approve", rid, "--operator", "carol")["status"] == "pending"

    state = _state(home)
    for bad, code in [
        (["operator", "remove", "dave"], 2),
        (["operator", "remove", "carol", "--quorum", "3"], 2),
        (["operator", "quorum", "4"], 2),
        (["operator", "quorum", "0"], 2),
        (["operator", "add", "alice", "--token", "sim:alice9"], 2),
        (["token", "remove", "sim:nobody"], 3),
        (["token", "remove", "sim:alice"], 2),  # her last token
    ]:
        out = cli(*bad, "--json", *ops("alice", "bob"))
        assert out.returncode == code, (bad, out.stderr)
        assert json.loads(out.stdout)["error"]["message"]
    assert _state(home) == state

    removed = cli.json("operator", "remove", "carol", *ops("alice", "bob"))
    assert removed["quorum"] == 2 and [o["name"] for o in removed["operators"]] == ["alice", "bob"]
    assert removed["dropped"] == ["sim:carol"]
    assert facts(cli, [ready["sig"]]) == ready["facts"]

    # carol's approval given before the removal no longer counts: alice alone does not sign.
    assert cli.json("approve", rid, "--operator", "alice")["status"] == "pending"
    signed = cli.json("approve", rid, *ops("bob", "alice"))
    assert signed["status"] == "signed"

    # carol's token opens nothing later; the copy made before still opens with it (docs/operations.md).
    assert cli("unlock", *ops("carol", "alice")).returncode == 2
    prompts = AutoPrompts(home)
    with pytest.raises(KmsAgentError):
        open_copy(home, paths.vault, prompts, ["carol", "alice"])
    with open_copy(home, before, prompts, ["carol", "alice"]) as old:
        assert {o.name for o in old.header.operators} == {"alice", "bob", "carol"}
        with pytest.raises(KmsAgentError):
            UnlockedVault.open(pinned(home), bytearray(old.keys.dek), []).close()
    rows = [r for r in cli.json("audit", "show")["rows"] if r["kind"] == "unlock"]
    assert any(r["payload"].get("purpose") == "operator-remove" for r in rows)
    assert cli.json("audit", "verify")["ok"] is True


def test_quorum_2_of_3_to_3_of_4_and_back_with_withdrawals_in_between(
    cli: Cli, home: Path, ready: dict[str, Any]
) -> None:
    added = cli.json("operator", "add", "dave", "--token", "sim:dave", "--quorum", "3", *ops("alice", "bob"))
    assert added["quorum"] == 3 and [o["name"] for o in added["operators"]][-1] == "dave"
    assert cli("unlock", *ops("alice", "bob")).returncode == 5  # two no longer open it
    assert cli("unlock", *ops("alice", "bob", "dave")).returncode == 0
    signed = cli.json("approve", ready["request"](0), *ops("alice", "dave", "carol"))
    assert signed["status"] == "signed"

    back = cli.json("operator", "quorum", "2", *ops("alice", "bob", "carol"))
    assert back["quorum"] == 2 and len(back["operators"]) == 4
    gone = cli.json("operator", "remove", "dave", *ops("bob", "carol"))
    assert gone["quorum"] == 2 and [o["name"] for o in gone["operators"]] == ["alice", "bob", "carol"]
    assert cli.json("approve", ready["request"](1), *ops("bob", "carol"))["status"] == "signed"
    assert facts(cli, [ready["sig"]]) == ready["facts"]
    assert cli.json("audit", "verify")["ok"] is True


def test_token_removal_rotates_and_an_absent_token_is_named_or_dropped(
    cli: Cli, home: Path, ready: dict[str, Any]
) -> None:
    from agent.tokens.sim.state import SUFFIX

    assert cli("token", "enrol", "sim:alice2", "--owner", "alice", *ops("alice", "bob")).returncode == 0
    out = cli.json("token", "remove", "sim:alice2", *ops("alice", "bob"))
    assert out["removed"] == "sim:alice2" and out["dropped"] == ["sim:alice2"]
    assert "sim:alice2" not in [s.label for s in pinned(home).header.slots]

    (home / "sim" / f"bob{SUFFIX}").unlink()  # bob's only token is lost
    state = _state(home)
    absent = cli("vault", "rotate-key", *ops("alice", "carol"))
    assert absent.returncode == 3 and "sim:bob" in absent.stderr and "--drop-absent" in absent.stderr
    bare = cli("vault", "rotate-key", "--drop-absent", *ops("alice", "carol"))
    assert bare.returncode == 2 and "bob would be left without a token" in bare.stderr
    assert _state(home) == state

    assert cli("token", "enrol", "sim:bob2", "--owner", "bob", *ops("alice", "carol")).returncode == 0
    rotated = cli.json("vault", "rotate-key", "--drop-absent", *ops("alice", "carol"))
    assert rotated["dropped"] == ["sim:bob"]
    assert cli("unlock", *ops("bob", "alice")).returncode == 0
    assert cli.json("vault", "verify")["fingerprint"] == rotated["fingerprint"]
    assert facts(cli, [ready["sig"]]) == ready["facts"]
