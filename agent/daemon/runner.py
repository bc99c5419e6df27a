"""The daemon's polling pass and loop: Tatum KMS's ``processPendingTransactions``, with our approvals in between.

One pass, per chain (docs/daemon.md §2):

1. ``POST /v3/kms/pending/{chain}`` with the wallets' signatureIds (``--wallets``, or the vault's
   wallets of that chain and network);
2. each pending transaction (``--transactionIds`` filters) that already has a request
   (``find_external("tatum:<id>")``) keeps it: nothing is ever created, approved or signed twice,
   across restarts and crashes. Otherwise the ``--externalUrl`` check runs (any non-2xx or error
   skips the transaction this pass, unreported, as Tatum does), the payload becomes our unsigned
   bytes (:mod:`agent.daemon.payloads`), and all new ones are created in one audit transaction;
3. denied, vetoed, expired and stale requests, and payloads we refuse, go to ``/v3/tatum/kms/batch``;
4. with ``--operator``, the still-pending requests (externalUrl checked again right before) are
   approved and signed as one batch (``approve_batch``: touches per request, the vault opened once);
5. every signed request is handed to Tatum's broadcast endpoint, and Tatum's answer is recorded as
   a ``broadcast`` audit row. A request whose broadcast was accepted is never sent again.

One daemon per data directory: :class:`DaemonLock` holds ``state/daemon.lock`` for the process's life.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import httpx

from agent.broadcast.nodes import NodeAnswer, NodeKind, OnChainState, Outcome, TxStatus
from agent.daemon.options import DaemonOptions, UrlMethod
from agent.daemon.payloads import PayloadError, to_unsigned
from agent.daemon.tatum_api import BROADCAST_PATHS, Failure, Malformed, PendingTx, TatumApi, TatumApiError
from agent.errors import KmsAgentError, StateError, UsageError
from agent.files import PRIVATE_FILE
from agent.tokens.base import Prompts
from agent.withdrawals.ledger import RequestState, Status

#: The request's outside id: ``tatum:<pending-tx id>``.
EXTERNAL_PREFIX = "tatum:"
#: Applications initiate as ``app:NAME`` (an operator name would make it an operator's own request).
INITIATOR = "app:tatum-daemon"
EXTERNAL_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
#: Broadcast calls to Tatum in flight at once.
BROADCAST_WORKERS = 8
_FINAL = {Status.DENIED, Status.REJECTED, Status.EXPIRED, Status.STALE}


def log(message: str) -> None:
    """Progress and decisions, to stderr: ids, counts and reasons, never a key or an API key."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} kms-agent daemon: {message}", file=sys.stderr, flush=True)


class DaemonLock:
    """An exclusive ``flock`` on ``state/daemon.lock``: one daemon per data directory.

    Two daemons on one directory would poll the same pending transactions; the audit log still
    prevents a second request or signature, but they would race to broadcast and report. The
    kernel drops the lock when the process dies, even by SIGKILL.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon.lock"
        self._fd: int | None = None

    def __enter__(self) -> DaemonLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
        except OSError as exc:
            raise StateError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StateError(
                f"another kms-agent daemon is running on this data directory (pid {holder or 'unknown'})",
                hint=f"one daemon per data directory; it holds {self.path}",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class PassReport:
    """What one pass did (``--json`` prints one per line)."""

    started_at: float
    seconds: float = 0.0
    #: Pending transactions seen (after ``--transactionIds``).
    pending: int = 0
    created: int = 0
    #: Pending transactions that already had a request.
    existing: int = 0
    #: Skipped because ``--externalUrl`` did not confirm them (not reported, as Tatum).
    unconfirmed: int = 0
    #: Failures sent to ``/v3/tatum/kms/batch``.
    reported: int = 0
    #: Requests left waiting for approvals (no ``--operator``, or not enough of them).
    waiting: int = 0
    signed: int = 0
    broadcast: int = 0
    broadcast_failed: int = 0
    #: Seconds collecting touches and recording approvals, from 'approved' to every signature
    #: durable (``approve_batch``'s two phases), and handing signed bytes to Tatum and recording it.
    approve_seconds: float = 0.0
    sign_seconds: float = 0.0
    broadcast_seconds: float = 0.0
    #: What went wrong with the pass itself (an API down, a failure report not delivered).
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": round(self.started_at, 3),
            "seconds": round(self.seconds, 3),
            "pending": self.pending,
            "created": self.created,
            "existing": self.existing,
            "unconfirmed": self.unconfirmed,
            "reported": self.reported,
            "waiting": self.waiting,
            "signed": self.signed,
            "broadcast": self.broadcast,
            "broadcast_failed": self.broadcast_failed,
            "approve_seconds": round(self.approve_seconds, 3),
            "sign_seconds": round(self.sign_seconds, 3),
            "broadcast_seconds": round(self.broadcast_seconds, 3),
            "errors": list(self.errors),
        }


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reason(state: RequestState) -> str:
    """Why a request can no longer be signed, for Tatum's batch endpoint (no secrets in it)."""
    text = f"kms-agent request {state.request_id} is {state.status.value}"
    if state.status is Status.DENIED:
        reasons = [
            f"[{r.get('rule')}] {r.get('detail')}"
            for r in state.decision.get("reasons", [])
            if isinstance(r, dict) and r.get("effect") == "deny"
        ]
        if reasons:
            text += ": " + "; ".join(reasons)
    if state.status is Status.REJECTED:
        vetoes = [r.reason for r in state.rejections if r.reason]
        text += ": vetoed by an operator" + (f" ({'; '.join(vetoes)})" if vetoes else "")
    return text


