"""``kms-agent demo``: the whole story on simulated tokens, each step a real kms-agent command.

Every step runs the CLI as a separate process, exactly as an operator or a script would, so the
demo also proves the scripting contract (``KMS_AGENT_HOME``, ``--json``, ``sim:NAME``, exit codes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.context import HOME_ENV, SIM_TOUCH_ENV, emit, err
from agent.errors import KmsAgentError


@dataclass
class Step:
    title: str
    args: list[str]
    expect_exit: int = 0


def _steps() -> list[Step]:
    return [
        Step("Create a vault: three operators, any two of them open it",
             ["init", "--operator", "alice=sim:alice", "--operator", "bob=sim:bob", "--operator", "carol=sim:carol",
              "--quorum", "2", "--recovery-out", "{dir}/recovery-shares.txt"]),
        Step("List operators and their tokens (no token needed)", ["operator", "list"]),
        Step("Generate a BTC wallet (alice and bob approve with a touch)",
             ["wallet", "generate", "BTC", "--testnet", "--approver", "alice", "--approver", "bob"]),
        Step("Generate an ETH wallet (bob and carol approve)",
             ["wallet", "generate", "ETH", "--testnet", "--approver", "bob", "--approver", "carol"]),
        Step("List wallets from the signed public index (no token needed)", ["wallet", "list"]),
        Step("Derive BTC deposit address 0 (no token needed)", ["wallet", "address", "{btc}", "0"]),
        Step("Derive BTC deposit address 1", ["wallet", "address", "{btc}", "1"]),
        Step("Derive ETH deposit address 0", ["wallet", "address", "{eth}", "0"]),
        Step("Unlock with alice and carol: quorum met", ["unlock", "--operator", "alice", "--operator", "carol"]),
        Step("Unlock with alice alone: refused (4-eye principle)", ["unlock", "--operator", "alice"], expect_exit=5),
        Step("Verify the vault: structure, signature, pinned key, rollback", ["vault", "verify"]),
        Step("Status", ["status"]),
    ]


def _run(step: Step, env: dict[str, str], subs: dict[str, str]) -> dict[str, Any]:
    args = [a.format(**subs) for a in step.args] + ["--json"]
    proc = subprocess.run([sys.executable, "-m", "agent", *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    try:
        output = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        output = proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kms-agent: ")]
    return {"step": step.title, "command": ["kms-agent", *args], "exit_code": proc.returncode,
            "expected_exit_code": step.expect_exit, "ok": proc.returncode == step.expect_exit,
            "output": output, "errors": errors}


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        directory: Annotated[Path | None, typer.Option("--dir", help="data directory (default: a new temp dir)")]
        = None,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """run the end-to-end demo on simulated tokens (touch and PIN answered automatically)"""
        home = (directory or Path(tempfile.mkdtemp(prefix="kms-agent-demo-"))).absolute()
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (home / "wallet.dat").exists():
            raise KmsAgentError(f"{home} already holds a vault; pick an empty --dir")
        env = {**os.environ, HOME_ENV: str(home), SIM_TOUCH_ENV: "auto"}
        subs = {"dir": str(home), "btc": "", "eth": ""}
        results = []
        for i, step in enumerate(_steps(), 1):
            if not as_json:
                err(f"\n== {i}. {step.title}")
            result = _run(step, env, subs)
            results.append(result)
            out = result["output"]
            if isinstance(out, dict) and "signatureId" in out:
                subs["btc" if not subs["btc"] else "eth"] = out["signatureId"]
            if not as_json:
                print("$ " + " ".join(result["command"]))
                print(json.dumps(out, indent=2) if out is not None else "")
                for line in result["errors"]:
                    print(line)
                print("-> " + ("as expected" if result["ok"] else f"UNEXPECTED exit {result['exit_code']}"))
            if not result["ok"]:
                break
        ok = all(r["ok"] for r in results) and len(results) == len(_steps())
        emit({"dir": str(home), "ok": ok, "steps": results}, as_json,
             f"\nDemo {'completed' if ok else 'FAILED'}; data in {home}")
        if not ok:
            raise typer.Exit(1)
