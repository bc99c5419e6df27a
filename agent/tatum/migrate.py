"""Moving wallets between a Tatum KMS wallet.dat and our vault, and Tatum's ``report``, without the CLI.

* :func:`plan_import` decrypts nothing and touches no token: it classifies decrypted entries and
  re-derives what can be (:func:`agent.tatum.entries.check_entry`), so the operator sees the whole
  picture, and every refusal happens, before anyone touches a token.
* :func:`add_entries` adds every finding to an opened vault; the caller runs it inside ONE
  :meth:`~agent.vault.vault.UnlockedVault.transact`, so 25,000 entries are one write, or none.
* :func:`export_document` rebuilds ``{signatureId: entry}`` from an opened vault.
* :func:`reveal_digest` is what the operators' touches sign before any secret leaves the vault.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import UsageError
from agent.tatum.entries import (
    ENVELOPE,
    Entry,
    Finding,
    Kind,
    Status,
    check_entry,
    entry_from_vault,
    sealed_form,
)

__all__ = [
    "REVEAL_DOMAIN",
    "ImportPlan",
    "add_entries",
    "export_document",
    "plan_import",
    "report_wallet",
    "reveal_digest",
    "set_legacy",
]

#: Domain of the digest operators' tokens sign to let secrets out (never valid as any other signature).
REVEAL_DOMAIN = b"kms-agent/v1/reveal\0"


@dataclass
class ImportPlan:
    findings: list[Finding]

    @property
    def refused(self) -> list[Finding]:
        return [f for f in self.findings if f.status is Status.MISMATCH]

    def check(self) -> None:
        """:raises UsageError: an entry whose xpub or key does not match (nothing is imported)."""
        bad = self.refused
        if not bad:
            return
        first = "; ".join(f"{f.entry.signature_id}: {', '.join(f.problems)}" for f in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UsageError(
            f"{len(bad)} entries do not check out, so nothing was imported: {first}{more}",
            hint="--keep-mismatched imports them sealed as they are, not signable and without addresses",
        )


def set_legacy(entries: Iterable[Entry], answer: Callable[[Entry], tuple[str, bool]]) -> int:
    """Give each legacy entry (no chain / testnet) the chain and network ``answer`` names for it."""
    n = 0
    for e in entries:
        if e.legacy:
            chain, testnet = answer(e)
            e.fields.setdefault("chain", chain)
            e.fields.setdefault("testnet", testnet)
            n += 1
    return n


def plan_import(
    entries: Sequence[Entry],
    *,
    existing: Iterable[str] = (),
    keep_mismatched: bool = False,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
) -> ImportPlan:
    """Check every entry (one xpub derivation per mnemonic: the slow part, ~3 ms each).

    :param jobs: processes for files with many mnemonics (BIP-39's PBKDF2 dominates).

    :raises UsageError: a signatureId already in the vault (the Tatum id must stay unique).
    """
    taken = set(existing)
    clash = [e.signature_id for e in entries if e.signature_id in taken]
    if clash:
        raise UsageError(
            f"{len(clash)} signatureIds are already in this vault (e.g. {clash[0]}): nothing was imported",
            hint="was this file imported before? `kms-agent wallet list` shows what the vault holds",
        )
    if jobs > 1 and sum(e.kind is Kind.MNEMONIC for e in entries) >= PARALLEL_FROM:
        return ImportPlan(_check_in_parallel(entries, keep_mismatched, jobs, progress))
    findings = []
    for i, e in enumerate(entries, 1):
        findings.append(check_entry(e, keep_mismatched=keep_mismatched))
        if progress is not None and i % 100 == 0:
            progress(100)
    if progress is not None and len(entries) % 100:
        progress(len(entries) % 100)
    return ImportPlan(findings)


#: Below this many mnemonics a process pool costs more than it saves.
PARALLEL_FROM = 500
#: The entries the forked workers check: inherited through fork (copy-on-write), never pickled,
#: so no secret crosses a pipe; only verdicts come back.
_SHARED: Sequence[Entry] = ()


def _check_slice(bounds: tuple[int, int, bool]) -> list[tuple[Any, ...]]:
    start, stop, keep = bounds
    out = []
    for e in _SHARED[start:stop]:
        f = check_entry(e, keep_mismatched=keep)
        out.append((f.status, f.xpub, f.address, f.problems, f.notes))
    return out


def _check_in_parallel(
    entries: Sequence[Entry], keep: bool, jobs: int, progress: Callable[[int], None] | None
) -> list[Finding]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _SHARED
    step = 250
    bounds = [(i, min(i + step, len(entries)), keep) for i in range(0, len(entries), step)]
    _SHARED = entries
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            findings = []
            for (start, stop, _), verdicts in zip(bounds, pool.map(_check_slice, bounds), strict=True):
                for e, (status, xpub, address, problems, notes) in zip(entries[start:stop], verdicts, strict=True):
                    findings.append(Finding(e, status, xpub, address, problems, notes))
                if progress is not None:
                    progress(len(verdicts))
    finally:
        _SHARED = ()
    return findings


def add_entries(vault: Any, findings: Sequence[Finding], *, progress: Callable[[int], None] | None = None) -> list[Any]:
    """Seal every finding into ``vault`` (an opened vault, inside its ``transact``) under its own id."""
    rows = []
    for i, f in enumerate(findings, 1):
        e = f.entry
        wallet_type, secret = sealed_form(f)
        try:
            rows.append(
                vault.add_wallet(
                    wallet_type=wallet_type,
                    chain=e.chain or "UNKNOWN",
                    testnet=bool(e.testnet),
                    secret=secret,
                    xpub=f.xpub,
                    address=f.address,
                    signature_id=e.signature_id,
                )
            )
        finally:
            secret[:] = bytes(len(secret))
        if progress is not None and i % 250 == 0:
            progress(250)
    if progress is not None and len(findings) % 250:
        progress(len(findings) % 250)
    return rows


def export_document(vault: Any, rows: Iterable[Any]) -> dict[str, Any]:
    """``{signatureId: entry}`` for ``rows`` of an opened vault, as Tatum stores it."""
    doc: dict[str, Any] = {}
    for row in rows:
        wallet_type, secret = vault.read_secret(row.signature_id)
        try:
            doc[row.signature_id] = entry_from_vault(row, wallet_type, secret)
        finally:
            secret[:] = bytes(len(secret))
    return doc


def reveal_digest(vault_id: bytes, generation: int, action: str, signature_ids: Sequence[str], target: str) -> bytes:
    """SHA-256 over what is about to be revealed: which vault, which wallets, to where.

    Each operator's touch signs this (instead of the plain unlock digest), so the token's signature
    in the audit row is evidence of *this* reveal and cannot be replayed as an unlock or an approval.
    """
    body = json.dumps(
        {
            "action": action,
            "vault_id": vault_id.hex(),
            "generation": generation,
            "signature_ids_sha256": hashlib.sha256("\n".join(signature_ids).encode()).hexdigest(),
            "count": len(signature_ids),
            "target": target,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return hashlib.sha256(REVEAL_DOMAIN + body).digest()


def report_wallet(row: Any, wallet_type: str, secret: bytes | bytearray) -> dict[str, Any]:
    """Tatum's per-wallet report (type, chain, testnet, warnings), plus the checks Tatum never made.

    The xpub is re-derived from the mnemonic at Tatum's path, and a private key must parse for its
    chain and network and give the stored address.
    """
    fields = entry_from_vault(row, wallet_type, secret)
    entry = Entry(row.signature_id, fields)
    warnings = [
        f"Field '{name}' is not {kind}. Its type is: {_js_type(fields.get(name))}"
        for name, kind, wanted in (
            ("chain", "string", str),
            ("testnet", "boolean", bool),
        )
        if not isinstance(fields.get(name), wanted)
    ]
    finding = check_entry(entry)
    if finding.status is Status.NO_SIGNER:
        warnings.append(f"No signer for {entry.chain} in this agent yet: the entry is kept sealed")
    warnings += finding.problems if finding.status is not Status.SIGNABLE else []
    if entry.kind is Kind.MNEMONIC and finding.status is Status.SIGNABLE and row.xpub != finding.xpub:
        warnings.append("the vault's public xpub is not the one the mnemonic gives")
    kept = bytes(secret[: len(ENVELOPE)]) == ENVELOPE
    return {
        "type": entry.kind.value,
        "chain": entry.chain,
        "testnet": entry.testnet,
        "sealed": "tatum-entry" if kept else "key",
        "checks": "ok" if finding.status is Status.SIGNABLE else finding.status.value,
        "warnings": warnings + finding.notes,
    }


def _js_type(value: Any) -> str:
    if value is None:
        return "undefined"
    return {bool: "boolean", str: "string", int: "number", float: "number"}.get(type(value), "object")
