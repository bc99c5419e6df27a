"""`kms-agent sim pcsc` as an operator runs it: a separate process serving cards until SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.tokens.piv_token import list_pcsc_piv_cards
from tests.conftest import REPO
from tests.pcsc.conftest import Pcscd, _wait, reader_empty

pytestmark = [pytest.mark.pcsc, pytest.mark.xdist_group("pcsc")]


def test_sim_pcsc_serves_until_sigterm(pcscd: Pcscd, tmp_path: Path) -> None:
    home = tmp_path / "kms"
    env = {**os.environ, "KMS_AGENT_HOME": str(home), "KMS_AGENT_SIM_TOUCH": "auto"}
    created = subprocess.run(
        [sys.executable, "-m", "agent", "sim", "create", "card", "--kind", "piv", "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr
    serial = int(created.stdout.split("serial ")[1].split('"')[0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "sim", "pcsc", "--piv", "card"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _wait(lambda: any(c[1] == serial for c in list_pcsc_piv_cards()), 15), "pcscd never saw the card"
        ykman = Path(sys.executable).with_name("ykman")
        info = subprocess.run(
            [str(ykman), "--reader", pcscd.reader, "piv", "info"], capture_output=True, text=True, timeout=60
        )
        assert info.returncode == 0, info.stderr
        assert "PIV version" in info.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "stopped" in err
    assert _wait(lambda: reader_empty(pcscd.reader), 10)
