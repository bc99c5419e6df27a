"""Coming from Tatum KMS: ``import tatum``, ``export [tatum PATH]``, and Tatum's command names.

Tatum's commands keep their arguments and JSON shapes (docs/migrating-from-tatum.md has the table);
what differs is where the key lives: every command that writes the vault needs a quorum of touches
(Tatum: a password), and every command that shows a secret needs a quorum of touches over a digest
of *that* reveal, recorded in the audit log with an alert before the secret is printed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agent.cli.context import Paths, emit, err
from agent.cli.options import Json, Operators, PinStdin
from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.vault.vault import UnlockedVault

Testnet = Annotated[bool, typer.Option("--testnet", help="testnet wallet")]
Chain = Annotated[str, typer.Argument(help="Tatum chain name: BTC, ETH, ... (see `wallet chains`)")]
SignatureId = Annotated[str, typer.Argument(help="the wallet's signatureId")]
Index = Annotated[int, typer.Argument(help="derivation index")]

#: What ``checkconfig`` lists (Tatum's own variables, masked as Tatum masks them).
TATUM_ENV = (
    "TATUM_API_KEY",
    "TATUM_API_URL",
    "TATUM_KMS_PASSWORD",
    "TATUM_KMS_DEBUG_MODE",
)
SWEEP_WARNING = (
    "Tatum's wallet.dat is AES-CBC under an MD5 key derivation (one round): anyone who has a copy of "
    "the file can try passwords offline at GPU speed. If the file or its password may ever have "
    "leaked, treat these keys as exposed and sweep their funds to new wallets (`kms-agent sweep`)."
)


#: The one foreign format so far (a str argument, not an enum: click's "Choose from" error spans lines).
FORMATS = ("tatum",)


def _format(value: str | None) -> str | None:
    if value is not None and value.lower() not in FORMATS:
        raise UsageError(f"unknown format {value!r}: use {' or '.join(FORMATS)}")
    return value.lower() if value is not None else None


# --- small helpers ------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr when it is a terminal (redrawn at most 10 times a second)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.shown = sys.stderr.isatty() and total >= 50
        self._last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.shown and (now - self._last >= 0.1 or self.done >= self.total):
            self._last = now
            width = 30
            filled = width * self.done // max(self.total, 1)
            bar = "#" * filled + "-" * (width - filled)
            print(f"\r{self.label} [{bar}] {self.done:,}/{self.total:,}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown and self.done:
            print(file=sys.stderr, flush=True)


def read_password(prompt: str, *, confirm: bool = False) -> bytearray:
    """A password from a hidden prompt, or the first line of stdin when stdin is not a terminal."""
    if sys.stdin.isatty():
        import getpass

        pw = bytearray(getpass.getpass(f"{prompt}: ").encode())
        if confirm and bytearray(getpass.getpass(f"{prompt} (again): ").encode()) != pw:
            raise UsageError("the two passwords differ; nothing was written")
    else:
        line = sys.stdin.buffer.readline()
        pw = bytearray(line.rstrip(b"\r\n"))
        line = b""
    if not pw:
        raise UsageError("no password given (stdin was empty)" if not sys.stdin.isatty() else "empty password")
    return pw


def _read_secret(what: str, first_line_only: bool) -> bytearray:
    if sys.stdin.isatty():
        import getpass

        return bytearray(getpass.getpass(f"Enter {what} to store: ").strip().encode())
    data = bytearray(sys.stdin.buffer.readline() if first_line_only else sys.stdin.buffer.read())
    secret = bytearray(b" ".join(bytes(data).split()))
    data[:] = bytes(len(data))
    if not secret:
        raise UsageError(f"no {what} on stdin")
    return secret


def _dump(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2))


def _refuse_sim_mainnet(paths: Paths, testnet: bool) -> None:
    from agent.cli.session import load_public
    from agent.wallets.mainnet import refuse_simulated_mainnet

    refuse_simulated_mainnet(simulated=load_public(paths, quiet=True).simulated, testnet=testnet, what="wallet")


def reveal(
    paths: Paths,
    *,
    action: str,
    signature_ids: Sequence[str],
    target: str,
    operators: Sequence[str] | None,
    pin_stdin: bool,
) -> UnlockedVault:
    """Open the vault for a reveal: a quorum touches over the reveal's digest, audited before anything shows.

    The same gate as every quorum decision here (each touch is a token signature over a digest
    naming what it allows); the ``unlock`` row carries the touches and the ``alert`` row makes
    monitoring page someone (docs/migrating-from-tatum.md, "Commands that show a secret").
    """
    from agent.audit import AuditKind, AuditLog
    from agent.cli.session import load_public, unlock
    from agent.tatum.migrate import reveal_digest

    public = load_public(paths)
    digest = reveal_digest(public.header.vault_id, public.header.generation, action, signature_ids, target)
    vault = unlock(paths, operators=operators, pin_stdin=pin_stdin, digest=digest)
    try:
        who = [t.operator for t in vault.touches]
        detail = f"{action}: {len(signature_ids)} wallet(s) revealed to {target}, approved by {', '.join(who)}"
        with AuditLog(paths.state).transaction() as rows:
            rows.append(
                AuditKind.UNLOCK,
                {
                    "purpose": action,
                    "digest": digest.hex(),
                    "wallets": list(signature_ids[:100]),
                    "count": len(signature_ids),
                    "target": target,
                    "touches": [
                        {
                            "operator": t.operator,
                            "token": t.token_label,
                            "signature": t.approval.signature.hex(),
                            "sign_count": t.approval.sign_count,
                        }
                        for t in vault.touches
                    ],
                },
                actor=",".join(who),
            )
            rows.append(AuditKind.ALERT, {"rule": "secret-revealed", "detail": detail})
    except BaseException:
        vault.close()
        raise
    err(f"kms-agent: ALERT: {detail}; this is logged")
    return vault


# --- import / export ----------------------------------------------------------------------------


def _ask_legacy(entries: Sequence[Any], chain: str | None, testnet: bool | None) -> None:
    from agent.tatum.migrate import set_legacy

    legacy = [e for e in entries if e.legacy]
    if not legacy:
        return
    if chain is None and not sys.stdin.isatty():
        raise UsageError(
            f"{len(legacy)} entries come from Tatum KMS before July 2020 and name no chain or network",
            hint="give them with --legacy-chain CHAIN and --legacy-testnet or --legacy-mainnet",
        )
    if chain is not None and testnet is None and not sys.stdin.isatty():
        raise UsageError("--legacy-chain needs --legacy-testnet or --legacy-mainnet")
    last: tuple[str, bool] = (chain or "BTC", bool(testnet))

    def answer(e: Any) -> tuple[str, bool]:
        nonlocal last
        if chain is not None and testnet is not None:
            return chain.upper(), testnet
        err(f"Entry {e.signature_id} ({e.kind.value.lower()}) names no chain or network.")
        got = chain or typer.prompt("  chain", default=last[0], err=True)
        net = testnet if testnet is not None else typer.confirm("  testnet?", default=last[1], err=True)
        last = (got.strip().upper(), net)
        return last

    set_legacy(entries, answer)


def _show_findings(plan: Any, path: Path) -> None:
    from agent.tatum.entries import summarize

    err(f"Found {len(plan.findings):,} wallets in {path}:")
    for row in summarize(plan.findings):
        err(f"  {row['count']:>7,}  {row['chain']:<6} {row['network']:<8} {row['type']:<12} {row['status']}")
    odd = [f for f in plan.findings if not f.signable]
    for f in odd[:20]:
        why = "; ".join(f.problems) or f"no signer for {f.entry.chain} here yet: sealed and kept"
        err(f"  {f.entry.signature_id}: {why}")
    if len(odd) > 20:
        err(f"  ... and {len(odd) - 20} more (--json lists them all)")
    notes = dict.fromkeys(n for f in plan.findings for n in f.notes)
    for note in notes:
        err(f"  note: {note}")


def _shred(path: Path) -> None:
    """Overwrite with random bytes, fsync, unlink. On SSDs and journaling or copy-on-write file
    systems old blocks may survive: that is why the sweep advice matters."""
    size = path.stat().st_size
    fd = os.open(path, os.O_WRONLY)
    try:
        left = size
        while left:
            left -= os.write(fd, os.urandom(min(left, 1 << 20)))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def register(app: typer.Typer) -> None:
    @app.command("import")
    def import_cmd(
        fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="tatum: a Tatum KMS wallet.dat")],
        path: Annotated[Path, typer.Argument(metavar="PATH", help="the file to import")],
        keep_mismatched: Annotated[
            bool,
            typer.Option(
                "--keep-mismatched",
                help="import entries whose xpub or key does not check out, sealed as they are (no addresses)",
            ),
        ] = False,
        legacy_chain: Annotated[
            str | None, typer.Option("--legacy-chain", help="chain of entries that name none (Tatum before 2020)")
        ] = None,
        legacy_testnet: Annotated[
            bool | None,
            typer.Option("--legacy-testnet/--legacy-mainnet", help="network of entries that name none"),
        ] = None,
        shred: Annotated[bool, typer.Option("--shred", help="shred the file after a successful import")] = False,
        operator: Operators = None,
        pin_stdin: PinStdin = False,
        as_json: Json = False,
    ) -> None:
        """import a Tatum KMS wallet.dat: every wallet keeps its signatureId

        The password comes from a prompt, or from stdin when it is not a terminal.
        """
        from agent.audit import AuditKind, AuditLog
        from agent.cli.session import load_public, unlock
        from agent.tatum.entries import parse_entries
        from agent.tatum.migrate import add_entries, plan_import
        from agent.tatum.walletdat import decrypt
        from agent.wallets.mainnet import refuse_simulated_mainnet

        _format(fmt)
        paths = Paths.resolve()
        public = load_public(paths, quiet=True)  # unlock() below warns about simulated tokens
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        password = read_password(f"password of {path.name}")
        try:
            doc = decrypt(data, bytes(password), name=str(path))
        finally:
            password[:] = bytes(len(password))
        entries = parse_entries(doc, name=str(path))
        del doc
        _ask_legacy(entries, legacy_chain, legacy_testnet)
        refuse_simulated_mainnet(
            simulated=public.simulated, testnet=all(e.testnet for e in entries), what="wallet import"
        )
        bar = Progress("checking", len(entries))
        try:
            plan = plan_import(
                entries,
                existing=(w.signature_id for w in public.wallets()),
                keep_mismatched=keep_mismatched,
                progress=bar,
                jobs=min(os.cpu_count() or 1, 4),
            )
        finally:
            bar.close()
        _show_findings(plan, path)
        plan.check()
        with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
            bar = Progress("sealing", len(plan.findings))
            try:
                rows = vault.transact(lambda v: add_entries(v, plan.findings, progress=bar))
            finally:
                bar.close()
            who = [t.operator for t in vault.touches]
        AuditLog(paths.state).append(
            AuditKind.UNLOCK,
            {"purpose": "import tatum", "count": len(rows), "source": str(path.absolute())},
            actor=",".join(who),
        )
        from agent.tatum.entries import summarize

        signable = sum(f.signable for f in plan.findings)
        result = {
            "imported": len(rows),
            "signable": signable,
            "kept": len(rows) - signable,
            "summary": summarize(plan.findings),
            "wallets": [f.to_json() for f in plan.findings],
        }
        emit(result, as_json, f"Imported {len(rows):,} wallets ({signable:,} signable here); signatureIds unchanged.")
        err(f"warning: {SWEEP_WARNING}")
        if shred or (sys.stdin.isatty() and typer.confirm(f"Shred {path} now?", default=False, err=True)):
            _shred(path)
            err(f"Shredded {path} (copies and backups of it, and old disk blocks, are not).")
        else:
            err(f"hint: {path} still holds every key under the old password: shred it (`shred -u {path}`).")

    @app.command("export")
    def export_cmd(
        fmt: Annotated[
            str | None,
            typer.Argument(metavar="[FORMAT]", help="tatum: write a Tatum KMS wallet.dat (omitted: print JSON)"),
        ] = None,
        path: Annotated[Path | None, typer.Argument(metavar="[PATH]", help="the file to write (0600)")] = None,
        force: Annotated[bool, typer.Option("--force", help="replace PATH if it exists")] = False,
        operator: Operators = None,
        pin_stdin: PinStdin = False,
        as_json: Json = False,
    ) -> None:
        """print every wallet with its secret (Tatum's export), or write a Tatum wallet.dat

        Either needs a quorum of touches over this reveal (audited, alerted).
        """
        from agent.cli.session import load_public
        from agent.files import atomic_write
        from agent.tatum.migrate import export_document
        from agent.tatum.walletdat import encrypt

        fmt = _format(fmt)
        if fmt is not None and path is None:
            raise UsageError("export tatum needs the PATH of the file to write")
        if fmt is None and path is not None:
            raise UsageError("give the format first: export tatum PATH")
        paths = Paths.resolve()
        rows = load_public(paths, quiet=True).wallets()
        ids = [r.signature_id for r in rows]
        if path is not None and path.exists() and not force:
            raise UsageError(f"{path} exists; refusing to overwrite it (--force replaces it)")
        password = read_password("password for the Tatum wallet.dat", confirm=True) if path is not None else None
        try:
            target = f"file {path.absolute()}" if path is not None else "stdout"
            action = "export tatum" if path is not None else "export"
            with reveal(
                paths, action=action, signature_ids=ids, target=target, operators=operator, pin_stdin=pin_stdin
            ) as vault:
                doc = export_document(vault, rows)
            if path is None:
                _dump(doc)
                return
            assert password is not None
            atomic_write(path.absolute(), encrypt(doc, bytes(password)))
        finally:
            if password is not None:
                password[:] = bytes(len(password))
        emit(
            {"exported": len(doc), "path": str(path)},
            as_json,
            f"Wrote {len(doc):,} wallets to {path} (0600), under the password just given.",
        )
        err(f"warning: {SWEEP_WARNING}")

    # --- Tatum's commands -------------------------------------------------------------------------

    @app.command("generatewallet")
    def generatewallet(chain: Chain, testnet: Testnet = False, as_json: Json = False) -> None:
        """Tatum: print a new mnemonic and its xpub

        Stores nothing (generatemanagedwallet keeps it in the vault).
        """
        from agent.chains import get_chain
        from agent.chains.wallets import generate_mnemonic_wallet

        w = generate_mnemonic_wallet(get_chain(chain), testnet=testnet)
        try:
            _dump({"mnemonic": w.mnemonic.decode(), "xpub": w.xpub})
        finally:
            w.wipe()

    @app.command("generatemanagedwallet")
    def generatemanagedwallet(
        chain: Chain,
        testnet: Testnet = False,
        operator: Operators = None,
        pin_stdin: PinStdin = False,
        as_json: Json = False,
    ) -> None:
        """Tatum: generate a mnemonic wallet inside the vault

        Prints {signatureId, xpub}.
        """
        from agent.chains import get_chain
        from agent.chains.wallets import generate_mnemonic_wallet
        from agent.cli.session import unlock

        impl = get_chain(chain)
        paths = Paths.resolve()
        _refuse_sim_mainnet(paths, testnet)
        w = generate_mnemonic_wallet(impl, testnet=testnet)
        try:
            with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
                row = vault.transact(
                    lambda v: v.add_wallet(
                        wallet_type="MNEMONIC", chain=impl.name, testnet=testnet, secret=w.mnemonic, xpub=w.xpub
                    )
                )
        finally:
            w.wipe()
        _dump({"signatureId": row.signature_id, "xpub": w.xpub})

    def _store(chain: str, testnet: bool, kind: str, operator: Any, pin_stdin: bool) -> Any:
        from agent.chains import get_chain
        from agent.cli.wallet_cmd import store_classified

        impl = get_chain(chain)
        paths = Paths.resolve()
        _refuse_sim_mainnet(paths, testnet)
        secret = _read_secret("mnemonic" if kind == "MNEMONIC" else "private key", pin_stdin)
        try:
            entry, _ = store_classified(
                paths, impl, secret, testnet=testnet, operator=operator, pin_stdin=pin_stdin, expect=kind
            )
            return entry
        finally:
            secret[:] = bytes(len(secret))

    @app.command("storemanagedwallet")
    def storemanagedwallet(
        chain: Chain,
        testnet: Testnet = False,
        operator: Operators = None,
        pin_stdin: PinStdin = False,
        as_json: Json = False,
    ) -> None:
        """Tatum: store a mnemonic read from stdin or a hidden prompt

        Prints {signatureId, xpub}.
        """
        row = _store(chain, testnet, "MNEMONIC", operator, pin_stdin)
        _dump({"signatureId": row.signature_id, "xpub": row.xpub})

    @app.command("storemanagedprivatekey")
    def storemanagedprivatekey(
        chain: Chain,
        testnet: Testnet = False,
        operator: Operators = None,
        pin_stdin: PinStdin = False,
        as_json: Json = False,
    ) -> None:
        """Tatum: store a private key read from stdin or a hidden prompt

        Prints {signatureId}.
        """
        row = _store(chain, testnet, "PRIVATE_KEY", operator, pin_stdin)
        _dump({"signatureId": row.signature_id})

    @app.command("generatemanagedprivatekeybatch")
    def generatemanagedprivatekeybatch(
        chain: Chain,
        count: Annotated[int, typer.Argument(help="how many keys")],
        testnet: Testnet = False,
        operator: Operators = None,
        pin_stdin: PinStdin = False,
        as_json: Json = False,
    ) -> None:
        """Tatum: generate COUNT private-key wallets in one vault write

        Prints one {signatureId, address} line each.
        """
        import json

        from agent.chains import get_chain
        from agent.chains.wallets import generate_private_key_batch
        from agent.cli.session import unlock
        from agent.cli.wallet_cmd import MAX_COUNT

        if not 1 <= count <= MAX_COUNT:
            raise UsageError(f"count must be between 1 and {MAX_COUNT:,}")
        impl = get_chain(chain)
        paths = Paths.resolve()
        _refuse_sim_mainnet(paths, testnet)
        with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
            fresh = []
            bar = Progress("generating", count)
            try:
                for i, w in enumerate(generate_private_key_batch(impl, count, testnet=testnet), 1):
                    fresh.append(w)
                    if i % 100 == 0 or i == count:
                        bar(100 if i % 100 == 0 else i % 100)

                def add_all(v: Any) -> list[Any]:
                    return [
                        v.add_wallet(
                            wallet_type="PRIVATE_KEY",
                            chain=impl.name,
                            testnet=testnet,
                            secret=w.private_key,
                            address=w.address,
                        )
                        for w in fresh
                    ]

                rows = vault.transact(add_all)
            finally:
                bar.close()
                for w in fresh:
                    w.wipe()
        made = [{"signatureId": r.signature_id, "address": r.address} for r in rows]
        if as_json:
            emit({"wallets": made}, True)
        else:  # Tatum prints one JSON object per line
            sys.stdout.write("".join(json.dumps(m, separators=(",", ":")) + "\n" for m in made))

    @app.command("getaddress")
    def getaddress(
        signature_id: SignatureId,
        index: Index,
        legacy: Annotated[
            bool, typer.Option("--legacy", help="BTC: the P2PKH address (1.../m...) of Tatum SDK 1.33 and older")
        ] = False,
        as_json: Json = False,
    ) -> None:
        """Tatum: the address of a wallet at an index, from the public index

        No token needed.
        """
        from agent.cli.session import load_public
        from agent.wallets.addresses import MAX_INDEX, deposit_address

        if not 0 <= index <= MAX_INDEX:
            raise UsageError("index must be between 0 and 2^31-1")
        row = load_public(Paths.resolve()).wallet(signature_id)
        from agent.chains import supported_chains

        if row.chain not in supported_chains():
            if row.address and index == 0:
                _dump({"address": row.address})
                return
            raise UsageError(f"no {row.chain} signer here yet: this agent derives no {row.chain} addresses")
        if legacy:
            from agent.chains.utxo import BTC, AddressKind

            if row.chain != "BTC" or not row.xpub:
                raise UsageError("--legacy is for BTC mnemonic wallets (P2PKH addresses of Tatum SDK <= 1.33)")
            _dump({"address": BTC.address_from_xpub(row.xpub, index, testnet=row.testnet, kind=AddressKind.P2PKH)})
            return
        _dump({"address": deposit_address(row, index)})

    @app.command("getprivatekey")
    def getprivatekey(
        signature_id: SignatureId,
        index: Index,
        operator: Operators = None,
        pin_stdin: PinStdin = False,
        as_json: Json = False,
    ) -> None:
        """Tatum: the private key at an index

        A quorum must approve the reveal (audited, alerted).
        """
        from agent.chains import get_chain, supported_chains
        from agent.chains.wallets import private_key_text
        from agent.cli.session import load_public
        from agent.tatum.entries import entry_from_vault

        paths = Paths.resolve()
        row = load_public(paths, quiet=True).wallet(signature_id)
        if not 0 <= index < 2**31:
            raise UsageError("index must be between 0 and 2^31-1")
        with reveal(
            paths,
            action=f"getprivatekey {index}",
            signature_ids=[signature_id],
            target="stdout",
            operators=operator,
            pin_stdin=pin_stdin,
        ) as vault:
            wallet_type, secret = vault.read_secret(signature_id)
            try:
                entry = entry_from_vault(row, wallet_type, secret)
            finally:
                secret[:] = bytes(len(secret))
        if "mnemonic" in entry and row.chain in supported_chains():
            impl = get_chain(row.chain)
            key = impl.private_key_from_mnemonic(" ".join(entry["mnemonic"].split()), index, testnet=row.testnet)
            text = bytearray()
            try:
                text = private_key_text(impl, key, testnet=row.testnet)
                _dump({"privateKey": text.decode()})  # the command's output, to stdout only (a quorum unlocked)
            finally:
                key[:] = bytes(len(key))
                text[:] = bytes(len(text))
            return
        # Tatum: the stored secret if there is one; never the empty mnemonic's key Tatum prints.
        value = entry.get("secret") or entry.get("privateKey")
        if not isinstance(value, str):
            raise UsageError(f"no {row.chain} signer here yet, and the wallet holds no stored private key")
        _dump({"privateKey": value})

    @app.command("getmanagedwallet")
    def getmanagedwallet(
        signature_id: SignatureId, operator: Operators = None, pin_stdin: PinStdin = False, as_json: Json = False
    ) -> None:
        """Tatum: the whole wallet entry, mnemonic included

        A quorum must approve the reveal (audited, alerted).
        """
        from agent.cli.session import load_public
        from agent.tatum.migrate import export_document

        paths = Paths.resolve()
        row = load_public(paths, quiet=True).wallet(signature_id)
        with reveal(
            paths,
            action="getmanagedwallet",
            signature_ids=[signature_id],
            target="stdout",
            operators=operator,
            pin_stdin=pin_stdin,
        ) as vault:
            doc = export_document(vault, [row])
        _dump(doc[signature_id])

    @app.command("removewallet")
    def removewallet(
        signature_id: SignatureId, operator: Operators = None, pin_stdin: PinStdin = False, as_json: Json = False
    ) -> None:
        """Tatum: delete a wallet and its secret (a quorum must unlock)

        The same as `wallet remove`.
        """
        from agent.cli.session import load_public, unlock

        paths = Paths.resolve()
        load_public(paths, quiet=True).wallet(signature_id)  # an unknown id fails before any touch
        with unlock(paths, operators=operator, pin_stdin=pin_stdin) as vault:
            vault.transact(lambda v: v.remove_wallet(signature_id))
        emit({"removed": signature_id}, as_json, f"Removed {signature_id}.")

    @app.command("checkconfig")
    def checkconfig(as_json: Json = False) -> None:
        """Tatum: version, data directory, wallet.dat and the Tatum variables set (masked)

        No token needed.
        """
        from agent.cli import version
        from agent.cli.context import HOME_ENV

        paths = Paths.resolve()
        env = {name: _mask(name, os.environ.get(name)) for name in TATUM_ENV}
        data = {
            "version": version(),
            "walletPath": str(paths.vault),
            "walletExists": paths.vault.exists(),
            "walletStoreType": "TOKEN_QUORUM",
            "dataDirectory": str(paths.home),
            "dataDirectoryFrom": HOME_ENV if os.environ.get(HOME_ENV) else "default",
            "environment": env,
        }
        if as_json:
            emit(data, True)
            return
        rows = [
            ("Version", data["version"]),
            ("Wallet file path", data["walletPath"]),
            ("Wallet exists", str(data["walletExists"]).lower()),
            ("Wallet store type", data["walletStoreType"]),
            ("Data directory", f"{data['dataDirectory']} ({data['dataDirectoryFrom']})"),
            *((name, value if value is not None else "-") for name, value in env.items()),
        ]
        print("\n".join(f"{k:<32} : {v}" for k, v in rows))


def _mask(name: str, value: str | None) -> str | None:
    """Tatum's masking: an API key keeps 6 + 6 characters, a password its first 6."""
    if value is None:
        return None
    if name == "TATUM_API_KEY":
        return value[:6] + "*" * max(len(value) - 12, 0) + value[-6:] if len(value) > 12 else "*" * len(value)
    if "PASSWORD" in name:
        return value[:6] + "*****"
    return value


def run_report(ids: str | None, *, operators: Sequence[str] | None, pin_stdin: bool) -> dict[str, Any]:
    """Tatum's ``report [id1,id2,...]`` for ``report wallets``: opens the vault to check every secret.

    No secret is printed, so the plain quorum unlock suffices (Tatum asks for its password here).
    """
    import platform

    from agent.cli import version
    from agent.cli.session import load_public, unlock
    from agent.tatum.migrate import report_wallet

    paths = Paths.resolve()
    public = load_public(paths, quiet=True)
    wanted = [i.strip() for i in ids.split(",") if i.strip()] if ids else [w.signature_id for w in public.wallets()]
    warnings = []
    rows = []
    for sig in wanted:
        try:
            rows.append(public.wallet(sig))
        except UsageError:
            warnings.append(f"No wallet found for signatureId: {sig}")
    wallets: dict[str, Any] = {}
    if rows:
        with unlock(paths, operators=operators, pin_stdin=pin_stdin) as vault:
            for row in rows:
                wallet_type, secret = vault.read_secret(row.signature_id)
                try:
                    wallets[row.signature_id] = report_wallet(row, wallet_type, secret)
                finally:
                    secret[:] = bytes(len(secret))
    return {
        "system": {
            "kmsAgentVersion": version(),
            "pythonVersion": platform.python_version(),
            "store": {"type": "TOKEN_QUORUM", "exists": paths.vault.exists()},
        },
        "wallets": wallets,
        "warnings": warnings,
    }