class Daemon:
    """One data directory, one Tatum API; :meth:`run_pass` polls once, :meth:`run` loops."""

    def __init__(
        self,
        home: Path,
        options: DaemonOptions,
        *,
        api: TatumApi | None = None,
        echo: Callable[[str], None] = log,
        prompts: Prompts | None = None,
    ) -> None:
        """:param prompts: how operators named by ``--operator`` are asked to touch (the CLI's terminal)."""
        from agent.withdrawals.service import Withdrawals

        self.home = home
        self.options = options
        self.service = Withdrawals(home)
        self.api = api or TatumApi(options.api_url, options.api_key)
        self.log = echo
        self.prompts = prompts
        self._external = httpx.Client(timeout=EXTERNAL_TIMEOUT) if options.external_url else None
        self._stop = threading.Event()

    def close(self) -> None:
        self.api.close()
        if self._external is not None:
            self._external.close()

    # --- the loop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the current pass, then return from :meth:`run` (the SIGTERM/SIGINT handler)."""
        self._stop.set()

    def run(self, emit: Callable[[PassReport], None] | None = None) -> int:
        """``--runOnce``: one pass, 0 unless the pass itself failed. Else every ``period`` until :meth:`stop`."""
        while True:
            report = self.run_pass()
            if emit is not None:
                emit(report)
            if self.options.run_once:
                return 1 if report.errors else 0
            if self._stop.wait(self.options.period):
                self.log("stopping (signal received)")
                return 0

    # --- one pass -------------------------------------------------------------------------------
    def run_pass(self) -> PassReport:
        report = PassReport(started_at=time.time())
        begin = time.monotonic()
        try:
            ids = self._signature_ids()
        except KmsAgentError as exc:
            report.errors.append(exc.message)
            self.log(f"error: {exc.message}")
            ids = {}
        else:
            for chain in self.options.chains:  # a signal lets the pass finish: it only ends the loop
                try:
                    self._chain(chain, ids.get(chain, []), report)
                except KmsAgentError as exc:
                    report.errors.append(f"{chain}: {exc.message}")
                    self.log(f"{chain}: error: {exc.message}")
        report.seconds = time.monotonic() - begin
        self.log(
            f"pass done in {report.seconds:.2f} s: {report.pending} pending, {report.created} new, "
            f"{report.signed} signed, {report.broadcast} broadcast, {report.reported} reported, "
            f"{report.waiting} waiting, {report.unconfirmed} not confirmed by the external system"
            + (f", {len(report.errors)} errors" if report.errors else "")
        )
        return report

    def _signature_ids(self) -> dict[str, list[str]]:
        """signatureIds per chain: ``--wallets`` for every chain, or the vault's wallets of the network."""
        if self.options.wallets is not None:
            return {chain: list(self.options.wallets) for chain in self.options.chains}
        out: dict[str, list[str]] = {chain: [] for chain in self.options.chains}
        for row in self.service.vault().wallets():
            if row.chain in out and row.testnet == self.options.testnet:
                out[row.chain].append(row.signature_id)
        return out

    def _chain(self, chain: str, ids: list[str], report: PassReport) -> None:
        from agent.withdrawals.service import CreateSpec

        try:
            items = self.api.pending(chain, ids)
        except TatumApiError as exc:
            report.errors.append(exc.message)
            self.log(f"{chain}: {exc.message}")
            return
        failures: list[Failure] = []
        work: list[tuple[PendingTx, RequestState]] = []
        new: list[tuple[PendingTx, CreateSpec]] = []
        wanted = self.options.transaction_ids
        for item in items:
            if isinstance(item, Malformed):
                self.log(f"{chain}: unreadable pending transaction {item.id or '(no id)'}: {item.error}")
                if item.id is not None:
                    failures.append(Failure(item.id, item.error))
                continue
            if wanted is not None and item.id not in wanted:
                self.log(f"{chain} {item.id}: skipped (not in --transactionIds)")
                continue
            report.pending += 1
            state = self.service.find_external(EXTERNAL_PREFIX + item.id)
            if state is not None:
                report.existing += 1
                work.append((item, state))
                continue
            if not self._confirmed(item):
                report.unconfirmed += 1
                continue
            try:
                if item.chain != chain:
                    raise PayloadError(f"a {item.chain} transaction in the pending {chain} list")
                unsigned = to_unsigned(item)
            except PayloadError as exc:
                self.log(f"{chain} {item.id}: refused: {exc.message}")
                failures.append(Failure(item.id, f"kms-agent: {exc.message}"))
                continue
            spec = CreateSpec(
                chain=unsigned.chain,
                signature_id=unsigned.signature_id,
                index=unsigned.index,
                tx=unsigned.tx,
                initiator=INITIATOR,
                external=EXTERNAL_PREFIX + item.id,
            )
            new.append((item, spec))
        for batch in _chunks(new, self.options.max_batch):
            results = self.service.create_many([spec for _, spec in batch])
            for (item, _), created in zip(batch, results, strict=True):
                if created.state is not None:
                    report.created += 1
                    self.log(f"{chain} {item.id}: request {created.state.request_id} ({created.state.status.value})")
                    work.append((item, created.state))
                    continue
                again = self.service.find_external(EXTERNAL_PREFIX + item.id)
                if again is not None:  # recorded meanwhile by someone else: use that one
                    work.append((item, again))
                    continue
                message = created.error.message if created.error is not None else "not recorded"
                self.log(f"{chain} {item.id}: refused: {message}")
                failures.append(Failure(item.id, f"kms-agent: {message}"))
        pending: list[tuple[PendingTx, RequestState]] = []
        signed: list[tuple[PendingTx, RequestState]] = []
        for item, state in work:  # states as of now: find_external and create_many apply expiry
            if state.status in _FINAL:
                self.log(f"{chain} {item.id}: request {state.request_id} is {state.status.value}: reported")
                failures.append(Failure(item.id, _reason(state)))
            elif state.signed is not None:
                signed.append((item, state))
            else:
                pending.append((item, state))
        signed += self._approve(chain, pending, report)
        began = time.monotonic()
        failures += self._broadcast(chain, signed, report)
        report.broadcast_seconds += time.monotonic() - began
        if failures:
            try:
                self.api.report(failures)
                report.reported += len(failures)
            except TatumApiError as exc:
                report.errors.append(exc.message)
                self.log(f"{chain}: {exc.message}")

    # --- steps ----------------------------------------------------------------------------------
    def _confirmed(self, item: PendingTx) -> bool:
        """Tatum's 4-eye check: any 2xx from ``--externalUrl`` confirms; anything else skips this pass."""
        url = self.options.external_url
        if url is None or self._external is None:
            return True
        target = f"{url}/{quote(item.id, safe='')}"
        try:
            if self.options.external_method is UrlMethod.POST:
                response = self._external.post(target, json=dict(item.document))
            else:
                response = self._external.get(target)
        except httpx.HTTPError as exc:
            self.log(f"{item.chain} {item.id}: skipped: the external system did not answer ({type(exc).__name__})")
            return False
        if not response.is_success:
            self.log(f"{item.chain} {item.id}: skipped: the external system answered HTTP {response.status_code}")
            return False
        return True

    def _approve(
        self, chain: str, pending: list[tuple[PendingTx, RequestState]], report: PassReport
    ) -> list[tuple[PendingTx, RequestState]]:
        """With ``--operator``: this pass's pending requests, approved and signed as batches."""
        if not pending:
            return []
        if not self.options.operators:
            report.waiting += len(pending)
            for item, state in pending:
                self.log(f"{chain} {item.id}: request {state.request_id} waits for approvals (kms-agent approve)")
            return []
        from agent.tokens.discovery import find_token

        if self.prompts is None:
            raise UsageError("--operator needs a terminal or simulated tokens to ask for touches")

        confirmed = []
        for item, state in pending:
            if self._confirmed(item):  # checked again: the external system may have changed its mind
                confirmed.append((item, state))
            else:
                report.unconfirmed += 1
        home = self.home
        out = []
        for batch in _chunks(confirmed, self.options.max_batch):
            try:
                result = self.service.approve_batch(
                    [state.request_id for _, state in batch],
                    finder=lambda slot: find_token(slot, home),
                    prompts=self.prompts,
                    operators=list(self.options.operators),
                )
            except KmsAgentError as exc:  # a token missing, a PIN asked for with no terminal: retry next pass
                report.errors.append(f"{chain}: approval: {exc.message}")
                report.waiting += len(batch)
                self.log(f"{chain}: approval failed: {exc.message}")
                continue
            report.approve_seconds += result.approved_s
            report.sign_seconds += result.signed_s
            done = {state.request_id: state for state in result.signed}
            for item, state in batch:
                rid = state.request_id
                if rid in done:
                    report.signed += 1
                    out.append((item, done[rid]))
                elif rid in result.failed:
                    self.log(f"{chain} {item.id}: request {rid} not signed: {result.failed[rid].message}")
                    report.waiting += 1
                else:
                    self.log(f"{chain} {item.id}: request {rid} approved, waits for more approvals")
                    report.waiting += 1
        return out

    def _broadcast(self, chain: str, signed: list[tuple[PendingTx, RequestState]], report: PassReport) -> list[Failure]:
        """Hand the signed bytes to Tatum; every answer becomes a ``broadcast`` row (one audit transaction).

        A request Tatum accepted once is never sent again; an unreachable API is retried on the next
        pass with the same bytes; a rejection is reported to the batch endpoint.
        """
        from agent.broadcast.broadcaster import RetryPolicy, broadcast_states

        senders: dict[str, TatumSender] = {}
        todo: list[RequestState] = []
        pending_ids: dict[str, str] = {}
        failures: list[Failure] = []
        for item, state in signed:
            rid = state.request_id
            if state.onchain is not None and state.onchain.accepted:
                self.log(f"{chain} {item.id}: request {rid} was broadcast already; not sending it again")
                continue
            if chain not in BROADCAST_PATHS:
                failures.append(Failure(item.id, f"kms-agent: no Tatum broadcast endpoint for {chain}"))
                continue
            senders[rid] = TatumSender(self.api, chain, item.id)
            pending_ids[rid] = item.id
            todo.append(state)
        if not todo:
            return failures
        # The HTTP calls run side by side (Tatum answers each in milliseconds to seconds); the answers
        # are then recorded in one audit transaction by the broadcaster, as if sent one by one.
        with ThreadPoolExecutor(max_workers=min(BROADCAST_WORKERS, len(todo))) as pool:
            answers = pool.map(lambda s: senders[s.request_id].send(s.signed.raw if s.signed else ""), todo)
            for state, answer in zip(todo, answers, strict=True):
                senders[state.request_id].answered = answer
        results = broadcast_states(self.service, todo, lambda s: senders[s.request_id], retry=RetryPolicy(attempts=1))
        for result in results:
            pid = pending_ids[result.request_id]
            if result.outcome is Outcome.ACCEPTED:
                report.broadcast += 1
                self.log(f"{chain} {pid}: request {result.request_id} broadcast through Tatum, txid {result.txid}")
                continue
            report.broadcast_failed += 1
            if result.outcome is Outcome.REJECTED:
                self.log(f"{chain} {pid}: Tatum rejected the broadcast: {result.reason}")
                failures.append(Failure(pid, f"broadcast rejected: {result.reason}"))
            else:
                self.log(f"{chain} {pid}: the broadcast got no answer; the next pass sends the same bytes again")
        return failures


