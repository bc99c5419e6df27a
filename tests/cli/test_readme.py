"""Every line of the README's walk-through runs as written, on simulated tokens, in a real shell."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using it") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the README has no walk-through block"
    return match.group(1)


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = walkthrough()
    assert "sim:" in script and "kms-agent approve" in script
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_AGENT_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-x", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert '"status": "signed"' in proc.stdout or "Signed." in proc.stdout
    assert "0.1 ETH" in proc.stdout + proc.stderr  # the approver saw human units
    assert "ALERT" in proc.stderr  # opening with recovery shares is announced
