"""The CLI in real parallel processes, cheaply: children forked from a server that already imported it.

A fresh ``python -m agent`` pays ~0.3 s of imports; the concurrency and crash tests start hundreds
of processes, so they fork them from a multiprocessing *forkserver* that preloaded ``agent.cli``.
Each child is a separate process with its own pid, file descriptors, locks and SQLite connections,
runs the real ``agent.cli.main(argv)``, and can be SIGKILLed at any instant: only the interpreter
start-up is skipped, none of our code.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_PRELOAD = [
    "agent.cli",
    "agent.withdrawals.service",
    "agent.tokens.discovery",
    "agent.tokens.fido2_token",
    "agent.tokens.sim",
    "agent.chains.evm",
    "agent.chains.utxo",
    "agent.policy",
    "agent.approvals",
    "eth_account",  # imported lazily at signing; ~1 s of start-up that every child would pay again
    "embit",
]
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(_PRELOAD)


def _child(argv: list[str], env: dict[str, str], out: str, err: str, stdin: bytes) -> None:
    os.environ.update(env)
    with tempfile.TemporaryFile() as feed:
        feed.write(stdin)
        feed.seek(0)
        os.dup2(feed.fileno(), 0)
    for path, fd in ((out, 1), (err, 2)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    code = 1
    try:
        from agent.cli import main

        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@dataclass
class CliProcess:
    """One running ``kms-agent`` child; :meth:`result` waits for it."""

    process: multiprocessing.process.BaseProcess
    out: Path
    err: Path

    def kill(self) -> None:
        if self.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)

    def wait(self, timeout: float = 120) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.kill()
            self.process.join()
            raise TimeoutError(f"kms-agent child did not finish in {timeout} s")
        return int(self.process.exitcode)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()


class CliRunner:
    """Starts CLI children against one data directory (simulated tokens answer touch and PIN)."""

    def __init__(self, home: Path, scratch: Path) -> None:
        self.home = home
        self.scratch = scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def start(self, *argv: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> CliProcess:
        self._n += 1
        out, err = self.scratch / f"{self._n}.out", self.scratch / f"{self._n}.err"
        out.touch()  # a child killed before it opened its files still leaves them to read
        err.touch()
        child_env = {"KMS_AGENT_HOME": str(self.home), "KMS_AGENT_SIM_TOUCH": "auto", **(env or {})}
        process = _CTX.Process(target=_child, args=(list(argv), child_env, str(out), str(err), stdin))
        process.start()
        return CliProcess(process, out, err)

    def run_all(self, commands: list[list[str]], *, stagger: float = 0.0) -> list[tuple[int, str, str]]:
        """Start every command at once (optionally ``stagger`` s apart), then wait for all of them."""
        children = []
        for argv in commands:
            children.append(self.start(*argv))
            if stagger:
                time.sleep(stagger)
        return [(c.wait(), c.stdout, c.stderr) for c in children]
