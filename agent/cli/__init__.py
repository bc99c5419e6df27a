"""kms-agent command line: a thin typer layer. Commands parse, prompt and print; the work is elsewhere.

Every error an operator can cause is a :class:`agent.errors.KmsAgentError`; :func:`main` prints it as
``kms-agent: error: ...`` (plus ``hint:`` lines) and exits with its documented code. Command-line
mistakes (typer's and click's usage errors) become the same one line and exit 2. With ``--json``
anywhere in argv, the error also goes to stdout as one document::

    {"error": {"code": "usage", "exit": 2, "message": "...", "hint": "..." | null}}

(plus ``"request_id"`` inside ``"error"`` when the error concerns a request). Only bugs show a
traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, MutableMapping
from enum import StrEnum
from typing import Annotated, Any, NamedTuple, NoReturn

import typer
from typer.core import TyperGroup

from agent.errors import KmsAgentError, PinRequired, error_code

PROG = "kms-agent"
LOG_LEVEL_ENV = "KMS_AGENT_LOG_LEVEL"


class _Group(TyperGroup):
    """Plain click help (typer's rich formatting imports rich: +80 ms), command lines never cut short.

    click cuts each command's line at the terminal width with ``...``; here it gets its whole first
    sentence and wraps, as rich's panels did.
    """

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=sys.maxsize)))
        _write_commands(formatter, rows)


def _write_commands(formatter: Any, rows: list[tuple[str, str]]) -> None:
    if rows:
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class _Entry(NamedTuple):
    module: str
    #: The module's ``typer.Typer`` for a group; None for commands its ``register(app)`` adds.
    group: str | None
    #: The command's line in ``kms-agent --help``: its first sentence (tests/cli/test_startup.py checks).
    help: str


#: Every command under the root, in the order ``--help`` lists them. A command's module is imported,
#: and its click command built, only when that command runs or shows its help: ``kms-agent --help``
#: imports none of them.
COMMANDS: dict[str, _Entry] = {
    "init": _Entry(
        "init_cmd", None, "create a vault: enrol each operator's first token and split the data key across them"
    ),
    "status": _Entry("status_cmd", None, "show the data directory, the vault and its operators (no token needed)"),
    "unlock": _Entry("unlock_cmd", None, "open the vault with a quorum of touches, check it, and close it again"),
    "demo": _Entry(
        "demo_cmd", None, "run the end-to-end demo on simulated tokens (touch and PIN answered automatically)"
    ),
    "doctor": _Entry(
        "doctor_cmd",
        None,
        "check token access (udev, pcscd), tokens present and the vault; exit 1 if something is wrong",
    ),
    "sweep": _Entry(
        "sweep_cmd", None, "build the unsigned sweep of a wallet's funds to a cold address (optionally queue it)"
    ),
    "approve": _Entry(
        "withdraw_cmd", None, "approve a withdrawal with PIN and touch; signs as soon as the quorum is met"
    ),
    "reject": _Entry("withdraw_cmd", None, "veto a withdrawal: it can no longer be signed"),
    "daemon": _Entry(
        "daemon_cmd",
        None,
        "poll a Tatum-compatible API for pending transactions; sign only what policy and operators approve",
    ),
    "serve": _Entry(
        "serve_cmd",
        None,
        "serve the local API for applications until SIGTERM or Ctrl-C (Unix socket; --tcp for loopback)",
    ),
    "broadcast": _Entry(
        "broadcast_cmd",
        None,
        "send signed transactions to their chain's node, recording every attempt in the audit log",
    ),
    "watch": _Entry(
        "broadcast_cmd",
        None,
        "follow broadcast transactions to a final state and record confirmations (until SIGTERM or Ctrl-C)",
    ),
    "node": _Entry("broadcast_cmd", "node_app", "the node each chain's signed transactions are sent to"),
    "callback": _Entry(
        "broadcast_cmd", "callback_app", "the application's callback for on-chain changes (HMAC-signed)"
    ),
    "token": _Entry("token_cmd", "app", "enrol, list and remove tokens"),
    "operator": _Entry("operator_cmd", "app", "operators and their tokens"),
    "vault": _Entry("vault_cmd", "app", "check and trust wallet.dat, rotate its data key"),
    "backup": _Entry("backup_cmd", None, "back up wallet.dat (verified, still encrypted), verify a backup"),
    "restore": _Entry(
        "backup_cmd",
        None,
        "replace wallet.dat with a verified backup; an older generation only when explicitly allowed",
    ),
    "wallet": _Entry("wallet_cmd", "app", "generate, store, list and derive wallets"),
    "sim": _Entry("sim_cmd", "app", "simulated tokens (insecure; demos and tests)"),
    "recovery": _Entry("recovery_cmd", "app", "recovery words: test them, or use them to replace lost tokens"),
    "recover": _Entry("recovery_cmd", None, "every token lost: open with recovery shares, enrol new tokens, rotate"),
    "request": _Entry("withdraw_cmd", "app", "withdrawal requests: create, list, show"),
    "audit": _Entry("audit_cmd", "audit_app", "the hash-chained audit log"),
    "policy": _Entry("audit_cmd", "policy_app", "the custody policy (in the signed vault header)"),
    "report": _Entry("audit_cmd", "report_app", "reports of withdrawals and anomalies"),
    # Coming from Tatum KMS (docs/migrating-from-tatum.md): import/export and Tatum's command names.
    "import": _Entry("tatum_cmd", None, "import a Tatum KMS wallet.dat: every wallet keeps its signatureId"),
    "export": _Entry(
        "tatum_cmd", None, "print every wallet with its secret (Tatum's export), or write a Tatum wallet.dat"
    ),
    "generatewallet": _Entry("tatum_cmd", None, "Tatum: print a new mnemonic and its xpub"),
    "generatemanagedwallet": _Entry("tatum_cmd", None, "Tatum: generate a mnemonic wallet inside the vault"),
    "storemanagedwallet": _Entry("tatum_cmd", None, "Tatum: store a mnemonic read from stdin or a hidden prompt"),
    "storemanagedprivatekey": _Entry(
        "tatum_cmd", None, "Tatum: store a private key read from stdin or a hidden prompt"
    ),
    "generatemanagedprivatekeybatch": _Entry(
        "tatum_cmd", None, "Tatum: generate COUNT private-key wallets in one vault write"
    ),
    "getaddress": _Entry("tatum_cmd", None, "Tatum: the address of a wallet at an index, from the public index"),
    "getprivatekey": _Entry("tatum_cmd", None, "Tatum: the private key at an index"),
    "getmanagedwallet": _Entry("tatum_cmd", None, "Tatum: the whole wallet entry, mnemonic included"),
    "removewallet": _Entry("tatum_cmd", None, "Tatum: delete a wallet and its secret (a quorum must unlock)"),
    "checkconfig": _Entry(
        "tatum_cmd", None, "Tatum: version, data directory, wallet.dat and the Tatum variables set (masked)"
    ),
}


def _build(name: str) -> Any:
    """The click command for ``COMMANDS[name]``, built by typer exactly as an eagerly registered one."""
    import importlib

    import typer.main

    entry = COMMANDS[name]
    module = importlib.import_module(f"agent.cli.{entry.module}")
    holder = typer.Typer(rich_markup_mode=None, add_completion=False)
    if entry.group is None:
        module.register(holder)
    else:
        holder.add_typer(getattr(module, entry.group), name=name, cls=_Group)
    return typer.main.get_group(holder).commands[name]


class _LazyCommands(MutableMapping[str, Any]):
    """The root's commands by name (``COMMANDS`` order); each is built on first access."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = _build(name)
        return self._built[name]

    def __setitem__(self, name: str, cmd: Any) -> None:
        self._built[name] = cmd

    def __delitem__(self, name: str) -> None:
        raise TypeError("kms-agent's commands are fixed")

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*COMMANDS, *self._built]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*COMMANDS, *self._built]))


