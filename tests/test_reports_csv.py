"""Reports: CSV cells that a spreadsheet would run as formulas are neutralised, free text is escaped."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from agent.chains import get_chain
from agent.chains.evm import EvmChain
from agent.cli.context import Paths
from agent.policy import AssetLimits, Policy, Rule, UnknownDestination
from agent.reports import anomalies_report, csv_cell, withdrawals_report, write_csv
from agent.tokens.discovery import find_token
from agent.withdrawals.service import Withdrawals
from tests.conftest import AutoPrompts
from tests.vault.helpers import make_vault
from tests.withdrawals.helpers import add_eth_wallet

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
COLD = "0x00000000000000000000000000000000000c01d0"


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("app:exchange", "app:exchange"),
        ("a=b", "a=b"),
        (12345, "12345"),
        (None, ""),
        ("", ""),
    ],
)
def test_csv_cell(value: object, cell: str) -> None:
    assert csv_cell(value) == cell


def test_write_csv_neutralises_every_cell_and_keeps_the_rest() -> None:
    rows = [
        {"id": "r1", "initiator": "=cmd|' /C calc'!A0", "amount": "100"},
        {"id": "r2", "initiator": "app:ok", "fee": "-5"},
    ]
    out = io.StringIO()
    write_csv(rows, out)
    parsed = list(csv.reader(io.StringIO(out.getvalue())))
    assert parsed == [
        ["id", "initiator", "amount", "fee"],
        ["r1", "'=cmd|' /C calc'!A0", "100", ""],
        ["r2", "app:ok", "", "'-5"],
    ]


def test_reports_escape_free_text_and_csv_neutralises_formulas(home: Path, prompts: AutoPrompts) -> None:
    make_vault(home, prompts)
    eth = get_chain("ETH")
    assert isinstance(eth, EvmChain)
    entry = add_eth_wallet(home, prompts)
    service = Withdrawals(home)
    policy = Policy(
        generation=2,
        default=Rule(
            allowlist=frozenset([COLD]),
            assets={"ETH": AssetLimits(per_tx=10**18)},
            unknown_destination=UnknownDestination.DENY,
        ),
    )
    service.change_policy(
        policy, finder=lambda slot: find_token(slot, home), prompts=prompts, operators=["alice", "bob"]
    )
    tx = eth.build_transfer(to=COLD, value=10**16, nonce=0, chain_id=11155111, max_fee_per_gas=30 * 10**9)
    rec = service.create(
        chain="ETH", signature_id=entry.signature_id, index=0, tx=tx, initiator="app:x\x1b[2K\u202efake"
    )
    service.reject(rec.request_id, operator="carol", reason='=HYPERLINK("http://evil","click")\x1b[1A')

    rows = withdrawals_report(Paths.resolve(home))
    assert [r["initiator"] for r in rows] == ["app:x\\x1b[2K\\u202efake"]
    anomalies = [r for r in anomalies_report(Paths.resolve(home)) if r["kind"] == "rejection"]
    assert [r["detail"] for r in anomalies] == ['=HYPERLINK("http://evil","click")\\x1b[1A']
    out = io.StringIO()
    write_csv(rows + anomalies, out)
    assert "\x1b" not in out.getvalue() and "\u202e" not in out.getvalue()
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert parsed[1]["detail"] == "'" + anomalies[0]["detail"]
    assert parsed[0]["initiator"] == rows[0]["initiator"]
