"""Intents: "pay AMOUNT of ASSET from wallet W index I to ADDRESS", turned into an unsigned transaction.

The chain module builds the bytes; chain state (UTXOs, nonce, fee rate) comes from the caller, since
no part of the agent talks to a node. The result then goes through exactly the same decode ->
policy -> approvals path as a PSBT or unsigned transaction submitted directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.chains import Family, get_chain
from agent.errors import UsageError
from agent.vault.records import WalletRow

DUST = 546


@dataclass(frozen=True)
class Intent:
    chain: str
    to: str
    amount: int
    #: None for the native coin; an ERC-20 contract address for tokens (EVM only).
    token: str | None = None
    # EVM chain state
    nonce: int | None = None
    max_fee_per_gas: int | None = None
    gas: int | None = None
    chain_id: int | None = None
    # UTXO chain state
    utxos: Sequence[Any] = ()
    fee_rate: float | None = None
    change_address: str | None = None


def build(intent: Intent, *, testnet: bool) -> str:
    """The unsigned transaction (hex for EVM, base64 PSBT for UTXO chains) that carries out ``intent``."""
    chain: Any = get_chain(intent.chain)
    if intent.amount <= 0:
        raise UsageError("the amount must be a positive number of base units")
    if chain.family is Family.EVM:
        if intent.nonce is None or intent.max_fee_per_gas is None:
            raise UsageError("an EVM intent needs --nonce and --max-fee-per-gas (the caller knows the chain state)")
        chain_id = intent.chain_id if intent.chain_id is not None else chain.chain_ids(testnet)[0]
        fees = {"max_fee_per_gas": intent.max_fee_per_gas, "max_priority_fee_per_gas": intent.max_fee_per_gas}
        if intent.token:
            tx: str = chain.build_erc20_transfer(
                token=intent.token,
                to=intent.to,
                amount=intent.amount,
                nonce=intent.nonce,
                chain_id=chain_id,
                gas=intent.gas or 100_000,
                **fees,
            )
        else:
            tx = chain.build_transfer(
                to=intent.to,
                value=intent.amount,
                nonce=intent.nonce,
                chain_id=chain_id,
                gas=intent.gas or 21_000,
                **fees,
            )
        return tx
    if intent.token:
        raise UsageError(f"{chain.name} has no tokens: drop --asset")
    if not intent.utxos or intent.fee_rate is None or not intent.change_address:
        raise UsageError("a UTXO intent needs --utxos, --fee-rate and a change address")
    net = chain.net(testnet)
    kinds = [chain.script_from_address(u.address, net) for u in intent.utxos]
    input_kinds = ["p2sh-p2wpkh" if s[0] == 0xA9 else "p2wpkh" if s[0] == 0 else "p2pkh" for s in kinds]
    outputs = [chain.script_from_address(intent.to, net), chain.script_from_address(intent.change_address, net)]
    fee = chain.estimate_fee(inputs=input_kinds, outputs=outputs, sat_per_vbyte=intent.fee_rate).fee
    total = sum(u.amount for u in intent.utxos)
    change = total - intent.amount - fee
    if change < 0:
        raise UsageError(f"the coins ({total}) do not cover {intent.amount} plus the fee ({fee})")
    pays = [(intent.to, intent.amount)] + ([(intent.change_address, change)] if change >= DUST else [])
    psbt: str = chain.build_psbt(list(intent.utxos), pays, testnet=testnet)
    return psbt


def build_for_wallet(
    wallet: WalletRow,
    *,
    chain: str,
    to: str,
    amount: int,
    asset: str | None = None,
    nonce: int | None = None,
    max_fee_per_gas: int | None = None,
    utxos: Path | None = None,
    fee_rate: float | None = None,
    change_index: int = 1,
) -> str:
    """An intent from ``wallet``: its coins from ``utxos`` (UTXO chains), change to its ``change_index`` address."""
    from agent.wallets.coins import read_utxos

    impl = get_chain(chain)
    coins: list[Any] = []
    change = None
    if utxos is not None:
        coins = read_utxos(utxos, impl, wallet)
        change = (
            impl.address_from_xpub(wallet.xpub, change_index, testnet=wallet.testnet) if wallet.xpub else wallet.address
        )
    intent = Intent(
        chain,
        to,
        amount,
        token=asset,
        nonce=nonce,
        max_fee_per_gas=max_fee_per_gas,
        utxos=coins,
        fee_rate=fee_rate,
        change_address=change,
    )
    return build(intent, testnet=wallet.testnet)
