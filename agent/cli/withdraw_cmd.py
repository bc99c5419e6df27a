"""``kms-agent request|approve|reject``: withdrawals with the 4-eye principle."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from agent.cli.context import CliPrompts, Paths, emit, err, warn_if_simulated
from agent.errors import UsageError

app = typer.Typer(help="withdrawal requests: create, list, show", no_args_is_help=True)
Json = Annotated[bool, typer.Option("--json", help="print JSON")]
PinStdin = Annotated[bool, typer.Option(help="read token PINs from stdin, one per line")]


def _service() -> Any:
    from agent.withdrawals.service import Withdrawals

    return Withdrawals(Paths.resolve().home)


def describe(rec: dict[str, Any]) -> str:
    """The human summary an approver reads, decoded again from the raw bytes (not from stored words)."""
    from agent.chains import get_chain

    s = get_chain(rec["chain"]).decode(bytes.fromhex(rec["tx"]), testnet=rec["testnet"]).to_json()
    net = "testnet" if rec["testnet"] else "MAINNET"
    lines = [f"request {rec['id']}  [{rec['status']}]", f"  {rec['chain']} {net}  wallet {rec['signature_id']} "
             f"index {rec['index']}  initiated by {rec['initiator'] or 'unknown'}"]
    for out in s["outputs"]:
        tag = " (change)" if out["isChange"] else ""
        lines.append(f"  pay {out['amount']} {s['asset'] if not s['token'] else rec['chain']} to {out['address']}{tag}")
    if s["token"]:
        t = s["token"]
        lines.append(f"  token {t['token']}: {t['method']} {t['amount']} to {t['recipient']}")
    lines.append(f"  fee up to {s['fee']}  nonce {s['nonce']}  type {s['txType']}")
    for w in s.get("warnings", []):
        lines.append(f"  WARNING: {w}")
    reasons = rec["decision"]["reasons"]
    if reasons:
        lines.append("  policy: " + "; ".join(f"{r['rule']}: {r['detail']}" for r in reasons))
    lines.append(f"  approvals: {len(rec['approvals'])} of {rec['rule']['approvals_required']}")
    return "\n".join(lines)


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "status", "created_at", "chain", "testnet", "signature_id", "index", "initiator", "summary",
            "decision", "rule", "signed")
    out = {k: rec[k] for k in keys}
    out["approvals"] = [{"operator_id": a["operator_id"], "slot_id": a["slot_id"], "sign_count": a["sign_count"],
                         "approved_at": a["approved_at"]} for a in rec["approvals"]]
    out["rejections"] = rec["rejections"]
    return out


@app.command("create")
def create(
    chain: Annotated[str, typer.Argument(help="BTC, ETH, ...")],
    signature_id: Annotated[str, typer.Argument(help="the wallet paying")],
    index: Annotated[int, typer.Argument(help="derivation index of the paying address")] = 0,
    tx: Annotated[str | None, typer.Option("--tx", help="unsigned tx: hex (EVM) or base64 PSBT; default stdin")]
    = None,
    initiator: Annotated[str | None, typer.Option(help="who asks: an operator name or app:NAME")] = None,
    as_json: Json = False,
) -> None:
    """queue a withdrawal: decode the exact bytes, judge them by policy, wait for approvals"""
    if tx is None:
        if sys.stdin.isatty():
            raise UsageError("give the unsigned transaction with --tx or on stdin")
        tx = sys.stdin.read().strip()
    rec = _service().create(chain=chain, signature_id=signature_id, index=index, tx=tx, initiator=initiator)
    emit(_public(rec), as_json, describe(rec))


@app.command("list")
def list_requests(
    status: Annotated[str | None, typer.Option(help="pending, denied, signed or rejected")] = None,
    as_json: Json = False,
) -> None:
    """list withdrawal requests"""
    recs = _service().queue.list(status)
    emit({"requests": [_public(r) for r in recs]}, as_json,
         "\n".join(f"{r['id']}  {r['status']:<8} {r['chain']:<5} {r['signature_id']}" for r in recs))


@app.command("show")
def show(request_id: str, as_json: Json = False) -> None:
    """show a request decoded from its raw bytes, with its policy decision and approvals"""
    rec = _service().queue.get(request_id)
    emit(_public(rec), as_json, describe(rec))


def register(root: typer.Typer) -> None:
    @root.command("approve")
    def approve(
        request_id: str,
        operator: Annotated[list[str] | None, typer.Option("--operator", help="operator approving (repeat; "
                                                           "default: every operator with a token present)")] = None,
        pin_stdin: PinStdin = False,
        as_json: Json = False,
    ) -> None:
        """approve a withdrawal with PIN and touch; signs as soon as the quorum is met"""
        from agent.tokens.discovery import find_token

        paths = Paths.resolve()
        service = _service()
        rec = service.queue.get(request_id)
        warn_if_simulated(service._vault())
        err(describe(rec))
        rec = service.approve(request_id, finder=lambda slot: find_token(slot, paths.home),
                              prompts=CliPrompts(paths, pin_stdin=pin_stdin), operators=operator)
        result = _public(rec)
        if rec["status"] == "signed":
            emit(result, as_json, f"Signed. txid {rec['signed']['txid']}\n{rec['signed']['raw']}")
        else:
            emit(result, as_json, f"Recorded: {len(rec['approvals'])} of {rec['rule']['approvals_required']} "
                 "approvals; waiting for more.")

    @root.command("reject")
    def reject(
        request_id: str,
        operator: Annotated[str, typer.Option("--operator", help="the operator vetoing")],
        reason: Annotated[str, typer.Option(help="why (goes to the audit log)")] = "",
        as_json: Json = False,
    ) -> None:
        """veto a withdrawal: it can no longer be signed"""
        rec = _service().reject(request_id, operator=operator, reason=reason)
        emit(_public(rec), as_json, f"Rejected {rec['id']}.")
