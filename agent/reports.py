"""Reports of withdrawals and anomalies, built from the queue and the audit log (read-only)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from agent.cli.context import Paths


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _names(paths: Paths) -> dict[str, str]:
    from agent.vault.vault import PublicVault

    vault = PublicVault.load(paths.vault, paths.pin)
    return {bytes(op["operator_id"]).hex(): str(op["name"]) for op in vault.header["operators"]}


def withdrawals_report(paths: Paths, *, since: int | None = None) -> list[dict[str, Any]]:
    """One row per request: day, chain, wallet, status, what left the wallet, who approved, txid."""
    from agent.withdrawals.queue import Queue

    names = _names(paths)
    rows = []
    for rec in Queue(paths.state).list():
        if since is not None and rec["created_at"] < since:
            continue
        s = rec["summary"]
        spent = [o for o in s["outputs"] if not o["isChange"]]
        token = s["token"]
        rows.append(
            {
                "day": _day(rec["created_at"]),
                "id": rec["id"],
                "chain": rec["chain"],
                "network": "testnet" if rec["testnet"] else "mainnet",
                "wallet": rec["signature_id"],
                "status": rec["status"],
                "asset": token["token"] if token else s["asset"],
                "amount": token["amount"] if token else str(sum(int(o["amount"]) for o in spent)),
                "to": token["recipient"] if token else ",".join(str(o["address"]) for o in spent),
                "fee": s["fee"],
                "initiator": rec["initiator"] or "",
                "approved_by": ",".join(names.get(a["operator_id"], a["operator_id"]) for a in rec["approvals"]),
                "txid": (rec["signed"] or {}).get("txid", ""),
            }
        )
    return rows


def anomalies_report(paths: Paths, *, since: int | None = None) -> list[dict[str, Any]]:
    """Denials, escalations, vetoes, signCount alerts and velocity near its limits."""
    from agent.audit import AuditLog
    from agent.policy import HistoryEntry, near_limit
    from agent.vault.vault import PublicVault
    from agent.withdrawals.service import Withdrawals

    rows: list[dict[str, Any]] = []
    log = AuditLog(paths.state)
    for row in log.rows(kinds=["decision", "alert", "rejection", "pin_error", "error"], since=since):
        payload = json.loads(row.payload_text)
        if row.kind == "decision":
            outcome = payload.get("outcome")
            if outcome in ("deny", "escalate"):
                detail = "; ".join(
                    f"{r['rule']}: {r['detail']}"
                    for r in payload.get("reasons", [])
                    if r.get("effect") in ("deny", "escalate")
                )
                rows.append(
                    {
                        "day": _day(row.ts),
                        "kind": f"policy-{outcome}",
                        "request": row.request_id or "",
                        "detail": detail,
                    }
                )
            continue
        rows.append(
            {
                "day": _day(row.ts),
                "kind": row.kind,
                "request": row.request_id or "",
                "detail": payload.get("detail") or payload.get("reason") or json.dumps(payload, sort_keys=True),
            }
        )
    from agent.events import read

    for event in read(paths.state, since=since):
        kind = {
            "PinInvalid": "pin-error",
            "PinBlocked": "pin-blocked",
            "QuorumNotMet": "failed-unlock",
            "TouchTimeout": "touch-timeout",
            "TouchDenied": "touch-refused",
        }.get(event["error"], event["error"])
        rows.append(
            {
                "day": _day(int(event["ts"])),
                "kind": kind,
                "request": "",
                "detail": f"{event['command']}: {event['message']}",
            }
        )
    rows += _new_destinations(paths, since)
    vault = PublicVault.load(paths.vault, paths.pin)
    history: list[HistoryEntry] = Withdrawals(paths.home)._history()
    for usage in near_limit(vault.policy(), history, int(time.time())):
        rows.append(
            {
                "day": _day(int(time.time())),
                "kind": "velocity-near-limit",
                "request": "",
                "detail": json.dumps(usage.to_json(), sort_keys=True),
            }
        )
    return rows


def _destinations(rec: dict[str, Any]) -> set[str]:
    s = rec["summary"]
    if s.get("token"):
        return {str(s["token"]["recipient"]).lower()}
    return {str(o["address"]).lower() for o in s["outputs"] if not o["isChange"]}


def _new_destinations(paths: Paths, since: int | None) -> list[dict[str, Any]]:
    """Requests paying an address no earlier signed withdrawal paid: the classic first-payout-to-thief."""
    from agent.withdrawals.queue import Queue

    seen: set[str] = set()
    rows = []
    for rec in Queue(paths.state).list():
        fresh = sorted(_destinations(rec) - seen)
        if fresh and (since is None or rec["created_at"] >= since):
            rows.append(
                {
                    "day": _day(rec["created_at"]),
                    "kind": "new-destination",
                    "request": rec["id"],
                    "detail": f"{rec['chain']} {rec['status']}: first payment to {', '.join(fresh)}",
                }
            )
        if rec["status"] == "signed":
            seen |= _destinations(rec)
    return rows
