"""``kms-agent sweep``: build the unsigned sweep of a wallet to its cold address, and queue it.

The chain state (UTXOs, or balance and nonce and fee) comes from the caller, as everywhere in the
agent: no chain module touches the network. With ``--request`` the sweep goes straight into the
withdrawal queue, where policy and the approvers treat it like any other withdrawal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.context import Paths, emit
from agent.errors import UsageError


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
        from agent.wallets.coins import read_utxos

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
            result["request"] = rec.request_id
        emit(result, as_json, f"{tx}" + (f"\nqueued as request {result['request']}" if request else ""))
