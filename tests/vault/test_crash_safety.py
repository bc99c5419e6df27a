"""A save killed at random points (SIGKILL) leaves the old or the new vault, never a broken one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, AutoPrompts
from tests.vault.helpers import load, make_vault

#: 50 in the suite; `KMS_CRASH_TRIALS=1000` for the long run.
TRIALS = int(os.environ.get("KMS_CRASH_TRIALS", "50"))


@pytest.mark.slow
def test_sigkill_during_saves_never_breaks_the_vault(home: Path, prompts: AutoPrompts) -> None:
    paths, words = make_vault(home, prompts)
    rng = random.Random(1234)
    generations_seen = set()
    last_generation = load(paths).header.generation
    for _ in range(TRIALS):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.vault.crash_child", str(home)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin and child.stdout
        child.stdin.write("\n".join(words[:2]))
        child.stdin.close()
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.03))
        child.send_signal(signal.SIGKILL)
        completed = [int(line) for line in child.stdout.read().split()]
        child.wait()
        # The file on disk is a whole vault: parsed, signed, pinned, and its body decrypts.
        public = load(paths)
        generation = public.header.generation
        with public.recover(words[:2]) as opened:
            assert len(opened.body["entries"]) == len(opened.header.wallets)
        # ...and it is either the last completed save or the one being written when killed.
        newest_completed = completed[-1] if completed else last_generation
        assert generation in (newest_completed, newest_completed + 1)
        generations_seen.add(generation - newest_completed)
        last_generation = generation
    assert last_generation > TRIALS // 10  # the children really were saving when killed
    # The next save sweeps temp files that killed writers left behind.
    with load(paths).recover(words[:2]) as opened:
        opened.save()
    assert not list(home.glob(".wallet.dat.*.tmp"))
