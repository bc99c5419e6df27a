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

COLD_ETH = "0x00000000000000000000000000000000000c01D0"
SEPOLIA = 11_155_111


@dataclass
class Step:
    title: str
    args: list[str]
    expect_exit: int = 0
    #: (substitution name, key in the JSON output) to remember for later steps.
    capture: tuple[str, str] | None = None
    json: bool = True


def _steps() -> list[Step]:
    return [
        Step(
            "Create a vault: three operators, any two of them open it",
            [
                "init",
                "--operator",
                "alice=sim:alice",
                "--operator",
                "bob=sim:bob",
                "--operator",
                "carol=sim:carol",
                "--quorum",
                "2",
                "--recovery-out",
                "{shares}",
            ],
        ),
        Step("List operators and their tokens (no token needed)", ["operator", "list"]),
        Step(
            "Generate a BTC wallet (alice and bob approve with a touch)",
            ["wallet", "generate", "BTC", "--testnet", "--operator", "alice", "--operator", "bob"],
            capture=("btc", "wallets.0.signatureId"),
        ),
        Step(
            "Generate an ETH wallet (bob and carol approve)",
            ["wallet", "generate", "ETH", "--testnet", "--operator", "bob", "--operator", "carol"],
            capture=("eth", "wallets.0.signatureId"),
        ),
        Step("List wallets from the signed public index (no token needed)", ["wallet", "list"]),
        Step("Derive BTC deposit address 0 (no token needed)", ["wallet", "address", "{btc}", "0"]),
        Step("Derive BTC deposit address 1", ["wallet", "address", "{btc}", "1"]),
        Step("Derive ETH deposit address 0", ["wallet", "address", "{eth}", "0"]),
        Step("Unlock with alice and carol: quorum met", ["unlock", "--operator", "alice", "--operator", "carol"]),
        Step("Unlock with alice alone: refused (4-eye principle)", ["unlock", "--operator", "alice"], expect_exit=5),
        Step(
            "Policy change: allowlist the cold wallet, at most 1 ETH per withdrawal (a quorum approves it)",
            ["policy", "set", "{dir}/policy.json", "--operator", "alice", "--operator", "bob"],
        ),
        Step(
            "An application asks to send 0.1 ETH to the cold wallet",
            ["request", "create", "ETH", "{eth}", "0", "--tx", "{tx_ok}", "--initiator", "app:exchange"],
            capture=("req", "id"),
        ),
        Step(
            "Alice approves: PIN + touch over the digest of the exact transaction",
            ["approve", "{req}", "--operator", "alice"],
        ),
        Step(
            "Bob approves: quorum met. With no agent running to hold alice's share, she touches once more "
            "to open the vault; then it signs",
            ["approve", "{req}", "--operator", "bob", "--operator", "alice"],
        ),
        Step(
            "A 5 ETH request breaks the per-transaction limit: denied by policy",
            ["request", "create", "ETH", "{eth}", "0", "--tx", "{tx_big}", "--initiator", "app:exchange"],
            expect_exit=5,
        ),
        Step("Verify the vault: structure, signature, pinned key, rollback", ["vault", "verify"]),
        Step("Verify the audit log: hash chain, head pin, every approval signature", ["audit", "verify"]),
        Step("Withdrawals report", ["report", "withdrawals", "--format", "json"], json=False),
        Step("Anomalies report", ["report", "anomalies", "--format", "json"], json=False),
        Step("Status", ["status"]),
    ]


def _prepare(home: Path) -> dict[str, str]:
    """The inputs a real deployment gets elsewhere: a policy file and unsigned transactions."""
    from agent.chains.evm import ETH as eth
    from agent.policy import AssetLimits, Policy, Rule, UnknownDestination

    cold = eth.normalize_address(COLD_ETH, testnet=True)
    policy = Policy(
        generation=2,
        default=Rule(
            approvals_required=2,
            allowlist=frozenset([cold]),
            assets={"ETH": AssetLimits(per_tx=10**18, per_hour=None, per_day=5 * 10**18)},
            unknown_destination=UnknownDestination.DENY,
        ),
        admin_approvals=2,
    )
    (home / "policy.json").write_text(json.dumps(policy.to_dict(), indent=2))

    def tx(value: int, nonce: int) -> str:
        unsigned: str = eth.build_transfer(
            to=cold,
            value=value,
            nonce=nonce,
            chain_id=SEPOLIA,
            max_fee_per_gas=30 * 10**9,
            max_priority_fee_per_gas=10**9,
        )
        return unsigned

    return {"tx_ok": tx(10**17, 0), "tx_big": tx(5 * 10**18, 1)}


def _dig(data: Any, path: str) -> Any:
    """``wallets.0.signatureId`` -> data["wallets"][0]["signatureId"] ("" when absent)."""
    for part in path.split("."):
        try:
            data = data[int(part)] if isinstance(data, list) else data[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return ""
    return data


def _run(step: Step, env: dict[str, str], subs: dict[str, str]) -> dict[str, Any]:
    args = [a.format(**subs) for a in step.args] + (["--json"] if step.json else [])
    proc = subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    try:
        output = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        output = proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kms-agent: ")]
    return {
        "step": step.title,
        "command": ["kms-agent", *args],
        "exit_code": proc.returncode,
        "expected_exit_code": step.expect_exit,
        "ok": proc.returncode == step.expect_exit,
        "output": output,
        "errors": errors,
    }


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        directory: Annotated[
            Path | None, typer.Option("--dir", help="data directory (default: a new temp dir)")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """run the end-to-end demo on simulated tokens (touch and PIN answered automatically)"""
        home = (directory or Path(tempfile.mkdtemp(prefix="kms-agent-demo-"))).absolute()
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (home / "wallet.dat").exists():
            raise KmsAgentError(f"{home} already holds a vault; pick an empty --dir")
        env = {**os.environ, HOME_ENV: str(home), SIM_TOUCH_ENV: "auto"}
        # Recovery shares live apart from the data directory, one file per share (never a quorum in one).
        shares = home.with_name(f"{home.name}-recovery-shares")
        subs = {"dir": str(home), "shares": str(shares), "btc": "", "eth": "", "req": "", **_prepare(home)}
        results = []
        for i, step in enumerate(_steps(), 1):
            if not as_json:
                err(f"\n== {i}. {step.title}")
            result = _run(step, env, subs)
            results.append(result)
            out = result["output"]
            if step.capture and isinstance(out, dict):
                subs[step.capture[0]] = str(_dig(out, step.capture[1]))
            if not as_json:
                print("$ " + " ".join(result["command"]))
                print(json.dumps(out, indent=2) if out is not None else "")
                for line in result["errors"]:
                    print(line)
                print("-> " + ("as expected" if result["ok"] else f"UNEXPECTED exit {result['exit_code']}"))
            if not result["ok"]:
                break
        ok = all(r["ok"] for r in results) and len(results) == len(_steps())
        emit(
            {"dir": str(home), "ok": ok, "steps": results},
            as_json,
            f"\nDemo {'completed' if ok else 'FAILED'}; data in {home}",
        )
        if not ok:
            raise typer.Exit(1)
