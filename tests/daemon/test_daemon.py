"""``kms-agent daemon`` end to end: the real CLI as a subprocess against a fake Tatum API on loopback.

The data directory holds a 2-of-3 vault of simulated tokens with a Sepolia ETH wallet, a testnet BTC
wallet and a policy that allows payments to one cold address per chain. The fake Tatum serves
pending ETH (web3 TransactionConfig) and BTC (bitcore JSON) transactions, records every request,
and completes a transaction once it is broadcast or reported, as Tatum does. Every claim is checked
in the audit log: one request per pending transaction, at most one signature, broadcast rows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.chains import get_chain
from agent.chains.utxo import AddressKind
from agent.policy import AssetLimits, Policy, Rule, UnknownDestination
from agent.tokens.discovery import find_token
from agent.withdrawals.service import Withdrawals
from tests.chains.utxo_helpers import make_coins
from tests.conftest import REPO, AutoPrompts
from tests.daemon.fake_tatum import API_KEY, FakeTatum, closed_port
from tests.vault.helpers import make_vault
from tests.withdrawals.helpers import MNEMONIC, add_eth_wallet, add_wallet

COLD = "0x00000000000000000000000000000000000c01d0"
ELSEWHERE = "0x000000000000000000000000000000000000beef"
COLD_BTC = "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"
SEPOLIA = 11155111
ETH: Any = get_chain("ETH")
BTC: Any = get_chain("BTC")


@dataclass(frozen=True)
class Template:
    home: Path
    eth_id: str
    btc_id: str


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """One vault for the module (simulated tokens, two wallets, a policy), copied for each test."""
    home = tmp_path_factory.mktemp("template") / "kms"
    home.mkdir(mode=0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KMS_AGENT_HOME", str(home))
        mp.setenv("KMS_AGENT_SIM_TOUCH", "auto")
        prompts = AutoPrompts(home)
        make_vault(home, prompts)
        eth_entry = add_eth_wallet(home, prompts)
        btc_entry = add_wallet(home, prompts, "BTC")
        policy = Policy(
            generation=2,
            default=Rule(
                approvals_required=2,
                allowlist=frozenset([ETH.normalize_address(COLD, testnet=True), COLD_BTC]),
                assets={
                    "ETH": AssetLimits(per_tx=10**18, per_hour=None, per_day=None),
                    "BTC": AssetLimits(per_tx=10**8, per_hour=None, per_day=None),
                },
                unknown_destination=UnknownDestination.DENY,
            ),
            admin_approvals=2,
        )
        Withdrawals(home).change_policy(
            policy, finder=lambda slot: find_token(slot, home), prompts=prompts, operators=["alice", "bob"]
        )
    return Template(home, eth_entry.signature_id, btc_entry.signature_id)


@dataclass
class Env:
    home: Path
    eth_id: str
    btc_id: str
    fake: FakeTatum
    scratch: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KMS_AGENT_", "TATUM_"))}
        env.update(
            KMS_AGENT_HOME=str(self.home),
            KMS_AGENT_SIM_TOUCH="auto",
            TATUM_API_URL=self.fake.url,
            TATUM_API_KEY=API_KEY,
            HOME=str(self.scratch),  # no ~/.tatumrc/.env of the machine's user
        )
        env.update(extra)
        return env

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            env=env or self.env(),
            cwd=REPO,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    def daemon(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.cli("daemon", "--testnet", "--runOnce", *args, env=env)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "daemon", "--testnet", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )

    # --- the audit log --------------------------------------------------------------------------
    def service(self) -> Withdrawals:
        return Withdrawals(self.home)

    def requests(self) -> dict[str, list[str]]:
        """pending id -> the request ids made for it."""
        out: dict[str, list[str]] = {}
        for row in self.service().audit.rows(kinds=["request"]):
            external = row.payload.get("external")
            if external and row.request_id:
                out.setdefault(external.removeprefix("tatum:"), []).append(row.request_id)
        return out

    def signatures(self, request_id: str) -> list[Any]:
        return self.service().audit.rows(kinds=["signature"], request_id=request_id)

    def broadcasts(self, request_id: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.service().audit.rows(kinds=["broadcast"], request_id=request_id)]

    # --- pending transactions -------------------------------------------------------------------
    def eth(self, pid: str, nonce: int, to: str = COLD, value: int = 10**16) -> None:
        config = {
            "from": ETH.address_from_xpub(ETH.xpub_from_mnemonic(MNEMONIC, testnet=True), 0, testnet=True),
            "to": to,
            "value": str(value),
            "gas": "21000",
            "maxFeePerGas": str(30 * 10**9),
            "maxPriorityFeePerGas": str(10**9),
            "nonce": nonce,
            "chainId": SEPOLIA,
        }
        self.fake.add(
            "ETH", {"id": pid, "serializedTransaction": json.dumps(config), "hashes": [self.eth_id], "index": 0}
        )

    def btc(self, pid: str) -> None:
        net = BTC.net(True)
        coin = make_coins(BTC, [(0, AddressKind.P2WPKH, 50_000)], testnet=True, salt=pid.encode())[0]
        change = BTC.script_from_address(
            BTC.address_from_xpub(BTC.xpub_from_mnemonic(MNEMONIC, testnet=True), 1, testnet=True), net
        )
        tx = {
            "version": 2,
            "inputs": [
                {
                    "prevTxId": coin.utxo.txid,
                    "outputIndex": coin.utxo.vout,
                    "sequenceNumber": 0xFFFFFFFD,
                    "script": "",
                    "output": {"satoshis": 50_000, "script": coin.spk.hex()},
                }
            ],
            "outputs": [
                {"satoshis": 30_000, "script": BTC.script_from_address(COLD_BTC, net).hex()},
                {"satoshis": 19_000, "script": change.hex()},
            ],
            "nLockTime": 0,
            "changeScript": change.hex(),
            "changeIndex": 1,
            "fee": 1000,
        }
        self.fake.add(
            "BTC",
            {
                "id": pid,
                "serializedTransaction": json.dumps(tx),
                "hashes": [],
                "signatures": [{"id": self.btc_id, "index": 0}],
            },
        )


@pytest.fixture
def env(template: Template, tmp_path: Path) -> Iterator[Env]:
    home = tmp_path / "kms"
    shutil.copytree(template.home, home, symlinks=True)
    scratch = tmp_path / "user"
    scratch.mkdir()
    with FakeTatum() as fake:
        yield Env(home, template.eth_id, template.btc_id, fake, scratch)


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # --runOnce: one pass, one JSON line
    out: dict[str, Any] = json.loads(lines[0])
    return out


OPERATORS = ("--operator", "alice", "--operator", "bob")

# --- tests ------------------------------------------------------------------------------------------


def test_approved_transactions_are_signed_and_broadcast_and_a_denied_one_is_reported(env: Env) -> None:
    from eth_account import Account

    env.eth("e0000000000000000000000a", nonce=0)
    env.eth("e0000000000000000000000b", nonce=1, to=ELSEWHERE)  # not on the allowlist: denied
    env.btc("b0000000000000000000000c")
    proc = env.daemon("--externalUrl", env.fake.external_url, *OPERATORS, "--json")
    got = summary(proc)
    assert {k: got[k] for k in ("pending", "created", "signed", "broadcast", "reported", "errors")} == {
        "pending": 3,
        "created": 3,
        "signed": 2,
        "broadcast": 2,
        "reported": 1,
        "errors": [],
    }, proc.stderr
    assert "Traceback" not in proc.stderr and API_KEY not in proc.stderr

    polls = env.fake.seen("/v3/kms/pending/")
    assert {p.path for p in polls} >= {"/v3/kms/pending/ETH", "/v3/kms/pending/BTC"}
    by_chain = {p.path.rsplit("/", 1)[1]: p for p in polls}
    assert by_chain["ETH"].body == {"signatureIds": [env.eth_id]}
    assert by_chain["BTC"].body == {"signatureIds": [env.btc_id]}
    assert all(p.headers["x-api-key"] == API_KEY and p.headers["x-ttm-kms-client-version"] for p in polls)

    requests = env.requests()
    assert sorted(requests) == ["b0000000000000000000000c", "e0000000000000000000000a", "e0000000000000000000000b"]
    assert all(len(ids) == 1 for ids in requests.values())
    service = env.service()
    eth_req = service.request(requests["e0000000000000000000000a"][0])
    btc_req = service.request(requests["b0000000000000000000000c"][0])
    denied = service.request(requests["e0000000000000000000000b"][0])
    assert (eth_req.status.value, btc_req.status.value, denied.status.value) == ("signed", "signed", "denied")
    assert eth_req.initiator == "app:tatum-daemon"
    assert eth_req.signed is not None and btc_req.signed is not None
    assert Account.recover_transaction(eth_req.signed.raw) == ETH.address_from_xpub(
        ETH.xpub_from_mnemonic(MNEMONIC, testnet=True), 0, testnet=True
    )
    assert env.signatures(denied.request_id) == []

    (eth_cast,) = env.fake.seen("/v3/ethereum/broadcast")
    (btc_cast,) = env.fake.seen("/v3/bitcoin/broadcast")
    assert eth_cast.body == {"txData": eth_req.signed.raw, "signatureId": "e0000000000000000000000a"}
    assert btc_cast.body == {"txData": btc_req.signed.raw, "signatureId": "b0000000000000000000000c"}
    (report,) = env.fake.seen("/v3/tatum/kms/batch")
    (error,) = report.body["errors"]
    assert error["signatureId"] == "e0000000000000000000000b"
    assert f"kms-agent request {denied.request_id} is denied: [allowlist]" in error["error"]
    for req in (eth_req, btc_req):
        (row,) = env.broadcasts(req.request_id)
        assert (row["via"], row["outcome"], row["http_status"], row["attempt"]) == ("tatum", "accepted", 200, 1)
        assert req.signed is not None
        assert row["txid"] == req.signed.txid and row["url"].startswith(env.fake.url + "/v3/")
    assert env.fake.still_pending() == set()
    # each transaction was checked with the external system before it was created and before approval
    assert len(env.fake.seen("/external/e0000000000000000000000a")) == 2

    again = summary(env.daemon("--externalUrl", env.fake.external_url, *OPERATORS, "--json"))
    assert (again["pending"], again["created"], again["signed"], again["broadcast"]) == (0, 0, 0, 0)
    assert len(env.service().audit.rows(kinds=["signature"])) == 2


def test_without_operators_requests_wait_until_approved_then_the_next_pass_broadcasts(env: Env) -> None:
    env.eth("e0000000000000000000000a", nonce=0)
    got = summary(env.daemon("--json"))
    assert (got["created"], got["waiting"], got["signed"], got["broadcast"]) == (1, 1, 0, 0)
    (rid,) = env.requests()["e0000000000000000000000a"]
    assert env.service().request(rid).status.value == "pending"
    assert env.fake.seen("/v3/ethereum/broadcast") == [] and env.signatures(rid) == []

    got = summary(env.daemon("--operator", "alice", "--json"))  # one approver of the two the policy wants
    assert (got["existing"], got["signed"], got["waiting"]) == (1, 0, 1)
    assert len({a.operator_id for a in env.service().request(rid).approvals}) == 1
    assert env.signatures(rid) == []

    approved = env.cli("approve", rid, "--operator", "bob", "--operator", "carol")
    assert approved.returncode == 0, approved.stderr
    assert "Signed" in approved.stdout

    got = summary(env.daemon("--json"))
    assert (got["existing"], got["created"], got["broadcast"]) == (1, 0, 1)
    assert env.requests() == {"e0000000000000000000000a": [rid]}
    assert len(env.signatures(rid)) == 1
    assert [b.body["signatureId"] for b in env.fake.seen("/v3/ethereum/broadcast")] == ["e0000000000000000000000a"]


def test_run_once_filters_by_transaction_ids_and_wallets(env: Env) -> None:
    env.eth("e0000000000000000000000a", nonce=0)
    env.eth("e0000000000000000000000b", nonce=1)
    env.btc("b0000000000000000000000c")
    proc = env.cli("daemon", "--testnet", "--run-once", "--transaction-ids", "e0000000000000000000000b", "--json")
    assert summary(proc)["created"] == 1
    assert sorted(env.requests()) == ["e0000000000000000000000b"]
    assert "e0000000000000000000000a: skipped (not in --transactionIds)" in proc.stderr

    proc = env.daemon("--wallets", env.eth_id, "--json")
    got = summary(proc)
    assert (got["created"], got["existing"]) == (1, 1)
    assert sorted(env.requests()) == ["e0000000000000000000000a", "e0000000000000000000000b"]  # BTC not polled for
    assert env.fake.seen("/v3/kms/pending/BTC")[-1].body == {"signatureIds": [env.eth_id]}  # as Tatum: every chain


def test_a_failing_or_negative_external_url_blocks_signing(env: Env) -> None:
    env.eth("e0000000000000000000000a", nonce=0)
    env.eth("e0000000000000000000000b", nonce=1)
    env.btc("b0000000000000000000000c")
    env.fake.external.update({"e0000000000000000000000a": 403, "e0000000000000000000000b": 500})
    proc = env.daemon("--externalUrl", env.fake.external_url, *OPERATORS, "--json")
    got = summary(proc)
    assert (got["created"], got["signed"], got["unconfirmed"], got["reported"]) == (1, 1, 2, 0)
    assert sorted(env.requests()) == ["b0000000000000000000000c"]
    assert "e0000000000000000000000a: skipped: the external system answered HTTP 403" in proc.stderr
    assert env.fake.seen("/v3/tatum/kms/batch") == []  # not reported, as Tatum: re-checked next pass
    assert env.fake.still_pending() == {"e0000000000000000000000a", "e0000000000000000000000b"}

    down = env.daemon("--externalUrl", closed_port(), *OPERATORS, "--json")
    assert (summary(down)["created"], summary(down)["unconfirmed"]) == (0, 2)
    assert "did not answer (ConnectError)" in down.stderr
    assert sorted(env.requests()) == ["b0000000000000000000000c"]

    env.fake.external.clear()
    env.fake.broadcast_reject.add("e0000000000000000000000b")  # Tatum refuses this one's broadcast
    proc = env.daemon("--externalUrl", env.fake.external_url, "--externalUrlMethod", "POST", *OPERATORS, "--json")
    got = summary(proc)
    assert (got["signed"], got["broadcast"], got["broadcast_failed"], got["reported"]) == (2, 1, 1, 1)
    (report,) = env.fake.seen("/v3/tatum/kms/batch")
    assert report.body == {
        "errors": [
            {"signatureId": "e0000000000000000000000b", "error": "broadcast rejected: tx.inputs.missing-or-spent"}
        ]
    }
    (rejected,) = env.requests()["e0000000000000000000000b"]
    assert [r["outcome"] for r in env.broadcasts(rejected)] == ["rejected"]
    failed = env.service().audit.rows(kinds=["confirmation"], request_id=rejected)
    assert [(r.payload["state"], r.payload["reason"]) for r in failed] == [("failed", "tx.inputs.missing-or-spent")]
    posted = [s for s in env.fake.seen("/external/e0000000000000000000000a") if s.method == "POST"]
    assert posted and posted[0].body["id"] == "e0000000000000000000000a"
    assert posted[0].body["hashes"] == [env.eth_id] and "serializedTransaction" in posted[0].body


def test_nothing_is_signed_twice_across_restarts_and_a_kill(env: Env) -> None:
    env.eth("e0000000000000000000000a", nonce=0)
    env.eth("e0000000000000000000000b", nonce=1)
    env.fake.hang_on_call["e0000000000000000000000a"] = 2  # the check right before approval hangs
    proc = env.start("--externalUrl", env.fake.external_url, *OPERATORS, "--period", "1")
    try:
        env.fake.wait_for("/external/e0000000000000000000000a", 2)
    finally:
        proc.kill()  # SIGKILL, mid-pass: requests created, not yet approved
        proc.communicate(timeout=30)
    first = env.requests()
    assert sorted(first) == ["e0000000000000000000000a", "e0000000000000000000000b"]
    assert all(env.signatures(ids[0]) == [] for ids in first.values())

    env.fake.hang_on_call.clear()
    env.fake.broadcast_status = 503  # Tatum does not complete them: they stay pending
    for _ in range(2):
        got = summary(env.daemon("--externalUrl", env.fake.external_url, *OPERATORS, "--json"))
        assert (got["created"], got["existing"], got["broadcast_failed"]) == (0, 2, 2)
    env.fake.broadcast_status = 200
    got = summary(env.daemon("--externalUrl", env.fake.external_url, *OPERATORS, "--json"))
    assert got["broadcast"] == 2
    assert env.requests() == first  # one request per pending transaction, ever
    for (rid,) in first.values():
        (signature,) = env.signatures(rid)
        rows = env.broadcasts(rid)
        assert [r["outcome"] for r in rows] == ["unreachable", "unreachable", "accepted"]
        assert [r["attempt"] for r in rows] == [1, 2, 3]
        assert {r["txid"] for r in rows} == {signature.payload["txid"]}  # the same signed bytes every time
    assert env.fake.still_pending() == set()
    assert summary(env.daemon("--json"))["pending"] == 0


def test_usage_errors_an_api_that_is_down_and_one_daemon_per_directory(env: Env) -> None:
    proc = env.daemon("--chain-ETH")  # Tatum's meow ignored this typo (issue #116); we refuse it
    assert proc.returncode == 2 and "No such option" in proc.stderr
    no_key = env.env()
    del no_key["TATUM_API_KEY"]
    proc = env.daemon(env=no_key)
    assert proc.returncode == 2
    assert proc.stderr.count("kms-agent: error: ") == 1 and "no Tatum API key" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = env.cli("daemon", "--runOnce")  # mainnet
    assert proc.returncode == 2 and "--externalUrl is required without --testnet" in proc.stderr
    proc = env.cli("daemon", "--testnet", "--wallets", env.eth_id)
    assert proc.returncode == 2 and "only with --runOnce" in proc.stderr

    proc = env.daemon(env=env.env(TATUM_API_URL=closed_port()))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is unreachable: ConnectError" in proc.stderr and "kms-agent: error: the pass could not poll" in proc.stderr

    first = env.start("--period", "30")
    try:
        env.fake.wait_for("/v3/kms/pending/", 2)
        second = env.daemon()
        assert second.returncode == 9
        assert f"another kms-agent daemon is running on this data directory (pid {first.pid})" in second.stderr
        time.sleep(0.3)
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
        assert first.returncode == 0, stderr
        assert "stopping (signal received)" in stderr
    finally:
        if first.poll() is None:
            first.kill()