class _Root(_Group):
    """The ``kms-agent`` group: lists its commands from ``COMMANDS`` and imports only the one that runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands()

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        _write_commands(formatter, [(name, entry.help) for name, entry in COMMANDS.items()])


app = typer.Typer(
    name=PROG,
    help="Self-custodial key management: a vault that opens only for a quorum of hardware tokens.",
    cls=_Root,
    no_args_is_help=True,
    # Plain click help: typer's rich help and errors would import rich (and markdown_it, pygments).
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    # --install-completion / --show-completion. typer imports its completion module either way, so
    # this costs --help nothing measurable (the completion scripts are only built when asked for).
    add_completion=True,
)


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def version() -> str:
    """The installed distribution's version; the package's own when it runs from a bare checkout."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(PROG)
    except PackageNotFoundError:
        from agent import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        print(f"{PROG} {version()}")
        raise typer.Exit()


def configure_logging(level: LogLevel) -> None:
    """The ``agent`` logger (every module's ``getLogger(__name__)``) to stderr at ``level``."""
    import logging

    logger = logging.getLogger("agent")
    logger.setLevel(level.value.upper())
    if not any(getattr(h, "_kms_agent", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(name)s: %(message)s"))
        handler._kms_agent = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


@app.callback()
def _global_options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, expose_value=False, callback=_print_version, help="print the version and exit"
        ),
    ] = False,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            "-l",
            "--log-level",
            envvar=LOG_LEVEL_ENV,
            case_sensitive=False,
            help="diagnostics on stderr from this level up",
        ),
    ] = LogLevel.warning,
) -> None:
    configure_logging(log_level)


