"""``kms-agent wallet ...``: Tatum-style wallets (signatureId, chain, xpub), secrets only via stdin/prompt."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated, Any

import typer

from agent.cli.context import Paths, emit
from agent.errors import UsageError

app = typer.Typer(help="generate, store, list and derive wallets", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="print JSON")]
Testnet = Annotated[bool, typer.Option("--testnet", help="testnet wallet")]
Approvers = Annotated[list[str] | None, typer.Option("--approver", help="operator to ask for the unlock (repeat)")]


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


def _read_secret() -> bytearray:
    """A mnemonic or private key from stdin (scripts) or a hidden prompt; never from argv."""
    if sys.stdin.isatty():
        return bytearray(getpass.getpass("mnemonic or private key: ").strip().encode())
    data = bytearray(sys.stdin.buffer.read())
    secret = bytearray(b" ".join(bytes(data).split()))
    _wipe(data)
    if not secret:
        raise UsageError("no mnemonic or private key on stdin")
    return secret


def _classify(chain: Any, secret: bytearray, testnet: bool) -> tuple[str, dict[str, Any]]:
    """Decide mnemonic vs private key and derive the public part; errors never quote the secret."""
    from mnemonic import Mnemonic

    text = secret.decode(errors="replace")
    if len(text.split()) >= 12:
        if not Mnemonic("english").check(text):
            raise UsageError("that is not a valid BIP-39 English mnemonic (bad word or checksum)")
        return "MNEMONIC", {"xpub": chain.xpub_from_mnemonic(text, testnet=testnet)}
    key = chain.parse_private_key(text, testnet=testnet)
    try:
        return "PRIVATE_KEY", {"address": chain.address_from_private_key(bytes(key), testnet=testnet)}
    finally:
        _wipe(key)


@app.command("generate")
def generate(
    chain: Annotated[str, typer.Argument(help="BTC, ETH, ... (see `wallet chains`)")],
    testnet: Testnet = False,
    count: Annotated[int, typer.Option(help="how many wallets to generate")] = 1,
    private_key: Annotated[
        bool, typer.Option("--private-key", help="a private-key wallet instead of a mnemonic")
    ] = False,
    approver: Approvers = None,
    as_json: Json = False,
) -> None:
    """generate wallets inside the vault; prints signatureId and xpub (or address), never the secret"""
    from agent.chains import get_chain
    from agent.chains.wallets import generate_mnemonic_wallet, generate_private_key_wallet
    from agent.cli.session import unlock

    if count < 1:
        raise UsageError("--count must be at least 1")
    impl = get_chain(chain)
    paths = Paths.resolve()
    made: list[dict[str, Any]] = []
    with unlock(paths, operators=approver) as vault:
        # Secrets are made before the writer lock is taken (24-word mnemonics cost milliseconds each);
        # under the lock they are sealed into the newest wallet.dat, on top of any concurrent write.
        show_progress = count >= 100 and sys.stderr.isatty()
        fresh: list[tuple[str, bytearray, str | None, str | None]] = []
        try:
            for i in range(count):
                if private_key:
                    pk = generate_private_key_wallet(impl, testnet=testnet)
                    fresh.append(("PRIVATE_KEY", pk.private_key, None, pk.address))
                else:
                    mw = generate_mnemonic_wallet(impl, testnet=testnet)
                    fresh.append(("MNEMONIC", mw.mnemonic, mw.xpub, None))
                if show_progress and (i + 1) % 100 == 0:
                    print(f"\rgenerated {i + 1}/{count}", end="", file=sys.stderr, flush=True)

            def add_all(v: Any) -> list[dict[str, Any]]:
                return [
                    v.add_wallet(
                        wallet_type=kind, chain=impl.name, testnet=testnet, secret=secret, xpub=xpub, address=addr
                    )
                    for kind, secret, xpub, addr in fresh
                ]

            entries = vault.transact(add_all)
        finally:
            for _, secret, _, _ in fresh:
                _wipe(secret)
        for entry, (_, _, xpub, addr) in zip(entries, fresh, strict=True):
            made.append({"signatureId": entry["signatureId"], **({"xpub": xpub} if xpub else {"address": addr})})
    if as_json:
        emit(made[0] if count == 1 else {"wallets": made}, True)
    else:
        print("\n".join(f"{w['signatureId']}  {w.get('xpub') or w.get('address')}" for w in made))


@app.command("store")
def store(
    chain: Annotated[str, typer.Argument(help="BTC, ETH, ...")],
    testnet: Testnet = False,
    approver: Approvers = None,
    as_json: Json = False,
) -> None:
    """store a mnemonic or private key read from stdin (or a hidden prompt), never from the command line"""
    from agent.chains import get_chain
    from agent.cli.session import unlock

    impl = get_chain(chain)
    secret = _read_secret()
    try:
        kind, public = _classify(impl, secret, testnet)
        paths = Paths.resolve()
        with unlock(paths, operators=approver) as vault:
            entry = vault.transact(
                lambda v: v.add_wallet(wallet_type=kind, chain=impl.name, testnet=testnet, secret=secret, **public)
            )
    finally:
        _wipe(secret)
    # Tatum's shapes: storemanagedwallet prints {signatureId, xpub}; storemanagedprivatekey {signatureId}.
    result = {"signatureId": entry["signatureId"], **({"xpub": public["xpub"]} if "xpub" in public else {})}
    emit(result, as_json, f"{entry['signatureId']}  {public.get('xpub') or public.get('address')}")


@app.command("list")
def list_wallets(as_json: Json = False) -> None:
    """list wallets from the public index (no token needed)"""
    from agent.cli.session import load_public

    wallets = load_public(Paths.resolve()).wallets()
    if as_json:
        emit({"wallets": wallets}, True)
        return
    for w in wallets:
        net = "testnet" if w["testnet"] else "mainnet"
        print(f"{w['signatureId']}  {w['chain']:<5} {net:<7} {w['type']:<11} {w.get('xpub') or w.get('address')}")


@app.command("address")
def address(
    signature_id: Annotated[str, typer.Argument(help="the wallet's signatureId")],
    index: Annotated[int, typer.Argument(help="derivation index")] = 0,
    as_json: Json = False,
) -> None:
    """derive a deposit address from the public index (no token needed)"""
    from agent.chains import get_chain
    from agent.cli.session import load_public

    if index < 0 or index >= 2**31:
        raise UsageError("index must be between 0 and 2^31-1")
    wallet = load_public(Paths.resolve()).wallet(signature_id)
    if wallet.get("xpub"):
        addr = get_chain(wallet["chain"]).address_from_xpub(wallet["xpub"], index, testnet=wallet["testnet"])
    elif index == 0:
        addr = wallet["address"]
    else:
        raise UsageError("a private-key wallet has one address: use index 0")
    emit({"address": addr}, as_json, addr)


@app.command("remove")
def remove(
    signature_id: Annotated[str, typer.Argument(help="the wallet's signatureId")],
    approver: Approvers = None,
    as_json: Json = False,
) -> None:
    """delete a wallet and its secret from the vault (a quorum must unlock)"""
    from agent.cli.session import unlock

    with unlock(Paths.resolve(), operators=approver) as vault:
        vault.transact(lambda v: v.remove_wallet(signature_id))
    emit({"removed": signature_id}, as_json, f"Removed {signature_id}.")


@app.command("chains")
def chains(as_json: Json = False) -> None:
    """list supported chains"""
    from agent.chains import supported_chains

    names = supported_chains()
    emit({"chains": names}, as_json, " ".join(names))
