"""A data directory ready for withdrawals: a 2-of-3 vault on simulated tokens, an ETH wallet, a policy."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.chains import get_chain
from agent.policy import AssetLimits, Policy, Rule, TimeWindow, UnknownDestination
from agent.tokens.discovery import find_token
from agent.vault.vault import TokenFinder
from agent.withdrawals.service import Withdrawals
from tests.conftest import AutoPrompts
from tests.vault.helpers import make_vault, unlock

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
COLD = "0x00000000000000000000000000000000000c01d0"
SEPOLIA = 11155111
ETHER = 10**18


@dataclass
class Ready:
    home: Path
    service: Withdrawals
    finder: TokenFinder
    prompts: AutoPrompts
    sig_id: str
    eth: Any

    def tx(self, value: int, nonce: int = 0, to: str = COLD) -> str:
        unsigned: str = self.eth.build_transfer(
            to=to, value=value, nonce=nonce, chain_id=SEPOLIA, max_fee_per_gas=30 * 10**9
        )
        return unsigned

    def create(self, value: int, nonce: int = 0, initiator: str | None = "app:exchange") -> str:
        rec = self.service.create(
            chain="ETH", signature_id=self.sig_id, index=0, tx=self.tx(value, nonce), initiator=initiator
        )
        return rec.request_id

    def signature_rows(self, request_id: str | None = None) -> list[Any]:
        return self.service.audit.rows(kinds=["signature"], request_id=request_id)

    def queue_sql(self, sql: str, *params: Any) -> None:
        """What someone with write access to the data directory and no token can do: edit the queue."""
        db = sqlite3.connect(self.home / "state" / "queue.sqlite")
        db.execute(sql, params)
        db.commit()
        db.close()


def ready_home(
    home: Path,
    prompts: AutoPrompts,
    *,
    per_hour: int | None = None,
    per_day: int | None = 100 * ETHER,
    time_window: TimeWindow | None = None,
) -> Ready:
    make_vault(home, prompts)
    eth = get_chain("ETH")
    entry = add_eth_wallet(home, prompts)
    service = Withdrawals(home)

    def finder(slot: Any) -> Any:
        return find_token(slot, home)

    policy = Policy(
        generation=2,
        default=Rule(
            approvals_required=2,
            allowlist=frozenset([eth.normalize_address(COLD, testnet=True)]),
            assets={"ETH": AssetLimits(per_tx=10 * ETHER, per_hour=per_hour, per_day=per_day)},
            unknown_destination=UnknownDestination.DENY,
            time_window=time_window,
        ),
        admin_approvals=2,
    )
    service.change_policy(policy, finder=finder, prompts=prompts, operators=["alice", "bob"])
    return Ready(home, service, finder, prompts, entry.signature_id, eth)


def add_eth_wallet(home: Path, prompts: AutoPrompts) -> Any:
    """The test mnemonic as a Sepolia ETH wallet, stored by a quorum (alice and bob)."""
    return add_wallet(home, prompts, "ETH")


def add_wallet(home: Path, prompts: AutoPrompts, chain: str) -> Any:
    """The test mnemonic as a testnet wallet of ``chain``, stored by a quorum (alice and bob)."""
    impl = get_chain(chain)
    with unlock(home_paths(home), prompts, operators=["alice", "bob"]) as v:
        entry = v.add_wallet(
            wallet_type="MNEMONIC",
            chain=impl.name,
            testnet=True,
            secret=bytearray(MNEMONIC.encode()),
            xpub=impl.xpub_from_mnemonic(MNEMONIC, testnet=True),
        )
        v.save()
    return entry


def home_paths(home: Path) -> Any:
    from agent.cli.context import Paths

    return Paths(home)