#: Global options that take a value, skipped when naming the command for the events log.
_GLOBAL_WITH_VALUE = ("-l", "--log-level")


def _command_words(args: list[str]) -> str:
    """``wallet address`` for ``-l debug wallet address ID 0``: at most two words, global options skipped."""
    words: list[str] = []
    rest = iter(args)
    for arg in rest:
        if not words and arg in _GLOBAL_WITH_VALUE:
            next(rest, None)
            continue
        if not words and arg.startswith("--log-level="):
            continue
        if arg.startswith("-") or len(words) == 2:
            break
        words.append(arg)
    return " ".join(words)


def _record_event(args: list[str], exc: KmsAgentError) -> None:
    from agent.cli.context import Paths
    from agent.events import record

    record(Paths.resolve().state, _command_words(args), exc)


def _no_core_dumps() -> None:
    """A crash while keys are in memory must not leave them in a core file."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def _fail(
    exit_code: int,
    message: str,
    hint: str | None = None,
    *,
    as_json: bool,
    request_id: str | None = None,
    code: str | None = None,
) -> NoReturn:
    """Print the one-line error (and hints) on stderr, the JSON document on stdout with ``--json``; exit."""
    if as_json:
        import json

        error: dict[str, Any] = {
            "code": code or error_code(exit_code),
            "exit": exit_code,
            "message": message,
            "hint": hint,
        }
        if request_id is not None:
            error["request_id"] = request_id
        print(json.dumps({"error": error}, indent=2), flush=True)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    for line in (hint or "").splitlines():
        print(f"{PROG}: hint: {line}", file=sys.stderr)
    sys.exit(exit_code)


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """``name`` (``ClickException``, ``UsageError``, ``Abort``, ``Exit``) from every click copy in use.

    typer >= 0.28 bundles its own click as ``typer._click`` and raises those classes; older typer
    raises the ``click`` package's. Found through what typer exports (``BadParameter``, ``Abort``,
    ``Exit``), plus the ``click`` package when something has imported it.
    """
    found: list[type[BaseException]] = []
    for exported in (typer.BadParameter, typer.Abort, typer.Exit):
        found += [c for c in exported.__mro__ if c.__name__ == name]
    click = sys.modules.get("click")
    exceptions = getattr(click, "exceptions", None)
    if exceptions is not None and isinstance(getattr(exceptions, name, None), type):
        found.append(getattr(exceptions, name))
    return tuple(dict.fromkeys(found))


def _usage_hint(exc: BaseException) -> str | None:
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return None
    lines = [ctx.get_usage().strip()]
    if ctx.command.get_help_option(ctx) is not None:
        lines.append(f"try '{ctx.command_path} {ctx.help_option_names[0]}' for help")
    return "\n".join(lines)


def _pin_prompt_label(exc: BaseException) -> str | None:
    """The token label when end of input hit :meth:`CliPrompts.pin`'s prompt; None for any other prompt."""
    from agent.cli.context import CliPrompts

    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is CliPrompts.pin.__code__:
            return str(tb.tb_frame.f_locals.get("token_label", "the token"))
        tb = tb.tb_next
    return None


