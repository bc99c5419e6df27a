"""A vault with a Sepolia ETH wallet, a real anvil, and signed requests to broadcast (docs/broadcast.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.broadcast import config
from agent.broadcast.nodes import NodeKind
from agent.policy import AssetLimits, Policy, Rule, UnknownDestination
from agent.withdrawals.ledger import RequestState
from tests.chains.conftest import Node
from tests.conftest import REPO, AutoPrompts
from tests.withdrawals.helpers import COLD, ETHER, SEPOLIA, Ready, ready_home

GWEI = 10**9
ERC20 = json.loads((REPO / "tests" / "chains" / "vectors" / "erc20.json").read_text())


@dataclass
class World:
    ready: Ready
    node: Node
    token: str
    xpub: str

    @property
    def home(self) -> Path:
        return self.ready.home

    def address(self, index: int) -> str:
        address: str = self.ready.eth.address_from_xpub(self.xpub, index, testnet=True)
        return address

    def fund(self, index: int, wei: int = 10 * ETHER) -> str:
        address = self.address(index)
        self.node.rpc("anvil_setBalance", address, hex(wei))
        return address

    def nonce(self, index: int) -> int:
        return int(self.node.rpc("eth_getTransactionCount", self.address(index), "latest"), 16)

    def balance(self, address: str) -> int:
        return int(self.node.rpc("eth_getBalance", address, "latest"), 16)

    def request(self, unsigned: str, index: int) -> str:
        state = self.ready.service.create(
            chain="ETH", signature_id=self.ready.sig_id, index=index, tx=unsigned, initiator="app:test"
        )
        return state.request_id

    def sign(self, request_id: str) -> RequestState:
        state = self.ready.service.approve(
            request_id, finder=self.ready.finder, prompts=self.ready.prompts, operators=["alice", "bob"]
        )
        assert state.signed is not None, (state.status, dict(state.decision))
        return state

    def transfer(self, index: int, value: int, *, nonce: int | None = None, fee: int = 30 * GWEI) -> RequestState:
        """A signed ETH transfer from address ``index`` to the cold address."""
        unsigned = self.ready.eth.build_transfer(
            to=COLD,
            value=value,
            nonce=self.nonce(index) if nonce is None else nonce,
            chain_id=SEPOLIA,
            max_fee_per_gas=fee,
            max_priority_fee_per_gas=fee // 10,
        )
        return self.sign(self.request(unsigned, index))

    def token_transfer(self, index: int, amount: int, *, gas: int | None = None) -> RequestState:
        unsigned = self.ready.eth.build_erc20_transfer(
            token=self.token,
            to=COLD,
            amount=amount,
            nonce=self.nonce(index),
            chain_id=SEPOLIA,
            max_fee_per_gas=30 * GWEI,
            **({"gas": gas} if gas is not None else {}),
        )
        return self.sign(self.request(unsigned, index))

    def token_balance(self, who: str) -> int:
        data = "0x70a08231" + "00" * 12 + who[2:].lower()
        return int(self.node.rpc("eth_call", {"to": self.token, "data": data}, "latest"), 16)

    def give_tokens(self, index: int, amount: int) -> None:
        """From anvil's first dev account (which deployed the token) to address ``index``."""
        dev = self.node.rpc("eth_accounts")[0]
        data = "0xa9059cbb" + "00" * 12 + self.address(index)[2:].lower() + amount.to_bytes(32, "big").hex()
        tx = self.node.rpc("eth_sendTransaction", {"from": dev, "to": self.token, "data": data})
        assert self.node.wait_receipt(tx)["status"] == "0x1"

    def set_node(self, url: str | None = None, *, confirmations: int = 1, stuck_after: int = 1800) -> None:
        book = config.load(self.home)
        node = config.NodeConfig("ETH", True, NodeKind.EVM_RPC, url or self.node.url, confirmations, stuck_after)
        config.save(self.home, book.with_node(node))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_AGENT_")}
        env.update({"KMS_AGENT_HOME": str(self.home), "KMS_AGENT_SIM_TOUCH": "auto"})
        return subprocess.run(
            [sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
        )

    def cli_json(self, *args: str, code: int = 0) -> Any:
        proc = self.cli(*args, "--json")
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
        return json.loads(proc.stdout)

    def rows(self, request_id: str, kind: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.ready.service.audit.rows(kinds=[kind], request_id=request_id)]


def deploy_token(node: Node) -> str:
    """The test ERC-20 (tests/chains/vectors/erc20.json), its whole supply to anvil's first dev account."""
    from eth_abi import encode

    dev = node.rpc("eth_accounts")[0]
    code = ERC20["bytecode"] + encode(["uint256"], [10**24]).hex()
    receipt = node.wait_receipt(node.rpc("eth_sendTransaction", {"from": dev, "data": code, "gas": hex(1_500_000)}))
    assert receipt["status"] == "0x1"
    return str(receipt["contractAddress"]).lower()


def make_world(home: Path, node: Node) -> World:
    """ready_home, then a policy that also permits the test token (to the cold address only)."""
    home.mkdir(mode=0o700, parents=True)
    prompts = AutoPrompts(home)
    ready = ready_home(home, prompts)
    token = deploy_token(node)
    eth = ready.eth
    policy = Policy(
        generation=3,
        default=Rule(
            approvals_required=2,
            allowlist=frozenset([eth.normalize_address(COLD, testnet=True)]),
            assets={
                "ETH": AssetLimits(per_tx=10 * ETHER, per_day=1000 * ETHER),
                token: AssetLimits(per_tx=10**24, per_day=10**24),
            },
            unknown_destination=UnknownDestination.DENY,
        ),
        admin_approvals=2,
    )
    ready.service.change_policy(policy, finder=ready.finder, prompts=prompts, operators=["alice", "bob"])
    from tests.withdrawals.helpers import MNEMONIC

    xpub = eth.xpub_from_mnemonic(MNEMONIC, testnet=True)
    return World(ready, node, token, xpub)
