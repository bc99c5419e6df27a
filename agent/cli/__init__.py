"""kms-agent command line: a thin typer layer. Commands parse, prompt and print; the work is elsewhere.

Every error an operator can cause is a :class:`agent.errors.KmsAgentError`; :func:`main` prints it as
``kms-agent: error: ...`` (plus ``hint:`` lines) and exits with its documented code. Only bugs show a
traceback.
"""

from __future__ import annotations

import sys

import typer

from agent.errors import KmsAgentError

app = typer.Typer(
    name="kms-agent",
    help="Self-custodial key management: a vault that opens only for a quorum of hardware tokens.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register() -> None:
    from agent.cli import (
        audit_cmd,
        demo_cmd,
        doctor_cmd,
        init_cmd,
        operator_cmd,
        recovery_cmd,
        sim_cmd,
        status_cmd,
        sweep_cmd,
        token_cmd,
        unlock_cmd,
        vault_cmd,
        wallet_cmd,
        withdraw_cmd,
    )

    init_cmd.register(app)
    status_cmd.register(app)
    unlock_cmd.register(app)
    demo_cmd.register(app)
    doctor_cmd.register(app)
    sweep_cmd.register(app)
    app.add_typer(token_cmd.app, name="token")
    app.add_typer(operator_cmd.app, name="operator")
    app.add_typer(vault_cmd.app, name="vault")
    app.add_typer(wallet_cmd.app, name="wallet")
    app.add_typer(sim_cmd.app, name="sim")
    app.add_typer(recovery_cmd.app, name="recovery")
    app.add_typer(withdraw_cmd.app, name="request")
    withdraw_cmd.register(app)
    app.add_typer(audit_cmd.audit_app, name="audit")
    app.add_typer(audit_cmd.policy_app, name="policy")
    app.add_typer(audit_cmd.report_app, name="report")


_register()


def _record_event(argv: list[str] | None, exc: KmsAgentError) -> None:
    from agent.cli.context import Paths
    from agent.events import record

    words: list[str] = []
    for arg in argv if argv is not None else sys.argv[1:]:
        if arg.startswith("-") or len(words) == 2:
            break
        words.append(arg)
    record(Paths.resolve().state, " ".join(words), exc)


def _no_core_dumps() -> None:
    """A crash while keys are in memory must not leave them in a core file."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> None:
    _no_core_dumps()
    try:
        rc = app(args=argv, standalone_mode=False)
    except KmsAgentError as exc:
        _record_event(argv, exc)
        print(f"kms-agent: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            for line in exc.hint.splitlines():
                print(f"kms-agent: hint: {line}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("kms-agent: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.Abort):
            print("kms-agent: aborted; nothing was written", file=sys.stderr)
            sys.exit(1)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
