"""``kms-agent init``: operators, quorum, each operator's first token, recovery words."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.context import CliPrompts, Paths, emit, err
from agent.cli.options import AllowUnattested
from agent.errors import UsageError


def parse_operator(value: str) -> tuple[str, str]:
    name, sep, token = value.partition("=")
    if not sep or not name or not token:
        raise UsageError(f"--operator takes NAME=TOKEN (e.g. alice=sim:alice), not {value!r}")
    return name.strip(), token.strip()


def _ask_back_recovery(words: list[str], threshold: int) -> list[str]:
    """Interactive test recovery: the officers type back ``threshold`` of the shares just shown."""
    err(f"\nTest recovery: type back any {threshold} of the shares above, one per line.")
    typed = []
    for i in range(threshold):
        line = typer.prompt(f"share {i + 1} of {threshold}", hide_input=True)
        typed.append(line)
    return typed


def _write_share_files(directory: Path, words: list[str], *, home: Path) -> list[str]:
    """One 0600 file per share in a new 0700 directory: hand each file to a different officer."""
    from agent.files import atomic_write

    directory = directory.absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(f"--recovery-out {directory} must be a new or empty directory (one file per share)")
    if directory == home or home in directory.parents:
        err("warning: the recovery shares are being written inside the data directory; move each one elsewhere")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    files = []
    for i, word in enumerate(words, 1):
        path = directory / f"recovery-share-{i}-of-{len(words)}.txt"
        atomic_write(path, f"recovery share {i} of {len(words)}:\n{word}\n".encode())
        files.append(str(path))
    return files


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        operator: Annotated[
            list[str],
            typer.Option(
                "--operator", help="NAME=TOKEN, once per operator (TOKEN: sim:NAME, fido2[:ID] or piv[:SERIAL])"
            ),
        ],
        quorum: Annotated[int, typer.Option("--quorum", help="distinct operators needed to open the vault")],
        recovery_threshold: Annotated[int, typer.Option(help="recovery shares needed to recover")] = 2,
        recovery_shares: Annotated[int, typer.Option(help="recovery shares to create")] = 3,
        recovery_out: Annotated[
            Path | None,
            typer.Option(
                help="write each recovery share to its own 0600 file in this new directory (one file never holds "
                "a quorum of shares), instead of the terminal"
            ),
        ] = None,
        kind: Annotated[str, typer.Option(help="token kind for sim: tokens: fido2 or piv")] = "fido2",
        rp_id: Annotated[str, typer.Option(help="FIDO2 relying-party id for this deployment")] = "kms-agent.local",
        pin_stdin: Annotated[bool, typer.Option(help="read token PINs from stdin, one per line")] = False,
        allow_unattested: AllowUnattested = False,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """create a vault: enrol each operator's first token and split the data key across them"""
        from agent.policy import initial_policy
        from agent.tokens.discovery import open_token
        from agent.vault.vault import create_vault

        paths = Paths.resolve()
        specs = [parse_operator(o) for o in operator]
        if any(spec.startswith("sim:") for _, spec in specs):
            err("WARNING: enrolling SIMULATED tokens: insecure, for demos and tests only.")
        tokens = [
            (name, open_token(spec, paths.home, kind=kind, allow_unattested=allow_unattested)) for name, spec in specs
        ]
        prompts = CliPrompts(paths, pin_stdin=pin_stdin)
        pending = create_vault(
            paths.vault,
            paths.pin,
            tokens,
            quorum,
            prompts,
            policy=initial_policy(quorum),
            recovery_threshold=recovery_threshold,
            recovery_shares=recovery_shares,
            rp_id=rp_id,
        )
        try:
            words = pending.recovery_shares
            text = "\n\n".join(f"recovery share {i + 1} of {len(words)}:\n{w}" for i, w in enumerate(words))
            share_files: list[str] = []
            if recovery_out is not None:
                share_files = _write_share_files(recovery_out, words, home=paths.home)
                pending.check_recovery(words[:recovery_threshold])
            elif sys.stdin.isatty() and not as_json:
                err(
                    "\nRECOVERY SHARES: shown once. Give one to each recovery officer; "
                    f"any {recovery_threshold} of them open the vault without tokens.\n"
                )
                err(text)
                pending.check_recovery(_ask_back_recovery(words, recovery_threshold))
            else:
                pending.check_recovery(words[:recovery_threshold])
            vault = pending.commit()
        except BaseException:
            pending.vault.close()
            raise
        with vault:
            header = vault.header
            result: dict[str, Any] = {
                "vault": str(paths.vault),
                "vault_id": header.vault_id.hex(),
                "fingerprint": vault.fingerprint,
                "generation": header.generation,
                "quorum": header.quorum,
                "operators": [{"name": n, "token": s} for n, s in specs],
                "recovery": {
                    "threshold": recovery_threshold,
                    "shares": recovery_shares,
                    "dir": str(recovery_out) if recovery_out else None,
                    "files": share_files,
                    "test_recovered": True,
                },
                "simulated": header.simulated,
            }
            if recovery_out is None and (as_json or not sys.stdin.isatty()):
                result["recovery"]["words"] = words
                if not as_json:
                    err("\nRECOVERY SHARES: shown once; store them apart:\n")
                    print(text)
        emit(
            result,
            as_json,
            f"\nCreated {paths.vault} ({quorum}-of-{len(specs)} operators).\n"
            f"Vault fingerprint: {result['fingerprint']}\n"
            "Write the fingerprint down: `kms-agent vault trust` needs it to trust a restored copy.",
        )
