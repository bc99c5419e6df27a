"""Issue 9: `doctor` (and the inventory behind it) shows every PIV card, YubiKey or not, and says why
one is unsupported; enrolment names the reason instead of "no PIV card found"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import TokenUnsupported
from agent.tokens.inventory import list_piv_cards
from agent.tokens.piv_token import open_piv_token
from agent.tokens.sim.piv_state import chuid_guid
from tests.conftest import REPO
from tests.pcsc.conftest import Pcscd, serve_sim_card

pytestmark = [pytest.mark.pcsc, pytest.mark.xdist_group("pcsc")]


def doctor(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_AGENT_")}
    env["KMS_AGENT_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "agent", "doctor", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_doctor_lists_a_plain_piv_card_and_why_it_is_unsupported(pcscd: Pcscd, tmp_path: Path) -> None:
    home = tmp_path / "kms"
    home.mkdir(mode=0o700)
    with serve_sim_card(pcscd, home, "plain", quirks=("not-yubikey",)) as card:
        [info] = [c for c in list_piv_cards() if c.reader == card.reader]
        assert (info.yubikey, info.serial_source, info.serial) == (False, "chuid", chuid_guid(card.serial).hex())
        assert (info.version, info.pin_retries, info.supported) == ("PIV 1.0", 3, False)
        assert "not a YubiKey PIV applet" in info.reason

        proc = doctor(home, "--json")
        assert "Traceback" not in proc.stderr
        checks = {c["check"]: c for c in json.loads(proc.stdout)["checks"]}
        [listed] = [c for c in checks["PIV cards"]["cards"] if c["reader"] == card.reader]
        assert listed == info.to_json()
        text = doctor(home).stdout
        assert (
            f"CHUID GUID {info.serial}, version PIV 1.0, PIN retries 3; unsupported because it is not a YubiKey" in text
        )

        if shutil.which("opensc-tool"):  # the card the issue saw: OpenSC names it a PIV card
            named = subprocess.run(
                ["opensc-tool", "--reader", card.reader, "--name"], capture_output=True, text=True, timeout=60
            )
            assert "PIV" in named.stdout or "Personal Identity Verification" in named.stdout, named.stdout

        # Enrolment names the card and the reason instead of "no PIV card found / is pcscd running?".
        with pytest.raises(TokenUnsupported) as refused:
            open_piv_token("piv", home)
        assert "unsupported because it is not a YubiKey PIV applet" in refused.value.message

        # `token list --cards` shows it next to the enrolled tokens, with the same facts.
        env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_AGENT_")}
        env.update(KMS_AGENT_HOME=str(home), KMS_AGENT_SIM_TOUCH="auto")
        cli = [sys.executable, "-m", "agent"]
        init = [*cli, "init", "--operator", "alice=sim:alice", "--operator", "bob=sim:bob", "--quorum", "2", "--json"]
        assert subprocess.run(init, env=env, cwd=REPO, capture_output=True, timeout=120).returncode == 0
        listed_proc = subprocess.run(
            [*cli, "token", "list", "--cards", "--json"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert listed_proc.returncode == 0, listed_proc.stderr
        out = json.loads(listed_proc.stdout)
        assert [t["label"] for t in out["tokens"]] == ["sim:alice", "sim:bob"]
        assert info.to_json() in out["cards"]


def test_doctor_lists_a_yubikey_like_card_with_what_it_lacks(pcscd: Pcscd, tmp_path: Path) -> None:
    home = tmp_path / "kms"
    home.mkdir(mode=0o700)
    quirks = ("no-attestation", "bare-slot-metadata")
    with serve_sim_card(pcscd, home, "bad", quirks=quirks) as card:
        [info] = [c for c in list_piv_cards() if c.reader == card.reader]
        assert (info.serial, info.version, info.pin_retries) == (str(card.serial), "5.7.2", 3)
        assert info.yubikey and not info.supported and info.attestation_root is None
        assert "without a key type" in info.reason and "no attestation certificate" in info.reason
        text = doctor(home).stdout
        assert f"piv:{card.serial} in {card.reader!r}: serial {card.serial}, version 5.7.2, PIN retries 3" in text
        # A plain good card next to it would say "supported"; this one is listed with its reasons.
        assert "unsupported because" in text


def test_doctor_marks_a_good_simulated_card_supported(served_card: object, tmp_path: Path) -> None:
    from tests.pcsc.conftest import ServedCard

    assert isinstance(served_card, ServedCard)
    [info] = [c for c in list_piv_cards() if c.reader == served_card.reader]
    assert info.supported and info.simulated and info.attestation_root == "simulator"
    assert info.spec == served_card.spec
