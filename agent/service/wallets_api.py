"""``/v1/wallets``: the vault's public index and deposit addresses, derived without any token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from agent.errors import UsageError
from agent.service.deps import Context, run_sync, v1_router
from agent.service.errors import ApiError
from agent.service.models import DepositAddress, ErrorBody, Index, SignatureId, Wallet, WalletList
from agent.withdrawals.service import Withdrawals

router = v1_router(tags=["wallets"])


@router.get("/wallets", response_model=WalletList)
async def list_wallets(ctx: Context) -> WalletList:
    """Every wallet in the vault's signed public index (no secret, no token)."""
    rows = await run_sync(lambda: list(ctx.withdrawals.vault().wallets()))  # read in the worker thread
    return WalletList(wallets=[Wallet(**w.to_json()) for w in rows])


@router.get(
    "/wallets/{signatureId}/addresses/{index}",
    response_model=DepositAddress,
    responses={404: {"model": ErrorBody, "description": "no wallet with that signatureId"}},
)
async def deposit_address(
    ctx: Context,
    signatureId: Annotated[SignatureId, Path()],
    index: Annotated[Index, Path()],
) -> DepositAddress:
    """The deposit address at ``index``, derived from the wallet's xpub (a private-key wallet has index 0 only)."""
    return await run_sync(_address, ctx.withdrawals, signatureId, index)


def _address(service: Withdrawals, signature_id: str, index: int) -> DepositAddress:
    from agent.wallets.addresses import deposit_address

    vault = service.vault()
    try:
        wallet = vault.wallet(signature_id)
    except UsageError as exc:
        raise ApiError(404, exc.message) from None
    address = deposit_address(wallet, index)
    return DepositAddress(
        signatureId=wallet.signature_id, chain=wallet.chain, testnet=wallet.testnet, index=index, address=address
    )