def _interrupted(as_json: bool) -> NoReturn:
    _fail(130, "interrupted; nothing was written", as_json=as_json)


def _handle_abort(exc: BaseException, args: list[str], as_json: bool) -> NoReturn:
    """typer turns EOF and Ctrl-C at a prompt into ``Abort``; the original is its cause or context."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, EOFError):
        cause = exc
    if isinstance(cause, KeyboardInterrupt):
        _interrupted(as_json)
    if isinstance(cause, EOFError):
        label = _pin_prompt_label(cause)
        if label is not None:
            pin_error = PinRequired(f"no PIN for {label}: end of input at the prompt")
            _record_event(args, pin_error)
            _fail(pin_error.exit_code, pin_error.message, as_json=as_json)
        _fail(2, "end of input at a prompt: nothing was entered", as_json=as_json)
    _fail(1, "aborted", as_json=as_json, code="aborted")


def _operator_file(exc: OSError, args: list[str]) -> bool:
    """True when the file that failed is one the operator named on the command line."""
    names = (exc.filename, exc.filename2)
    failed = {os.path.normpath(os.fsdecode(n)) for n in names if isinstance(n, str | bytes | os.PathLike)}
    named = {os.path.normpath(a.partition("=")[2] if a.startswith("--") else a) for a in args if a.strip("-=")}
    return bool(failed & named)


#: `kms-agent report ...` subcommands: anything else after `report` is Tatum's `report id1,id2` form.
_REPORT_COMMANDS = frozenset({"withdrawals", "anomalies", "wallets"})


def _tatum_report(args: list[str]) -> list[str]:
    """Tatum's ``report id1,id2`` is our ``report wallets id1,id2`` (docs/migrating-from-tatum.md)."""
    if len(args) >= 2 and args[0] == "report" and args[1] not in _REPORT_COMMANDS and not args[1].startswith("-"):
        return ["report", "wallets", *args[1:]]
    return args


def main(argv: list[str] | None = None) -> None:
    _no_core_dumps()
    args = _tatum_report(list(sys.argv[1:] if argv is None else argv))
    as_json = "--json" in args
    try:
        rc = app(args=args, prog_name=PROG, standalone_mode=False)
    except KmsAgentError as exc:
        _record_event(args, exc)
        _fail(exc.exit_code, exc.message, exc.hint, as_json=as_json, request_id=exc.request_id)
    except KeyboardInterrupt:
        _interrupted(as_json)
    except EOFError as exc:
        _handle_abort(exc, args, as_json)
    except Exception as exc:
        if isinstance(exc, _click_classes("Abort")):
            _handle_abort(exc, args, as_json)
        if isinstance(exc, _click_classes("Exit")):
            sys.exit(getattr(exc, "exit_code", 0))
        if isinstance(exc, _click_classes("UsageError")):
            message = exc.format_message().strip()  # type: ignore[attr-defined]
            if type(exc).__name__ == "NoArgsIsHelpError":
                if message:  # the help text, on stdout as typer's rich help printed it
                    print(message, flush=True)
                message = "missing command"
            _fail(2, message or "bad usage", _usage_hint(exc), as_json=as_json)
        if isinstance(exc, _click_classes("ClickException")):
            # FileError: a file given as an argument could not be opened, the operator's to fix.
            code = 2 if type(exc).__name__ == "FileError" else int(getattr(exc, "exit_code", 1))
            _fail(code, exc.format_message(), as_json=as_json)  # type: ignore[attr-defined]
        if isinstance(exc, OSError) and exc.strerror and _operator_file(exc, args):
            name = os.fsdecode(exc.filename) if exc.filename is not None else "file"
            _fail(2, f"{name}: {exc.strerror}", as_json=as_json)
        if as_json:  # a bug: the document for the caller, the traceback (below) for us
            import json

            message = f"unexpected error: {type(exc).__name__}: {exc}"
            print(json.dumps({"error": {"code": "internal", "exit": 1, "message": message, "hint": None}}, indent=2))
            sys.stdout.flush()
        raise
    if rc == 130:  # typer turns Ctrl-C inside a command into Exit(130)
        _interrupted(as_json)
    sys.exit(rc if isinstance(rc, int) else 0)
