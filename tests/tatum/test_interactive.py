"""``import tatum`` at a terminal: the hidden password prompt, the questions about legacy entries, the
progress bar and the offer to shred, answered through a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import REPO, Cli, init_args
from tests.tatum.test_import_export import ABANDON, btc_address, write_tatum, xpub


class Terminal:
    """The CLI on a pseudo-terminal that is its controlling terminal (so getpass uses it too)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()

        def own_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=REPO,
            preexec_fn=own_terminal,  # the test starts no threads
        )
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in:\n{self.seen}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                assert chunk, f"the CLI exited before {pattern!r}:\n{self.seen}"
                self.seen += chunk.decode(errors="replace")

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def finish(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:
                    break
        code = self.proc.wait(timeout=max(deadline - time.monotonic(), 1))
        os.close(self.master)
        return code


def test_legacy_entries_are_asked_about_and_the_old_file_shredded(cli: Cli, tmp_path: Path) -> None:
    assert cli(*init_args(("alice", "bob"), 2)).returncode == 0
    legacy_id = "1e2d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b"
    doc: dict[str, dict[str, Any]] = {legacy_id: {"mnemonic": ABANDON, "xpub": xpub(ABANDON, "m/44'/0'/0'/0")}}
    # Enough ordinary entries for the progress bar (it is drawn from 50 entries on a terminal).
    eth_key = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
    doc.update({str(uuid.uuid4()): {"privateKey": eth_key, "chain": "ETH", "testnet": True} for _ in range(60)})
    path = tmp_path / "wallet.dat"
    write_tatum(doc, "s3cret", path)
    term = Terminal(
        ["import", "tatum", str(path)], {**cli.env, "KMS_AGENT_HOME": str(cli.home), "KMS_AGENT_SIM_TOUCH": "auto"}
    )
    term.expect(r"password of wallet\.dat: ")
    term.send("s3cret")
    term.expect(rf"Entry {legacy_id} \(mnemonic\) names no chain or network")
    term.expect(r"chain \[BTC\]: ")
    term.send("btc")
    term.expect(r"testnet\? \[y/N\]: ")
    term.send("n")
    term.expect(r"checking \[#+\] 61/61")
    term.expect(r"Shred .*wallet\.dat now\? \[y/N\]: ")
    term.send("y")
    assert term.finish() == 0, term.seen
    assert "s3cret" not in term.seen  # the password was not echoed
    assert "sweep their funds" in term.seen
    assert not path.exists()
    row = json.loads(cli("getaddress", legacy_id, "0").stdout)
    assert row["address"] == btc_address(ABANDON, 0, testnet=False)
