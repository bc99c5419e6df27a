"""Third-party PC/SC clients against the simulated card through pcscd + vpcd: ykman and OpenSC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tests.pcsc.conftest import ServedCard

pytestmark = [pytest.mark.pcsc, pytest.mark.xdist_group("pcsc")]

YKMAN = Path(sys.executable).with_name("ykman")
DEFAULT_MGM = "010203040506070801020304050607080102030405060708"


def ykman(card: ServedCard, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_AGENT_")}
    return subprocess.run(
        [str(YKMAN), "--reader", card.reader, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_ykman_piv_info(served_card: ServedCard, tmp_path: Path) -> None:
    proc = ykman(served_card, "piv", "info", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "PIV version:              5.7.2" in proc.stdout
    assert "PIN tries remaining:      3/3" in proc.stdout
    assert "Using default Management key" in proc.stdout


def test_ykman_generate_attest_change_pin(served_card: ServedCard, tmp_path: Path) -> None:
    gen = ykman(
        served_card,
        "piv",
        "keys",
        "generate",
        "-a",
        "ECCP256",
        "-m",
        DEFAULT_MGM,
        "--pin-policy",
        "ONCE",
        "--touch-policy",
        "ALWAYS",
        "9a",
        "pub.pem",
        cwd=tmp_path,
    )
    assert gen.returncode == 0, gen.stderr
    public = load_pem_public_key((tmp_path / "pub.pem").read_bytes())

    att = ykman(served_card, "piv", "keys", "attest", "9a", "att.pem", cwd=tmp_path)
    assert att.returncode == 0, att.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "att.pem").read_bytes())
    assert cert.public_key() == public
    policy = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.8")).value
    assert isinstance(policy, x509.UnrecognizedExtension) and policy.value == b"\x02\x02"

    info = ykman(served_card, "piv", "keys", "info", "9a", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "ECCP256" in info.stdout and "ALWAYS" in info.stdout

    change = ykman(served_card, "piv", "access", "change-pin", "-P", "123456", "-n", "654321", cwd=tmp_path)
    assert change.returncode == 0, change.stderr
    wrong = ykman(served_card, "piv", "access", "change-pin", "-P", "123456", "-n", "111111", cwd=tmp_path)
    assert wrong.returncode != 0
    assert "2 tries left" in wrong.stderr or "2 attempts" in wrong.stderr, wrong.stderr
    again = ykman(served_card, "piv", "access", "change-pin", "-P", "654321", "-n", "123456", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


@pytest.mark.skipif(
    shutil.which("opensc-tool") is None and os.environ.get("CI") != "true", reason="OpenSC is not installed"
)
def test_opensc_names_a_piv_card(served_card: ServedCard) -> None:
    proc = subprocess.run(
        ["opensc-tool", "--reader", served_card.reader, "--name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Personal Identity Verification Card" in proc.stdout or "PIV" in proc.stdout, proc.stdout
