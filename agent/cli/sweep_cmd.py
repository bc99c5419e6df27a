"""``kms-agent sweep``: build the unsigned sweep of a wallet to its cold address, and queue it.

The chain state (UTXOs, or balance and nonce and fee) comes from the caller, as everywhere in the
agent: no chain module touches the network. With ``--request`` the sweep goes straight into the
withdrawal queue, where policy and the approvers treat it like any other withdrawal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agent.cli.context import Paths, emit
from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.vault.records import WalletRow


def read_utxos(path: Path, chain: Any, wallet: WalletRow) -> list[Any]:
    """Coins the caller says the wallet owns: JSON [{txid, vout, amount, address | index[, prev_tx]}]."""
    from agent.chains.utxo import Utxo

    try:
        raw = json.loads(path.read_text())
        coins = []
        for c in raw:
            address = c.get("address")
            if address is None:  # derive from the wallet index the caller names
                if wallet.xpub is None:
                    raise KeyError("xpub")  # a private-key wallet: each coin must name its address
                address = chain.address_from_xpub(wallet.xpub, int(c["index"]), testnet=wallet.testnet)
            prev = bytes.fromhex(c["prev_tx"]) if c.get("prev_tx") else None
            coins.append(Utxo(str(c["txid"]), int(c["vout"]), int(c["amount"]), address, prev))
        return coins
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read UTXOs from {path}: {type(exc).__name__} {exc}") from None


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep(
        signature_id: Annotated[str, typer.Argument(help="the hot wallet to empty")],
        to: Annotated[str, typer.Option("--to", help="the cold wallet address")],
        utxos: Annotated[
            Path | None,
            typer.Option(help="UTXO chains: JSON list of {txid, vout, amount, address or index[, prev_tx]}"),
        ] = None,
        fee_rate: Annotated[float | None, typer.Option(help="UTXO chains: sat/vbyte")] = None,
        balance: Annotated[int | None, typer.Option(help="EVM: the address's balance in wei")] = None,
        nonce: Annotated[int | None, typer.Option(help="EVM: the address's next nonce")] = None,
        max_fee_per_gas: Annotated[int | None, typer.Option(help="EVM: wei per gas")] = None,
        chain_id: Annotated[int | None, typer.Option(help="EVM: chain id (default: the wallet's network)")] = None,
        index: Annotated[int, typer.Option(help="EVM: address index to sweep")] = 0,
        request: Annotated[bool, typer.Option("--request", help="queue it as a withdrawal request")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """build the unsigned sweep of a wallet's funds to a cold address (optionally queue it)"""
        from agent.chains import Family, get_chain
        from agent.cli.session import load_public

        wallet = load_public(Paths.resolve()).wallet(signature_id)
        chain: Any = get_chain(wallet.chain)  # each family's build_sweep takes its own arguments
        testnet = wallet.testnet
        if chain.family is Family.UTXO:
            if utxos is None or fee_rate is None:
                raise UsageError("a UTXO sweep needs --utxos FILE and --fee-rate")
            tx = chain.build_sweep(
                read_utxos(utxos, chain, wallet),
                to,
                sat_per_vbyte=fee_rate,
                testnet=testnet,
            )
            index = 0
        else:
            if balance is None or nonce is None or max_fee_per_gas is None:
                raise UsageError("an EVM sweep needs --balance, --nonce and --max-fee-per-gas")
            cid = chain_id if chain_id is not None else chain.chain_ids(testnet)[0]
            tx = chain.build_sweep(
                balance=balance,
                to=to,
                nonce=nonce,
                chain_id=cid,
                max_fee_per_gas=max_fee_per_gas,
            )
        summary = chain.decode(tx, testnet=testnet).to_json()
        result: dict[str, Any] = {"chain": chain.name, "tx": tx, "summary": summary}
        if request:
            from agent.withdrawals.service import Withdrawals

            rec = Withdrawals(Paths.resolve().home).create(
                chain=chain.name, signature_id=signature_id, index=index, tx=tx, initiator="app:sweep"
            )
            result["request"] = rec["id"]
        emit(result, as_json, f"{tx}" + (f"\nqueued as request {result['request']}" if request else ""))
