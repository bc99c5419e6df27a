"""``kms-agent daemon``: Tatum KMS's daemon (same flags, same API calls), signing only what was approved.

Flags are spelled as Tatum KMS spells them (``--runOnce``) and in kebab case (``--run-once``), like
Tatum's meow; unlike meow, an unknown flag is an error (exit 2). docs/daemon.md has the mapping.

Exit codes: 0 (``--runOnce`` pass without errors, or the loop ended by SIGTERM/SIGINT); 1 (the
``--runOnce`` pass could not poll or report: the Tatum API was down or answered nonsense); 2 (bad
flags, no API key, mainnet without ``--externalUrl``); 7 (no vault); 9 (another daemon holds this
data directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.daemon.options import DEFAULT_MAX_BATCH, DEFAULT_PERIOD, UrlMethod


def register(app: typer.Typer) -> None:
    @app.command("daemon")
    def daemon(
        period: Annotated[
            float, typer.Option("--period", help="seconds between polls (Tatum: --period)")
        ] = DEFAULT_PERIOD,
        chain: Annotated[
            str | None,
            typer.Option("--chain", help="chains to poll, comma-separated (default: Tatum's default list, ours only)"),
        ] = None,
        testnet: Annotated[
            bool, typer.Option("--testnet", help="serve the testnet wallets (default: mainnet)")
        ] = False,
        run_once: Annotated[bool, typer.Option("--runOnce", "--run-once", help="one polling pass, then exit")] = False,
        wallets: Annotated[
            str | None,
            typer.Option("--wallets", help="runOnce only: these signatureIds instead of the vault's, comma-separated"),
        ] = None,
        transaction_ids: Annotated[
            str | None,
            typer.Option(
                "--transactionIds", "--transaction-ids", help="runOnce only: only these pending ids, comma-separated"
            ),
        ] = None,
        external_url: Annotated[
            str | None,
            typer.Option(
                "--externalUrl",
                "--external-url",
                help="4-eye check: a 2xx from URL/<id> lets a transaction through (required on mainnet)",
            ),
        ] = None,
        external_url_method: Annotated[
            UrlMethod,
            typer.Option(
                "--externalUrlMethod",
                "--external-url-method",
                case_sensitive=False,
                help="GET URL/<id>, or POST it the pending transaction",
            ),
        ] = UrlMethod.GET,
        api_key: Annotated[
            str | None,
            typer.Option(
                "--apiKey",
                "--api-key",
                help="Tatum API key (visible to local users: prefer TATUM_API_KEY in --envFile)",
            ),
        ] = None,
        env_file: Annotated[
            Path | None,
            typer.Option("--envFile", "--env-file", help="dotenv file (default: ~/.tatumrc/.env if it exists)"),
        ] = None,
        operator: Annotated[
            list[str] | None,
            typer.Option(
                "--operator",
                help="operator whose attached token approves each pass's batch (repeat; none: requests wait)",
            ),
        ] = None,
        max_batch: Annotated[
            int, typer.Option("--max-batch", help="pending transactions created and approved per batch")
        ] = DEFAULT_MAX_BATCH,
        as_json: Annotated[bool, typer.Option("--json", help="one JSON line per pass on stdout")] = False,
    ) -> None:
        """poll a Tatum-compatible API for pending transactions; sign only what policy and operators approve

        Every pending transaction becomes one withdrawal request (policy, touch approvals, audit log).
        Approved ones are signed and broadcast through Tatum; denied ones are reported to Tatum.
        """
        from agent.cli.context import CliPrompts, Paths
        from agent.cli.session import load_public
        from agent.daemon.options import resolve
        from agent.daemon.runner import Daemon, DaemonLock, install_signal_handlers, log, print_report
        from agent.daemon.tatum_api import TatumApiError

        paths = Paths.resolve()
        load_public(paths)  # no vault, nothing to serve (exit 7); warns when its tokens are simulated
        options = resolve(
            period=period,
            chain=chain,
            testnet=testnet,
            run_once=run_once,
            wallets=wallets,
            transaction_ids=transaction_ids,
            external_url=external_url,
            external_method=external_url_method,
            api_key=api_key,
            env_file=env_file,
            operators=tuple(operator or ()),
            max_batch=max_batch,
            as_json=as_json,
        )
        if api_key is not None:
            log("warning: --apiKey puts the key in the process list; prefer TATUM_API_KEY in the env file")
        with DaemonLock(paths.state):
            runner = Daemon(paths.home, options, prompts=CliPrompts(paths))
            try:
                install_signal_handlers(runner)
                log(
                    f"polling {options.api_url} for {', '.join(options.chains)} "
                    f"({'testnet' if options.testnet else 'mainnet'}"
                    + (", once" if options.run_once else f", every {options.period:g} s")
                    + (f", approving as {', '.join(options.operators)}" if options.operators else ", no approver")
                    + ")"
                )
                code = runner.run(print_report if as_json else None)
            finally:
                runner.close()
        if code:
            raise TatumApiError("the pass could not poll or report everything (see the log above)")
