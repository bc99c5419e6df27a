"""``kms-agent audit|policy|report``: the tamper-evident log, the custody policy, and reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.context import CliPrompts, Paths, emit
from agent.cli.options import Json, Operators, PinStdin
from agent.errors import StateError, UsageError

audit_app = typer.Typer(help="the hash-chained audit log", no_args_is_help=True)
policy_app = typer.Typer(help="the custody policy (in the signed vault header)", no_args_is_help=True)
report_app = typer.Typer(help="reports of withdrawals and anomalies", no_args_is_help=True)


@audit_app.command("verify")
def verify(as_json: Json = False) -> None:
    """re-check the hash chain, the head pin and every approval signature; non-zero if anything is off"""
    from agent.approvals import approval_row_verifier, roster_from_header
    from agent.audit import AuditLog
    from agent.cli.session import load_public
    from agent.withdrawals.index_check import LogResolver, check_evidence_index, check_queue
    from agent.withdrawals.ledger import Ledger, open_audit

    paths = Paths.resolve()
    vault = load_public(paths)
    log = AuditLog(paths.state)
    roster = roster_from_header(vault.header, suspended=Ledger(log).suspended())
    report = log.verify(approval_row_verifier(roster, LogResolver(open_audit(paths.state))))
    mismatches = check_queue(paths.state) if report.ok else []
    index_problems = check_evidence_index(paths.state) if report.ok else []
    data: dict[str, Any] = {
        "ok": report.ok and not mismatches and not index_problems,
        "rows": report.rows,
        "approvals_checked": report.approvals_checked,
        "first_bad_seq": report.first_bad_seq,
        "problems": [p.what if p.seq is None else f"row {p.seq}: {p.what}" for p in report.problems],
        "warnings": list(report.warnings),
        "queue_mismatches": [m.to_json() for m in mismatches],
        "index_problems": index_problems,
    }
    if not report.ok:
        emit(data, as_json)
        raise StateError(f"audit log verification failed at row {report.first_bad_seq}: " + "; ".join(data["problems"]))
    if index_problems:
        emit(data, as_json)
        raise StateError(
            "the audit log's rows are intact, but its index or running totals are not: " + "; ".join(index_problems),
            hint="`kms-agent request rebuild` rebuilds the index from the rows (then verify again)",
        )
    if mismatches:
        emit(data, as_json)
        raise StateError(
            "the audit log is intact, but queue.sqlite disagrees with it for "
            + ", ".join(f"request {m.request_id} ({', '.join(m.fields)})" for m in mismatches),
            hint="the queue was edited; decisions use the audit log. `kms-agent request rebuild` rebuilds it",
        )
    emit(
        data,
        as_json,
        f"OK: {report.rows} rows, chain and head intact, {report.approvals_checked} approval signatures re-verified, "
        "index, running totals and queue level with the log.",
    )


@audit_app.command("show")
def show(
    kind: Annotated[list[str] | None, typer.Option("--kind", help="row kind (repeat)")] = None,
    request: Annotated[str | None, typer.Option("--request", help="request id")] = None,
    since: Annotated[int | None, typer.Option(help="Unix seconds")] = None,
    as_json: Json = False,
) -> None:
    """print audit rows with their full payloads"""
    from agent.audit import AuditKind, AuditLog

    known = [k.value for k in AuditKind]
    unknown = [k for k in kind or [] if k not in known]
    if unknown:
        raise UsageError(f"unknown audit row kind {', '.join(map(repr, unknown))}: use one of {', '.join(known)}")
    rows = AuditLog(Paths.resolve().state).rows(kinds=kind, request_id=request, since=since)
    out = [
        {
            "seq": r.seq,
            "ts": r.ts,
            "kind": r.kind,
            "request_id": r.request_id,
            "actor": r.actor,
            "payload": json.loads(r.payload_text),
        }
        for r in rows
    ]
    emit(
        {"rows": out},
        as_json,
        "\n".join(
            f"{r['seq']:>6} {r['ts']} {r['kind']:<13} {r['request_id'] or '-':<32} {r['actor'] or '-'}" for r in out
        ),
    )


@policy_app.command("show")
def policy_show(as_json: Json = False) -> None:
    """print the policy in force (no token needed)"""
    from agent.cli.session import load_public
    from agent.policy import policy_of

    policy = policy_of(load_public(Paths.resolve()).header)
    emit(policy.to_dict(), True)  # the policy document is JSON either way


@policy_app.command("set")
def policy_set(
    file: Annotated[Path, typer.Argument(help="JSON policy document (see docs/policy.md); '-' for stdin")],
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """replace the policy: a policy change is itself a request that needs a quorum of touches"""
    from agent.policy import Policy
    from agent.tokens.discovery import find_token
    from agent.withdrawals.service import Withdrawals

    text = sys.stdin.read() if str(file) == "-" else file.read_text()
    try:
        new = Policy.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise UsageError(f"the policy is not valid JSON: {exc}") from None
    paths = Paths.resolve()
    result = Withdrawals(paths.home).change_policy(
        new,
        finder=lambda slot: find_token(slot, paths.home),
        prompts=CliPrompts(paths, pin_stdin=pin_stdin),
        operators=operator,
    )
    emit(
        result.to_json(),
        as_json,
        f"Policy generation {result.generation} in force (approved by {', '.join(result.approved_by)}).",
    )


@report_app.command("withdrawals")
def report_withdrawals(
    since: Annotated[int | None, typer.Option(help="Unix seconds")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json, csv or html")] = "table",
    as_json: Json = False,
) -> None:
    """withdrawals per chain, wallet and day, with status and approvers"""
    fmt = "json" if as_json else fmt
    from agent.report_html import count_by
    from agent.reports import withdrawals_report

    rows = withdrawals_report(Paths.resolve(), since=since)
    _print_report(
        rows,
        fmt,
        "kms-agent: withdrawals",
        [
            ("Requests per day and status", count_by(rows, "day", "status")),
            ("Requests per chain and wallet", count_by(rows, "chain", "wallet")),
            ("Approvals per operator", dict(sorted(_approver_counts(rows).items()))),
        ],
    )


@report_app.command("anomalies")
def report_anomalies(
    since: Annotated[int | None, typer.Option(help="Unix seconds")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json, csv or html")] = "table",
    as_json: Json = False,
) -> None:
    """denials, escalations, velocity near limits, failed unlocks and PIN errors, signCount alerts"""
    fmt = "json" if as_json else fmt
    from agent.report_html import count_by
    from agent.reports import anomalies_report

    rows = anomalies_report(Paths.resolve(), since=since)
    _print_report(
        rows,
        fmt,
        "kms-agent: anomalies",
        [
            ("Anomalies per kind", count_by(rows, "kind")),
            ("Anomalies per day", count_by(rows, "day")),
        ],
    )


@report_app.command("wallets")
def report_wallets(
    ids: Annotated[str | None, typer.Argument(help="signatureIds, comma-separated (default: every wallet)")] = None,
    operator: Operators = None,
    pin_stdin: PinStdin = False,
    as_json: Json = False,
) -> None:
    """Tatum's report: each wallet's type, chain and network, its xpub and key checked (a quorum unlocks)"""
    from agent.cli.tatum_cmd import run_report

    emit(run_report(ids, operators=operator, pin_stdin=pin_stdin), True)  # Tatum's JSON either way


def _approver_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(name for r in rows for name in str(r.get("approved_by", "")).split(",") if name))


def _print_report(rows: list[dict[str, Any]], fmt: str, title: str, charts: list[tuple[str, Any]]) -> None:
    if fmt == "html":
        from agent.report_html import render

        sys.stdout.write(render(title, rows, charts))
    elif fmt == "json":
        print(json.dumps({"rows": rows}, indent=2))
    elif fmt == "csv":
        from agent.reports import write_csv

        write_csv(rows, sys.stdout)  # formula injection neutralised, free text escaped
    elif fmt == "table":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns} if rows else {}
        print("  ".join(c.ljust(widths[c]) for c in columns))
        for r in rows:
            print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    else:
        raise UsageError(f"unknown format {fmt!r}: use table, json, csv or html")
