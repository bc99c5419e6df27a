"""A save killed at random points (SIGKILL) leaves the old or the new vault, never a broken one.

wallet.dat v2 is streamed into a temp file (nodes copied from the old file by offset) and renamed;
a v1 file's migration writes a backup first. Killed anywhere, the vault on disk still reads whole.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.vault import format as fmt
from tests.conftest import REPO, AutoPrompts
from tests.vault.helpers import add_keys, load, make_vault, write_v1

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
        # The file on disk is a whole vault: parsed, signed, pinned, every index node checked, and its
        # body and newest secret decrypt.
        public = load(paths)
        public.verify()
        generation = public.header.generation
        rows = list(public.wallets())
        assert len(rows) == public.header.wallet_count == generation - 1
        with public.recover(words[:2]) as opened:
            if rows:
                newest = max(rows, key=lambda r: int(r.address or "0", 16))
                assert opened.read_secret(newest.signature_id)[0] == "PRIVATE_KEY"
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


def _run_child(home: Path, words: list[str], crash_at: str | None) -> list[int]:
    env = {**os.environ, "KMS_AGENT_CRASH_AT": crash_at} if crash_at else dict(os.environ)
    child = subprocess.run(
        [sys.executable, "-m", "tests.vault.crash_child", str(home), "once"],
        cwd=REPO,
        input="\n".join(words[:2]),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert child.returncode == (-signal.SIGKILL if crash_at else 0), child.stderr
    return [int(line) for line in child.stdout.split()[1:]]


@pytest.mark.parametrize("crash_at", ["before-vault-save", "after-vault-save"])
def test_a_migration_killed_at_each_step_leaves_a_whole_vault(home: Path, prompts: AutoPrompts, crash_at: str) -> None:
    paths, words = make_vault(home, prompts)
    with load(paths).recover(words[:2]) as v:
        add_keys(v, 3)
        v.save()
    v1 = write_v1(paths, words)
    generation = fmt.parse_v1(v1).header.generation
    assert _run_child(home, words, crash_at) == []
    public = load(paths)  # after-vault-save: the v2 file is newer than the pin, which is allowed
    public.verify()
    assert public.version == (1 if crash_at == "before-vault-save" else 2)
    assert public.header.generation == generation + (0 if crash_at == "before-vault-save" else 1)
    # The next write finishes (or repeats) the migration; the backup is the v1 file.
    assert _run_child(home, words, None) == [public.header.generation + 1]
    assert (home / "wallet.dat.v1.bak").read_bytes() == v1
    assert load(paths).version == 2 and len(load(paths).wallets()) == 5 - (crash_at == "before-vault-save")