class TatumSender:
    """Tatum's broadcast endpoint for one pending transaction, as a :class:`~agent.broadcast.nodes.NodeClient`.

    Tatum completes the pending transaction named by ``signatureId`` itself, so the sender is bound
    to that id. Tatum's API tells KMS nothing about where a transaction is afterwards: ``status``
    is always UNKNOWN (a node configured with ``kms-agent node set`` lets the watcher follow it).
    """

    kind = NodeKind.TATUM

    def __init__(self, api: TatumApi, chain: str, pending_id: str) -> None:
        self.api = api
        self.chain = chain
        self.pending_id = pending_id
        self.url = api.broadcast_url(chain)
        #: Set once the bytes were sent: the next :meth:`send` returns it instead of sending again.
        self.answered: NodeAnswer | None = None

    def send(self, raw_hex: str) -> NodeAnswer:
        """The answer of a send already made (the parallel step of :meth:`Daemon._broadcast`), else send now."""
        answer, self.answered = self.answered, None
        return answer if answer is not None else self.api.broadcast(self.chain, raw_hex, self.pending_id)

    def status(self, txid: str, *, sender: str | None = None, nonce: int | None = None) -> TxStatus:
        return TxStatus(OnChainState.UNKNOWN, reason="Tatum's API does not report transaction status to KMS")

    def close(self) -> None:
        pass


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM and SIGINT finish the current pass and end the loop (exit 0)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log(f"{signal.Signals(signum).name}: finishing the current pass")
        daemon.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def print_report(report: PassReport) -> None:
    """``--json``: one line per pass on stdout."""
    print(json.dumps(report.to_json(), separators=(",", ":")), flush=True)
