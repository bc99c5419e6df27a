"""Reports of withdrawals and anomalies, built from the queue and the audit log (read-only).

Free text in a row (an initiator, a rejection reason, an error message, an address as the request
wrote it) is escaped with :func:`agent.text.escape_text` when the row is built, so no report format
carries a terminal control sequence. :func:`write_csv` also neutralises spreadsheet formulas
(OWASP "CSV injection"): a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return gets a leading apostrophe, so a spreadsheet shows it as text instead of running it.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from agent.paths import Paths
from agent.text import escape_text

#: Characters that make a spreadsheet read a cell as a formula (OWASP CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """One CSV cell as text, with a leading apostrophe if a spreadsheet would read it as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> None:
    """Rows as CSV (header from the union of keys, in order of appearance), every cell through :func:`csv_cell`."""
    rows = list(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.writer(out)
    writer.writerow([csv_cell(c) for c in columns])
    for r in rows:
        writer.writerow([csv_cell(r.get(c, "")) for c in columns])


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _names(paths: Paths) -> dict[str, str]:
    from agent.vault.vault import PublicVault

    vault = PublicVault.load(paths.vault, paths.pin)
    return {op.operator_id.hex(): op.name for op in vault.header.operators}


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
                "asset": escape_text(token["token"] if token else s["asset"]),
                "amount": token["amount"] if token else str(sum(int(o["amount"]) for o in spent)),
                "to": escape_text(token["recipient"] if token else ",".join(str(o["address"]) for o in spent)),
                "fee": s["fee"],
                "initiator": escape_text(rec["initiator"] or ""),
                "approved_by": escape_text(
                    ",".join(names.get(a["operator_id"], a["operator_id"]) for a in rec["approvals"])
                ),
                "txid": escape_text((rec["signed"] or {}).get("txid", "")),
            }
        )
    return rows


def anomalies_report(paths: Paths, *, since: int | None = None) -> list[dict[str, Any]]:
    """Denials, escalations, vetoes, signCount alerts and velocity near its limits."""
    from agent.audit import AuditLog
    from agent.policy import HistoryEntry, near_limit, policy_of
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
                        "detail": escape_text(detail),
                    }
                )
            continue
        rows.append(
            {
                "day": _day(row.ts),
                "kind": row.kind,
                "request": escape_text(row.request_id or ""),
                "detail": escape_text(
                    payload.get("detail") or payload.get("reason") or json.dumps(payload, sort_keys=True)
                ),
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
                "detail": escape_text(f"{event['command']}: {event['message']}"),
            }
        )
    rows += _new_destinations(paths, since)
    vault = PublicVault.load(paths.vault, paths.pin)
    history: list[HistoryEntry] = Withdrawals(paths.home).history()
    for usage in near_limit(policy_of(vault.header), history, int(time.time())):
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
    """Destinations in comparison spelling (base58 stays case-sensitive, hex and bech32 are folded)."""
    from agent.policy import canonical_ref

    s = rec["summary"]
    if s.get("token"):
        return {canonical_ref(str(s["token"]["recipient"]))}
    return {canonical_ref(str(o["address"])) for o in s["outputs"] if not o["isChange"]}


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
                    "detail": escape_text(f"{rec['chain']} {rec['status']}: first payment to {', '.join(fresh)}"),
                }
            )
        if rec["status"] == "signed":
            seen |= _destinations(rec)
    return rows
