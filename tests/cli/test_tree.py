"""Every group and command of the CLI, fed the usual mistakes: never a traceback, always a documented code.

The whole typer tree is walked from ``agent.cli.app``. Each group and command gets no arguments, an
unknown option, a bad value for its first int/float/enum parameter and (with its required arguments
filled in) end of input on stdin; then the cases from issue 9 one by one, and end of input (Ctrl-D)
at real terminal prompts. Every case runs the real CLI, ``python -m agent``, in a private
``KMS_AGENT_HOME``. The cases are independent processes, so one fixture runs them all on a thread
pool and the tests only read the results (the module stays on one xdist worker for that).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer.main

from agent.cli import app
from agent.errors import EXIT_CODES
from tests.conftest import REPO, init_args

pytestmark = pytest.mark.xdist_group("cli_tree")

ETH_KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
#: Commands that are not run (only parsed): ``demo`` runs the whole end-to-end demo (scripts/demo does).
NOT_RUN = {"demo", "serve"}  # serve runs until SIGTERM (tests/service start it)
#: Commands whose exit code depends on the machine (``doctor`` exits 1 when pcscd or udev is missing).
ANY_DOCUMENTED = {"doctor"}
#: Groups that run a default command when given no subcommand (``backup`` is ``backup create``).
DEFAULT_COMMAND = {"backup"}
#: Commands that need an option even though none is marked required.
NEEDS_OPTIONS = {"sim pcsc": 2}
WALLET = "{wallet}"  # replaced by the signature id of the wallet stored in the vault fixture

#: Values for required arguments and options, by parameter name, so that a command gets past parsing.
DUMMIES = {
    "signature_id": WALLET,
    "chain": "ETH",
    "request_id": "0" * 32,
    "token": "sim:zed",
    "label": "sim:zed",
    "fingerprint": "00",
    "name": "zed",
    "file": "-",
    "operator": "alice",
    "to": "0x" + "11" * 20,
}


# --- the tree -------------------------------------------------------------------------------------


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


TREE = list(_walk(typer.main.get_command(app)))


def _is_group(cmd: Any) -> bool:
    return hasattr(cmd, "commands")


def _name(path: tuple[str, ...]) -> str:
    return " ".join(path) or "kms-agent"


def _params(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if p.name != "help" and not getattr(p, "hidden", False)]


def _kind(param: Any) -> str | None:
    """``int``, ``float`` or ``choice`` for the parameter types a bad value can be given to."""
    if getattr(param.type, "choices", None):
        return "choice"
    name = getattr(param.type, "name", "")
    if name.startswith("integer"):
        return "int"
    if name.startswith("float"):
        return "float"
    return None


def _dummy(param: Any) -> str:
    kind = _kind(param)
    if kind == "choice":
        return str(param.type.choices[0])
    if kind in ("int", "float"):
        return "1" if param.param_type_name == "option" else "0"
    return DUMMIES.get(param.name, "x")


def _filled(cmd: Any, bad: Any = None, bad_value: str = "") -> list[str]:
    """Arguments for every required parameter (and ``bad``, given ``bad_value``)."""
    positional: list[str] = []
    options: list[str] = []
    for p in _params(cmd):
        if p is bad:
            value = bad_value
        elif p.required:
            value = _dummy(p)
        else:
            continue
        if p.param_type_name == "argument":
            positional.append(value)
        else:
            options += [p.opts[0], value]
    if bad is not None and bad.param_type_name == "argument":
        # An optional positional after required ones: the ones before it need values too.
        before = [p for p in _params(cmd) if p.param_type_name == "argument"]
        positional = [bad_value if p is bad else _dummy(p) for p in before[: before.index(bad) + 1]]
    return [*positional, *options]


# --- cases ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    #: The exit code, or a set of acceptable ones.
    expect: int | frozenset[int]
    home: str = "empty"  # "empty" or "vault"
    stdin: bytes = b""
    tty: bool = False  # stdin is a terminal that answers every read with Ctrl-D
    env: tuple[tuple[str, str], ...] = ()
    #: Substrings that must appear in stderr.
    stderr_has: tuple[str, ...] = field(default=())


DOCUMENTED_NOT_1 = frozenset(set(EXIT_CODES) - {1})


def _tree_cases() -> list[Case]:
    cases: list[Case] = []
    for path, cmd in TREE:
        name = _name(path)
        group = _is_group(cmd)
        required = any(p.required for p in _params(cmd))
        # 1. no arguments
        if (group and name not in DEFAULT_COMMAND) or required:
            cases.append(Case(f"{name}: no arguments", path, 2, stderr_has=("kms-agent: error: ",)))
        elif name not in NOT_RUN:
            expect: int | frozenset[int] = frozenset({0, 7})  # an empty home: it works, or there is no vault
            if name in NEEDS_OPTIONS:
                expect = NEEDS_OPTIONS[name]
            if name in ANY_DOCUMENTED:
                expect = frozenset(EXIT_CODES)
            cases.append(Case(f"{name}: no arguments", path, expect))
        # 2. an unknown option
        cases.append(Case(f"{name}: unknown option", (*path, "--no-such-option"), 2, stderr_has=("No such option",)))
        # 3. a bad value for the first int / float / enum parameter
        bad = next((p for p in _params(cmd) if _kind(p) is not None), None)
        if bad is not None:
            value = "no-such-choice" if _kind(bad) == "choice" else "not-a-number"
            args = _filled(cmd, bad, value)
            if group:  # a group's option, then any subcommand
                args = [bad.opts[0], value, sorted(cmd.commands)[0]]
            cases.append(
                Case(
                    f"{name}: bad {_kind(bad)} for {bad.opts[0] if bad.opts else bad.name}",
                    (*path, *args),
                    2,
                    stderr_has=("Invalid value",),
                )
            )
        # 4. required arguments filled in, end of input on stdin, a real vault, touches not automated
        if not group and name not in NOT_RUN:
            expect = frozenset(EXIT_CODES) if name in ANY_DOCUMENTED else DOCUMENTED_NOT_1
            if name in NEEDS_OPTIONS:
                expect = NEEDS_OPTIONS[name]
            cases.append(Case(f"{name}: end of input", (*path, *_filled(cmd)), expect, home="vault"))
    return cases


FINDINGS = [
    # issue 9, one by one
    Case("no command", (), 2, stderr_has=("kms-agent: error: missing command",)),
    Case("a group without its command", ("wallet",), 2, stderr_has=("kms-agent: error: missing command",)),
    Case("unknown option", ("--bogus",), 2, stderr_has=("kms-agent: error: No such option", "--bogus")),
    Case("negative index", ("wallet", "address", "SOMEID", "-1"), 2, stderr_has=("kms-agent: error: ",)),
    Case("index 2^40", ("wallet", "address", "SOMEID", "1099511627776"), 2, stderr_has=("index",)),
    Case("index 2^40 of a real wallet", ("wallet", "address", WALLET, "1099511627776"), 2, home="vault"),
    Case("policy file missing", ("policy", "set", "missing.json"), 2, stderr_has=("missing.json",)),
    Case("policy file missing, vault", ("policy", "set", "missing.json"), 2, home="vault"),
    Case("unknown audit kind", ("audit", "show", "--kind", "foo"), 2, home="vault", stderr_has=("foo",)),
    # end of input where a command reads stdin or prompts
    Case("mnemonic: empty stdin", ("wallet", "store", "ETH"), 2, home="vault"),
    Case("recovery shares: empty stdin", ("recovery", "verify"), 2, home="vault"),
    Case("policy on stdin: empty", ("policy", "set", "-", "--operator", "alice", "--operator", "bob"), 2, home="vault"),
    Case("PIN on stdin: empty", ("unlock", "--pin-stdin", "--operator", "alice", "--operator", "bob"), 4, home="vault"),
    Case("PIN: no terminal", ("unlock", "--operator", "alice", "--operator", "bob"), 4, home="vault"),
    Case("init: PIN on stdin empty", (*init_args(("alice",), 1), "--pin-stdin"), 4),
    # Ctrl-D at a terminal's prompts
    Case(
        "Ctrl-D at a PIN prompt",
        ("unlock", "--operator", "alice", "--operator", "bob"),
        4,
        home="vault",
        tty=True,
        stderr_has=("kms-agent: error: no PIN for sim:alice",),
    ),
    Case("Ctrl-D at the mnemonic prompt", ("wallet", "store", "ETH"), 2, home="vault", tty=True),
    Case("Ctrl-D at a recovery share prompt", ("recovery", "verify"), 2, home="vault", tty=True),
    # global options
    Case("--version", ("--version",), 0),
    Case("-l debug", ("-l", "debug", "status"), 0),
    Case("--log-level=INFO", ("--log-level=INFO", "wallet", "chains"), 0),
    Case("KMS_AGENT_LOG_LEVEL", ("status",), 0, env=(("KMS_AGENT_LOG_LEVEL", "debug"),)),
    Case("bad KMS_AGENT_LOG_LEVEL", ("status",), 2, env=(("KMS_AGENT_LOG_LEVEL", "loud"),)),
    Case("-l without a value", ("-l",), 2),
    Case("--show-completion", ("--show-completion", "bash"), 0),
    Case(
        "completion request",
        (),
        0,
        env=(("_KMS_AGENT_COMPLETE", "complete_bash"), ("COMP_WORDS", "kms-agent wal"), ("COMP_CWORD", "1")),
    ),
    # --json errors on stdout
    Case("--json usage error", ("wallet", "address", "SOMEID", "-1", "--json"), 2),
    Case("--json no vault", ("operator", "list", "--json"), 7),
]

CASES = _tree_cases() + FINDINGS
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


# --- running them ---------------------------------------------------------------------------------


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def _env(home: Path, case: Case) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KMS_AGENT_", "_KMS_AGENT_"))}
    env.update({"KMS_AGENT_HOME": str(home), **dict(case.env)})
    return env


def _run(case: Case, template: dict[str, Path], wallet: str, scratch: Path) -> Result:
    home = Path(tempfile.mkdtemp(dir=scratch)) / "kms"
    shutil.copytree(template[case.home], home, symlinks=True)
    args = [sys.executable, "-m", "agent", *(a.replace(WALLET, wallet) for a in case.args)]
    start = time.monotonic()
    if not case.tty:
        proc = subprocess.run(args, input=case.stdin, capture_output=True, env=_env(home, case), cwd=REPO, timeout=60)
        return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), time.monotonic() - start)
    # A terminal on stdin, not the controlling one (new session): prompts read it and get Ctrl-D.
    master, slave = pty.openpty()
    try:
        child = subprocess.Popen(
            args,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(home, case),
            cwd=REPO,
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            os.write(master, b"\x04")  # again and again: a prompt may flush input queued before it
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.2)
        if child.poll() is None:
            child.kill()
        out, err = child.communicate(timeout=10)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    return Result(child.returncode, out.decode(), err.decode(), time.monotonic() - start)


def _cli(home: Path, *args: str, stdin: bytes = b"") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_AGENT_")}
    env.update({"KMS_AGENT_HOME": str(home), "KMS_AGENT_SIM_TOUCH": "auto"})
    proc = subprocess.run(
        [sys.executable, "-m", "agent", *args], input=stdin, capture_output=True, env=env, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, (args, proc.stderr.decode())
    return proc.stdout.decode()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    base = tmp_path_factory.mktemp("tree")
    empty = base / "empty"
    empty.mkdir(mode=0o700)
    # A 2-of-3 vault with one ETH wallet and a policy change (so the audit log has rows).
    vault = base / "vault"
    vault.mkdir(mode=0o700)
    _cli(vault, *init_args(), "--json")
    wallet = json.loads(_cli(vault, "wallet", "store", "ETH", "--testnet", "--json", stdin=ETH_KEY.encode()))[
        "signatureId"
    ]
    policy = json.loads(_cli(vault, "policy", "show"))
    policy["generation"] += 1
    (base / "policy.json").write_text(json.dumps(policy))
    _cli(vault, "policy", "set", str(base / "policy.json"), "--operator", "alice", "--operator", "bob", "--json")
    scratch = base / "runs"
    scratch.mkdir()
    template = {"empty": empty, "vault": vault}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {c.id: pool.submit(_run, c, template, wallet, scratch) for c in CASES}
        return {case_id: f.result() for case_id, f in futures.items()}


def _check(case: Case, result: Result) -> None:
    shown = f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr + result.stdout, shown
    expected = {case.expect} if isinstance(case.expect, int) else case.expect
    assert result.returncode in expected, shown
    for text in case.stderr_has:
        assert text in result.stderr, shown
    if result.returncode not in (0, 130) and "kms-agent: error: " not in result.stderr:
        assert case.id.split(":")[0] in ANY_DOCUMENTED, shown  # every failure says what went wrong


@pytest.mark.parametrize("case", _tree_cases(), ids=lambda c: c.id)
def test_tree(case: Case, results: dict[str, Result]) -> None:
    _check(case, results[case.id])


@pytest.mark.parametrize("case", FINDINGS, ids=lambda c: c.id)
def test_finding(case: Case, results: dict[str, Result]) -> None:
    _check(case, results[case.id])


def test_version(results: dict[str, Result]) -> None:
    assert results["--version"].stdout == f"kms-agent {version('kms-agent')}\n"


def test_completion(results: dict[str, Result]) -> None:
    assert "_KMS_AGENT_COMPLETE=complete_bash" in results["--show-completion"].stdout
    assert results["completion request"].stdout.split() == ["wallet"]


def test_json_usage_error_on_stdout(results: dict[str, Result]) -> None:
    error = json.loads(results["--json usage error"].stdout)["error"]
    assert set(error) == {"code", "exit", "message", "hint"}
    assert (error["code"], error["exit"]) == ("usage", 2)
    assert error["message"].startswith("No such option") and "-1" in error["message"]
    assert "kms-agent wallet address" in error["hint"]


def test_json_no_vault_on_stdout(results: dict[str, Result]) -> None:
    error = json.loads(results["--json no vault"].stdout)["error"]
    assert set(error) == {"code", "exit", "message", "hint"}
    assert (error["code"], error["exit"]) == ("vault-not-found", 7)
    assert isinstance(error["message"], str) and error["message"]
    assert error["hint"] is None or isinstance(error["hint"], str)


def test_error_lines_are_one_line_each(results: dict[str, Result]) -> None:
    """An error is one ``kms-agent: error:`` line, then only ``kms-agent: hint:`` lines."""
    for case in CASES:
        lines = results[case.id].stderr.splitlines()
        errors = [i for i, line in enumerate(lines) if line.startswith("kms-agent: error: ")]
        assert len(errors) <= 1, (case.id, lines)
        if errors:
            assert all(re.match(r"kms-agent: hint: ", line) for line in lines[errors[0] + 1 :]), (case.id, lines)
