"""Withdrawals through the CLI, as operators and scripts drive them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import Cli, init_args

COLD = "0x00000000000000000000000000000000000c01D0"


@pytest.fixture
def ready(cli: Cli, home: Path) -> dict:  # type: ignore[type-arg]
    from agent.chains.evm import ETH
    from agent.policy import AssetLimits, Policy, Rule, UnknownDestination

    cli.json(*init_args())
    wallet = cli.json("wallet", "generate", "ETH", "--testnet")["wallets"][0]
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
    changed = cli.json("policy", "set", str(home / "policy.json"), "--operator", "alice", "--operator", "bob")
    assert changed["generation"] == 2 and changed["approved_by"] == ["alice", "bob"]

    def tx(value: int, nonce: int = 0) -> str:
        return str(ETH.build_transfer(to=COLD, value=value, nonce=nonce, chain_id=11155111, max_fee_per_gas=10**10))

    return {"sig": wallet["signatureId"], "tx": tx}


def test_free_text_reaches_the_approver_escaped(cli: Cli, ready: dict) -> None:  # type: ignore[type-arg]
    # An ANSI sequence that would erase the line and draw a fake amount in a terminal.
    trick = "app:x\x1b[2K\r  pay 0.001 ETH to 0x00000000000000000000000000000000000c01D0"
    req = cli.json("request", "create", "ETH", ready["sig"], "0", "--tx", ready["tx"](9 * 10**17), "--initiator", trick)
    shown = cli("request", "show", req["id"])
    assert "\x1b" not in shown.stdout + shown.stderr  # no raw escape reaches the terminal...
    assert "\\x1b[2K" in shown.stdout  # ...it is shown, visibly escaped
    assert "pay 0.9 ETH (900000000000000000 wei)" in shown.stdout


def test_request_approve_sign(cli: Cli, ready: dict) -> None:  # type: ignore[type-arg]
    req = cli.json("request", "create", "ETH", ready["sig"], "0", "--tx", ready["tx"](10**16), "--initiator", "app:x")
    assert req["status"] == "pending"
    assert req["summary"]["outputs"][0]["address"] == COLD
    shown = cli("request", "show", req["id"])
    assert "pay 0.01 ETH (10000000000000000 wei) to 0x00000000000000000000000000000000000c01D0" in shown.stdout
    first = cli.json("approve", req["id"], "--operator", "carol")
    assert first["status"] == "pending" and len(first["approvals"]) == 1
    # alice completes the quorum; carol touches again to open the vault (no agent holds her share)
    signed = cli.json("approve", req["id"], "--operator", "alice", "--operator", "carol")
    assert signed["status"] == "signed" and signed["signed"]["raw"].startswith("0x02")
    audit = cli.json("audit", "verify")
    assert audit["ok"] is True and audit["approvals_checked"] >= 4
    rows = cli.json("audit", "show", "--request", req["id"])["rows"]
    assert rows[0]["payload"]["tx"] == ready["tx"](10**16).removeprefix("0x")  # the full payload is logged
    report = json.loads(cli("report", "withdrawals", "--format", "json").stdout)["rows"]
    assert report[0]["status"] == "signed" and report[0]["approved_by"] == "carol,alice"
    again = cli.json("request", "create", "ETH", ready["sig"], "0", "--tx", ready["tx"](10**16, 1))
    new = [r for r in cli.json("report", "anomalies")["rows"] if r["kind"] == "new-destination"]
    assert [r["request"] for r in new] == [req["id"]]  # the second payment to COLD is not new
    assert again["id"] != req["id"]


def test_denied_request_exits_5_and_shows_in_anomalies(cli: Cli, ready: dict) -> None:  # type: ignore[type-arg]
    proc = cli("request", "create", "ETH", ready["sig"], "0", "--tx", ready["tx"](2 * 10**18))
    assert proc.returncode == 5 and "denied by policy" in proc.stderr and "per-transaction limit" in proc.stderr
    anomalies = json.loads(cli("report", "anomalies", "--format", "json").stdout)["rows"]
    assert anomalies[0]["kind"] == "policy-deny"
    csv_out = cli("report", "anomalies", "--format", "csv").stdout.splitlines()
    assert csv_out[0].startswith("day,kind,request,detail")
    assert cli("unlock", "--operator", "alice").returncode == 5  # a failed unlock is an anomaly too
    kinds = [r["kind"] for r in json.loads(cli("report", "anomalies", "--format", "json").stdout)["rows"]]
    assert "failed-unlock" in kinds
    page = cli("report", "anomalies", "--format", "html").stdout
    assert page.startswith("<!doctype html>") and "<svg" in page and "policy-deny" in page


def test_reject_is_a_veto(cli: Cli, ready: dict) -> None:  # type: ignore[type-arg]
    req = cli.json("request", "create", "ETH", ready["sig"], "0", "--tx", ready["tx"](10**16))
    assert cli.json("reject", req["id"], "--operator", "bob", "--reason", "unexpected")["status"] == "rejected"
    proc = cli("approve", req["id"])
    assert proc.returncode == 5 and "rejected" in proc.stderr


@pytest.mark.parametrize("edit", ["update", "delete"])
def test_editing_or_deleting_an_audit_row_is_detected(cli: Cli, ready: dict, home: Path, edit: str) -> None:  # type: ignore[type-arg]
    cli.json("request", "create", "ETH", ready["sig"], "0", "--tx", ready["tx"](10**16))
    db = sqlite3.connect(home / "state" / "audit.sqlite")
    with db:
        # The append-only triggers stop accidents, not an attacker with write access to the file.
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            db.execute(f"DROP TRIGGER {name}")
        if edit == "update":
            db.execute("UPDATE audit_log SET payload = replace(payload, 'app', 'ApP') WHERE seq = 2")
            db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
        else:
            db.execute("DELETE FROM audit_log WHERE seq = 3")
    db.close()
    proc = cli("audit", "verify")
    assert proc.returncode == 9
    assert "audit log verification failed at row" in proc.stderr


def test_malformed_request_is_refused_cleanly(cli: Cli, ready: dict, home: Path) -> None:  # type: ignore[type-arg]
    for bad in ("zz-not-hex", "0x02deadbeef"):
        proc = cli("request", "create", "ETH", ready["sig"], "0", "--tx", bad)
        assert proc.returncode in (2, 8), proc.stderr
        assert "Traceback" not in proc.stderr
    assert cli.json("request", "list")["requests"] == []
    proc = cli("request", "create", "DOGE", ready["sig"], "0", "--tx", ready["tx"](1))
    assert proc.returncode == 2 and "ETH wallet" in proc.stderr


def test_sweep_to_cold_wallet_is_one_command(cli: Cli, ready: dict) -> None:  # type: ignore[type-arg]
    out = cli.json(
        "sweep",
        ready["sig"],
        "--to",
        COLD,
        "--balance",
        str(5 * 10**17),
        "--nonce",
        "7",
        "--max-fee-per-gas",
        str(10**10),
        "--request",
    )
    outputs = out["summary"]["outputs"]
    assert outputs[0]["address"] == COLD and int(outputs[0]["amount"]) + int(out["summary"]["fee"]) == 5 * 10**17
    assert out["summary"]["nonce"] == 7
    signed = cli.json("approve", out["request"], "--operator", "alice", "--operator", "bob")
    assert signed["status"] == "signed"


def test_btc_sweep_builds_a_psbt(cli: Cli, home: Path) -> None:
    cli.json(*init_args())
    wallet = cli.json("wallet", "generate", "BTC", "--testnet")["wallets"][0]
    coins = [
        {"txid": "11" * 32, "vout": 0, "amount": 40_000, "index": 0},
        {"txid": "22" * 32, "vout": 1, "amount": 60_000, "index": 3},
    ]
    (home / "utxos.json").write_text(json.dumps(coins))
    cold = "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"
    out = cli.json("sweep", wallet["signatureId"], "--to", cold, "--utxos", str(home / "utxos.json"), "--fee-rate", "2")
    summary = out["summary"]
    assert [o["address"] for o in summary["outputs"]] == [cold]
    assert int(summary["outputs"][0]["amount"]) + int(summary["fee"]) == 100_000
    assert len(summary["inputs"]) == 2


def test_intents_become_unsigned_transactions(cli: Cli, ready: dict) -> None:  # type: ignore[type-arg]
    req = cli.json(
        "request",
        "create",
        "ETH",
        ready["sig"],
        "0",
        "--to",
        COLD,
        "--amount",
        str(10**16),
        "--nonce",
        "4",
        "--max-fee-per-gas",
        str(10**10),
    )
    assert req["status"] == "pending" and req["summary"]["nonce"] == 4
    [output] = req["summary"]["outputs"]
    assert (output["address"], output["amount"], output["isChange"]) == (COLD, str(10**16), False)
    # An ERC-20 intent: the contract is the tx's `to`, but policy judges the real recipient in the calldata.
    token = "0x00000000000000000000000000000000000000aa"
    proc = cli(
        "request",
        "create",
        "ETH",
        ready["sig"],
        "0",
        "--to",
        "0x000000000000000000000000000000000000bad0",
        "--amount",
        "5",
        "--asset",
        token,
        "--nonce",
        "5",
        "--max-fee-per-gas",
        str(10**10),
    )
    assert proc.returncode == 5 and "0x000000000000000000000000000000000000bad0" in proc.stderr.lower()


def test_btc_intent_with_change(cli: Cli, home: Path) -> None:
    cli.json(*init_args())
    wallet = cli.json("wallet", "generate", "BTC", "--testnet")["wallets"][0]
    (home / "utxos.json").write_text(json.dumps([{"txid": "33" * 32, "vout": 0, "amount": 80_000, "index": 0}]))
    proc = cli(
        "request",
        "create",
        "BTC",
        wallet["signatureId"],
        "0",
        "--to",
        "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",
        "--amount",
        "30000",
        "--utxos",
        str(home / "utxos.json"),
        "--fee-rate",
        "3",
        "--json",
    )
    assert proc.returncode == 5  # a fresh vault's policy lets no asset leave until a quorum sets limits
    request = json.loads(cli("request", "list", "--json").stdout)["requests"][0]
    outputs = request["summary"]["outputs"]
    assert [o["isChange"] for o in outputs] == [False, True]
    assert outputs[1]["address"] == cli.json("wallet", "address", wallet["signatureId"], "1")["address"]
    assert int(outputs[0]["amount"]) + int(outputs[1]["amount"]) + int(request["summary"]["fee"]) == 80_000


def test_generated_btc_private_key_wallet_signs(cli: Cli, home: Path) -> None:
    """A private-key wallet is stored in Tatum's text form (WIF for BTC) and signs a PSBT."""
    from agent.chains import get_chain
    from agent.chains.utxo import Utxo
    from agent.policy import AssetLimits, Policy, Rule

    cli.json(*init_args())
    wallet = cli.json("wallet", "generate", "BTC", "--testnet", "--private-key")["wallets"][0]
    assert wallet["address"].startswith("tb1q")
    policy = Policy(
        generation=2,
        default=Rule(approvals_required=2, assets={"BTC": AssetLimits(per_tx=10**8, per_hour=None, per_day=None)}),
        admin_approvals=2,
    )
    (home / "policy.json").write_text(json.dumps(policy.to_dict()))
    cli.json("policy", "set", str(home / "policy.json"))
    btc = get_chain("BTC")
    psbt = btc.build_psbt([Utxo("44" * 32, 0, 20_000, wallet["address"])], [(wallet["address"], 19_000)], testnet=True)  # type: ignore[attr-defined]
    req = cli.json("request", "create", "BTC", wallet["signatureId"], "0", "--tx", psbt)
    assert cli.json("approve", req["id"])["status"] == "signed"
