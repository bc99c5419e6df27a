"""``kms-agent wallet ...``: Tatum-style wallets (signatureId, chain, xpub), secrets only via stdin/prompt."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from agent.cli.context import Paths, emit
from agent.cli.options import Json, Operators, PinStdin
from agent.errors import UsageError

app = typer.Typer(help="generate, store, list and derive wallets", no_args_is_help=True)

Testnet = Annotated[bool, typer.Option("--testnet", help="testnet wallet")]


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


def _read_secret(*, first_line_only: bool = False) -> bytearray:
    """A mnemonic or private key from stdin (scripts) or a hidden prompt; never from argv.

    :param first_line_only: ``--pin-stdin``: the secret is the first line, PINs follow it.
    """
    if sys.stdin.isatty():
        import getpass

        return bytearray(getpass.getpass("mnemonic or private key: ").strip().encode())
    data = bytearray(sys.stdin.buffer.readline() if first_line_only else sys.stdin.buffer.read())
    secret = bytearray(b" ".join(bytes(data).split()))
    _wipe(data)
    if not secret:
        raise UsageError("no mnemonic or private key on stdin")
    return secret


#: One command's batch: secrets are held in memory until the single write (about 2 KB each).
MAX_COUNT = 100_000


@app.command("generate")
def generate(
    chain: Annotated[str, typer.Argument(help="BTC, ETH, ... (see `wallet chains`)")],
    testnet: Testnet = False,
    count: Annotated[int, typer.Option(help="how many wallets to generate")] = 1,
    private_key: Annotated[
        bool, typer.Option("--private-key", help="a private-key wallet instead of a mnemonic")
    ] = False,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """generate wallets inside the vault; prints signatureId and xpub (or address), never the secret"""
    from agent.chains import get_chain
    from agent.chains.wallets import generate_mnemonic_wallet, generate_private_key_wallet
    from agent.cli.session import unlock
    from agent.vault.records import WalletRow

    if not 1 <= count <= MAX_COUNT:
        raise UsageError(f"--count must be between 1 and {MAX_COUNT:,}")
    from agent.cli.session import load_public
    from agent.wallets.mainnet import refuse_simulated_mainnet

    impl = get_chain(chain)
    paths = Paths.resolve()
    refuse_simulated_mainnet(simulated=load_public(paths, quiet=True).simulated, testnet=testnet, what="wallet")
    made: list[dict[str, Any]] = []
    with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
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

            def add_all(v: Any) -> list[WalletRow]:
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
            made.append({"signatureId": entry.signature_id, **({"xpub": xpub} if xpub else {"address": addr})})
    if as_json:
        emit({"wallets": made}, True)  # one shape, whatever --count is
    else:
        print("\n".join(f"{w['signatureId']}  {w.get('xpub') or w.get('address')}" for w in made))


def store_classified(
    paths: Paths,
    impl: Any,
    secret: bytearray,
    *,
    testnet: bool,
    operator: list[str] | None,
    pin_stdin: bool,
    expect: str | None = None,
) -> tuple[Any, Any]:
    """Classify ``secret`` for ``impl`` and add it under a quorum; returns (wallet row, classification).

    :param expect: the wallet type the caller's command takes (Tatum's store commands each take one).
    """
    from agent.cli.session import unlock
    from agent.wallets.classify import classify_secret

    found = classify_secret(impl, secret, testnet=testnet)
    if expect is not None and found.wallet_type != expect:
        what = "a mnemonic" if expect == "MNEMONIC" else "a private key"
        raise UsageError(f"that is not {what} (storemanagedwallet takes mnemonics, storemanagedprivatekey keys)")
    with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
        entry = vault.transact(
            lambda v: v.add_wallet(
                wallet_type=found.wallet_type,
                chain=impl.name,
                testnet=testnet,
                secret=secret,
                xpub=found.xpub,
                address=found.address,
            )
        )
    return entry, found


@app.command("store")
def store(
    chain: Annotated[str, typer.Argument(help="BTC, ETH, ...")],
    testnet: Testnet = False,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """store a mnemonic or private key read from stdin (or a hidden prompt), never from the command line"""
    from agent.chains import get_chain
    from agent.cli.session import load_public
    from agent.wallets.mainnet import refuse_simulated_mainnet

    impl = get_chain(chain)
    paths = Paths.resolve()
    refuse_simulated_mainnet(simulated=load_public(paths, quiet=True).simulated, testnet=testnet, what="wallet")
    secret = _read_secret(first_line_only=pin_stdin)
    try:
        entry, found = store_classified(paths, impl, secret, testnet=testnet, operator=operator, pin_stdin=pin_stdin)
    finally:
        _wipe(secret)
    # Tatum's shapes: storemanagedwallet prints {signatureId, xpub}; storemanagedprivatekey {signatureId}.
    result = {"signatureId": entry.signature_id, **({"xpub": found.xpub} if found.xpub else {})}
    emit(result, as_json, f"{entry.signature_id}  {found.xpub or found.address}")


@app.command("list")
def list_wallets(as_json: Json = False) -> None:
    """list wallets from the public index (no token needed)"""
    from agent.cli.session import load_public

    wallets = load_public(Paths.resolve()).wallets()
    if as_json:
        emit({"wallets": [w.to_json() for w in wallets]}, True)
        return
    for w in wallets:
        net = "testnet" if w.testnet else "mainnet"
        print(f"{w.signature_id}  {w.chain:<5} {net:<7} {w.type:<11} {w.xpub or w.address}")


@app.command("address")
def address(
    signature_id: Annotated[str, typer.Argument(help="the wallet's signatureId")],
    index: Annotated[int, typer.Argument(help="derivation index")] = 0,
    as_json: Json = False,
) -> None:
    """derive a deposit address from the public index (no token needed)"""
    from agent.cli.session import load_public
    from agent.wallets.addresses import MAX_INDEX, deposit_address

    if not 0 <= index <= MAX_INDEX:
        raise UsageError("index must be between 0 and 2^31-1")  # before the vault is even read
    addr = deposit_address(load_public(Paths.resolve()).wallet(signature_id), index)
    emit({"address": addr}, as_json, addr)


@app.command("remove")
def remove(
    signature_id: Annotated[str, typer.Argument(help="the wallet's signatureId")],
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """delete a wallet and its secret from the vault (a quorum must unlock)"""
    from agent.cli.session import unlock

    with unlock(Paths.resolve(), operators=operator, pin_stdin=pin_stdin) as vault:
        vault.transact(lambda v: v.remove_wallet(signature_id))
    emit({"removed": signature_id}, as_json, f"Removed {signature_id}.")


@app.command("chains")
def chains(as_json: Json = False) -> None:
    """list supported chains"""
    from agent.chains import supported_chains

    names = supported_chains()
    emit({"chains": names}, as_json, " ".join(names))
