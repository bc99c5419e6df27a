"""Withdrawals end to end: decode -> policy -> touch approvals bound to the bytes -> sign -> audit.

Everything downstream of :meth:`Withdrawals.create` works from the chain module's decode of the
exact bytes that will be signed, never from request metadata, and every decision is derived from
evidence (docs/withdrawals.md §3): the signed vault header, the token-signed approvals, the payload
they sign and the hash-chained audit log. The queue is only an index.

Concurrency and crashes (docs/withdrawals.md §4). Touches happen outside any lock; then each
decision (record approvals, veto, expire, sign) runs under the data directory's writer lock as one
audit transaction, which is the single point of commit: a crash leaves the old state or the new
one. A signature is computed under that lock only after checking that no ``signature`` row
exists, and released only once its row is durable, so a request is signed at most once.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.approvals import (
    ApprovalPayload,
    ApprovalRequest,
    QuorumDecision,
    QuorumRule,
    RecordedApproval,
    Rejection,
    approval_audit_payload,
    approval_digest,
    evaluate_quorum,
    find_slot,
    roster_from_header,
    slot_public_cbor,
)
from agent.approvals.statements import ReinstatementStatement, reinstatement_payload, rejection_digest
from agent.approvals.verify import rejection_audit_payload, verify_rejection
from agent.audit import AuditKind, AuditRow, IndexLookup
from agent.audit.log import AuditTransaction, row_is_intact
from agent.chains import Owned, get_chain
from agent.errors import (
    ApprovalError,
    ApprovalInvalid,
    AuditIntegrityError,
    ChainError,
    KmsAgentError,
    PinRequired,
    PolicyDenied,
    QuorumNotMet,
    TokenNotFound,
    UsageError,
)
from agent.faults import crash_point
from agent.locks import OperatorLocks, writer_lock
from agent.policy import (
    VELOCITY_HORIZON,
    Decision,
    HistoryEntry,
    RequestSummary,
    Velocity,
    evaluate,
    from_tx_summary,
    policy_of,
)
from agent.policy import withdrawal_payload as _withdrawal_payload
from agent.tokens.base import Prompts
from agent.vault.primitives import wipe
from agent.vault.records import WalletRow
from agent.vault.vault import Collected, PublicVault, TokenFinder, Touch, UnlockedVault
from agent.wallets.mainnet import refuse_simulated_mainnet
from agent.withdrawals.holding import ShareHolder
from agent.withdrawals.ledger import DecisionStage, Ledger, RequestState, Status, derive, open_audit
from agent.withdrawals.queue import Queue, differences
from agent.withdrawals.velocity import EXTERNAL, SLOT_PUBLIC, TallyVelocity, tally_for, velocity_summary


def tx_bytes(tx: str | bytes) -> bytes:
    """The unsigned transaction as bytes: hex (EVM, raw PSBT; ``0x`` allowed) or base64 (PSBT)."""
    if isinstance(tx, bytes):
        return tx
    text = "".join(tx.split())
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("the transaction must be hex or base64 (PSBT)") from None


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _warn(message: str) -> None:
    print(f"kms-agent: warning: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CreateSpec:
    """One withdrawal to create: the unsigned bytes and the wallet key that would sign them."""

    chain: str
    signature_id: str
    index: int
    tx: str | bytes
    initiator: str | None = None
    #: An outside system's id for it (``tatum:<pending-tx id>``): recorded, indexed, never made twice.
    external: str | None = None


@dataclass(frozen=True)
class Created:
    spec: CreateSpec
    #: None when nothing was recorded (undecodable bytes, unknown wallet, outside id already used).
    state: RequestState | None
    #: PolicyDenied (then ``state`` is the recorded, denied request), or why nothing was recorded.
    error: KmsAgentError | None


@dataclass(frozen=True)
class BatchResult:
    """What :meth:`Withdrawals.approve_batch` did, with the two phases timed apart."""

    signed: list[RequestState]
    #: Requests that are approved but still wait for other approvals (a rule needing more operators).
    waiting: list[str]
    failed: dict[str, KmsAgentError]
    #: Seconds spent collecting touches and recording the approvals.
    approved_s: float
    #: Seconds from the approvals being recorded to every signature row being durable.
    signed_s: float


@dataclass(frozen=True)
class _TouchPlan:
    digest: bytes
    rule: QuorumRule
    #: Operators whose approval already counts.
    already: set[bytes]
    #: How many more operators must touch.
    want: int
    skip: list[bytes]
    #: Operators who may never approve this request (suspended; the initiator when the rule says so).
    not_allowed: tuple[bytes, ...]


@dataclass(frozen=True)
class _Prepared:
    rid: str
    row: dict[str, Any]
    decision: Decision
    initiator: str | None
    now: int


@dataclass(frozen=True)
class PolicyChanged:
    """A policy change that a quorum approved and that is now in the signed header."""

    request_id: str
    generation: int
    approved_by: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.request_id, "generation": self.generation, "approved_by": list(self.approved_by)}


@dataclass(frozen=True)
class Reinstated:
    """A suspension a quorum of other operators lifted (a ``reinstatement`` audit row)."""

    request_id: str
    operator: str
    suspension_seq: int
    approved_by: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "operator": self.operator,
            "suspension_seq": self.suspension_seq,
            "approved_by": list(self.approved_by),
        }


class Withdrawals:
    """The agent's withdrawal service over one data directory."""

    def __init__(self, home: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.home = home
        self.state = home / "state"
        self.audit = open_audit(self.state)
        self.ledger = Ledger(self.audit)
        self.queue = Queue(self.state)
        self.clock = clock
        self._vault: tuple[tuple[Any, ...], PublicVault] | None = None
        self.sync()

    def vault(self) -> PublicVault:
        """The signed header, checked against the pin; loaded again whenever either file changed.

        A save renames a new file into place and an edit in place moves the status-change time
        (which nobody can set back), so the same (inode, size, mtime, ctime) of both files means
        the same bytes, already checked.
        """
        paths = (self.home / "wallet.dat", self.state / "vault-pin.json")
        key = tuple(_file_identity(path) for path in paths)
        cached = self._vault
        if cached is not None and cached[0] == key and None not in key:
            return cached[1]
        vault = PublicVault.load(*paths)
        self._vault = (key, vault)
        return vault

    def _now(self) -> int:
        return int(self.clock())

    def sync(self, known: RequestState | Sequence[RequestState] | None = None) -> int:
        """Bring the queue index level with the audit log (after a crash, or a deleted queue).

        :param known: requests this process just derived from the log (not derived again).
        """
        return self.queue.sync(self.ledger, known)

    # --- reading --------------------------------------------------------------------------------
    def request(self, request_id: str) -> RequestState:
        """The request as the audit log proves it (expiry applied at the current time)."""
        return self._at_now(self.ledger.request(request_id))

    def _at_now(self, state: RequestState) -> RequestState:
        status = state.status_at(self._now())
        return state if status is state.status else dataclasses.replace(state, status=status)

    def record(self, request_id: str) -> dict[str, Any]:
        """The JSON view of :meth:`request` (what the CLI prints)."""
        return self.request(request_id).to_record()

    def check_index(self, state: RequestState) -> list[str]:
        """Compare the queue's record with the evidence; report and repair a disagreement.

        Only a record indexed from the same audit row as ``state`` is compared: one from an older
        row is merely behind (another process committed since), one from a newer row is ahead of us.
        """
        derived = state.to_record()
        indexed = self.queue.get(state.request_id)
        if indexed is not None and indexed.get("audit_seq") != state.last_seq:
            if int(indexed.get("audit_seq") or 0) < state.last_seq:
                self.queue.put(derived)
            return []
        if indexed is not None and indexed.get("status") == Status.EXPIRED and state.status is Status.PENDING:
            indexed = {**indexed, "status": Status.PENDING.value}
        found = differences(indexed, derived)
        if found and found != ["missing"]:
            _warn(
                f"request {state.request_id}: queue.sqlite disagrees with the audit log ({', '.join(found)}); "
                "the queue was edited: deciding from the audit log"
            )
            self.audit.append(
                AuditKind.ALERT,
                {"rule": "queue-tampered", "detail": f"queue.sqlite disagreed on {', '.join(found)}"},
                request_id=state.request_id,
            )
        if found:
            self.queue.put(derived)
        return found

    def history(self, now: int | None = None) -> list[HistoryEntry]:
        """Withdrawals signed in the last day, one by one (reports; decisions use :meth:`velocity`)."""
        now = self._now() if now is None else now
        return [self.history_entry(row) for row in self.ledger.signature_rows(now - VELOCITY_HORIZON)]

    def history_entry(self, row: AuditRow) -> HistoryEntry:
        """What a ``signature`` row moved, as velocity limits count it."""
        summary = velocity_summary(row)
        if summary is None and row.request_id:
            # A signature row from before velocity was recorded: judge it from the request's bytes.
            summary = self._decode(self.ledger.request(row.request_id))
        if summary is None:
            raise ApprovalInvalid(f"audit row {row.seq} records a signature with nothing to count it by")
        return HistoryEntry(row.ts, summary)

    def velocity(self) -> TallyVelocity:
        """What was signed per scope and window, from the running totals (O(log n) per question)."""
        return TallyVelocity(self.audit.index(), self.history_entry)

    # --- create ---------------------------------------------------------------------------------
    def create(
        self,
        *,
        chain: str,
        signature_id: str,
        index: int,
        tx: str | bytes,
        initiator: str | None = None,
        external: str | None = None,
    ) -> RequestState:
        """Decode, judge and queue a request. A denied request is recorded, then refused.

        :param external: an outside system's id for it (``tatum:<id>``); a second request for the
            same id is refused.
        :raises PolicyDenied: the policy denied it (its audit rows are written first).
        """
        spec = CreateSpec(chain, signature_id, index, tx, initiator, external)
        prepared = self._prepare(spec, self.vault(), self.velocity(), self._now())
        (outcome,) = self._commit_created([prepared])
        if isinstance(outcome, KmsAgentError):
            raise outcome
        if not prepared.decision.allowed:
            raise PolicyDenied(
                f"request {prepared.rid} denied by policy: {prepared.decision.explain()}", request_id=prepared.rid
            )
        return outcome

    def create_many(self, specs: Sequence[CreateSpec]) -> list[Created]:
        """Decode and judge every spec, then record them all in one audit transaction.

        A spec that cannot be decoded or names no wallet of ours is not recorded (its error says
        why); a denied one is recorded as denied, exactly as :meth:`create` would.
        """
        vault, now = self.vault(), self._now()
        velocity = self.velocity()
        prepared: list[_Prepared | KmsAgentError] = []
        for spec in specs:
            try:
                prepared.append(self._prepare(spec, vault, velocity, now))
            except KmsAgentError as exc:
                prepared.append(exc)
        committed = iter(self._commit_created([p for p in prepared if isinstance(p, _Prepared)]))
        out = []
        for spec, item in zip(specs, prepared, strict=True):
            if isinstance(item, KmsAgentError):
                out.append(Created(spec, None, item))
                continue
            outcome = next(committed)
            if isinstance(outcome, KmsAgentError):
                out.append(Created(spec, None, outcome))
            elif not item.decision.allowed:
                denied = PolicyDenied(
                    f"request {item.rid} denied by policy: {item.decision.explain()}", request_id=item.rid
                )
                out.append(Created(spec, outcome, denied))
            else:
                out.append(Created(spec, outcome, None))
        return out

    def find_external(self, external: str) -> RequestState | None:
        """The request made for an outside system's id, found through the audit index and re-hashed."""
        index = self.audit.index()
        seq = index.last(EXTERNAL + external)
        if seq is None:
            return None
        row = index.row(seq)
        if (
            row is None
            or not row_is_intact(row)
            or row.kind != AuditKind.REQUEST.value
            or row.payload.get("external") != external
            or not row.request_id
        ):
            raise AuditIntegrityError(
                f"audit row {seq}, indexed as the request for {external}, does not say so",
                hint="run `kms-agent audit verify`",
            )
        return self.request(row.request_id)

    def _prepare(self, spec: CreateSpec, vault: PublicVault, velocity: Velocity, now: int) -> _Prepared:
        """Everything a new request's rows say, from the chain module's decode of its exact bytes."""
        wallet = vault.wallet(spec.signature_id)
        impl = get_chain(spec.chain)
        if impl.name != wallet.chain:
            raise UsageError(f"wallet {spec.signature_id} is a {wallet.chain} wallet, not {impl.name}")
        index = spec.index
        if not 0 <= index < 2**31 or (wallet.address and index != 0):
            raise UsageError("bad derivation index for this wallet (0 to 2^31-1; 0 for a private-key wallet)")
        refuse_simulated_mainnet(simulated=vault.simulated, testnet=wallet.testnet, what="withdrawal")
        raw = tx_bytes(spec.tx)
        summary = impl.decode(raw, testnet=wallet.testnet, owned=_owned(wallet))
        req_summary = from_tx_summary(summary, signature_id=spec.signature_id, native_asset=impl.symbol)
        policy = policy_of(vault.header)
        decision = evaluate(req_summary, policy, velocity, now)
        initiator_id = _operator_id(vault, spec.initiator)
        request_id = os.urandom(16)
        payload = dataclasses.replace(
            _withdrawal_payload(
                req_summary,
                vault_id=vault.header.vault_id,
                request_id=request_id,
                derivation_index=index,
                unsigned_tx_sha256=hashlib.sha256(raw).digest(),
                nonce=summary.nonce,
                expires_at=now + decision.rule.approval_ttl,
                policy_generation=policy.generation,
            ),
            initiator=initiator_id,
        )
        row: dict[str, Any] = {
            "chain": impl.name,
            "testnet": wallet.testnet,
            "signature_id": spec.signature_id,
            "index": index,
            "tx": raw.hex(),
            "initiator": spec.initiator,
            "initiator_id": initiator_id.hex() if initiator_id else None,
            "payload_cbor": payload.canonical_bytes().hex(),
            "summary": summary.to_json(),
        }
        if spec.external is not None:
            row["external"] = spec.external
        return _Prepared(request_id.hex(), row, decision, spec.initiator, now)

    def _commit_created(self, prepared: Sequence[_Prepared]) -> list[RequestState | KmsAgentError]:
        """One audit transaction for all of them; an outside id that already has a request is skipped.

        The check is inside the transaction (under the log's write lock), so two processes given the
        same outside id cannot both record a request for it.
        """
        if not prepared:
            return []
        outcomes: dict[str, RequestState | KmsAgentError] = {}
        with self.audit.transaction() as tx_rows:
            for item in prepared:
                external = item.row.get("external")
                if external is not None and tx_rows.index.last(EXTERNAL + external) is not None:
                    outcomes[item.rid] = UsageError(f"{external} already has a withdrawal request; not made twice")
                    continue
                tx_rows.append(AuditKind.REQUEST, item.row, request_id=item.rid, actor=item.initiator, ts=item.now)
                tx_rows.append(
                    AuditKind.DECISION,
                    _policy_row(item.decision, DecisionStage.CREATE),
                    request_id=item.rid,
                    ts=item.now,
                )
        by_request: dict[str, list[AuditRow]] = {}
        for row in tx_rows.rows:
            by_request.setdefault(str(row.request_id), []).append(row)
        # The rows this transaction committed are each request's whole history.
        states = [derive(rows) for rows in by_request.values()]
        outcomes.update((state.request_id, state) for state in states)
        self.sync(known=states)
        return [outcomes[item.rid] for item in prepared]

    # --- approve and sign -----------------------------------------------------------------------
    def approve(
        self,
        request_id: str,
        *,
        finder: TokenFinder,
        prompts: Prompts,
        operators: Sequence[str] | None = None,
        vault: PublicVault | None = None,
        submit: Callable[[str, Collected], RequestState] | None = None,
    ) -> RequestState:
        """Touch approvals over the request's digest; when the quorum is met, sign.

        Each touch signs the approval digest *and* unwraps that operator's share, so the operators
        present can approve and sign in one go; approvals given earlier still count.

        :param submit: hand the touches to a running agent instead of deciding here (it holds the
            shares of earlier approvers); called while this process still holds the operators' locks.
        """
        state = self.request(request_id)
        self.check_index(state)
        rid = state.request_id
        vault = vault or self.vault()
        plan = self._plan_touches(state, vault)
        digest, rule, already, want, skip = plan.digest, plan.rule, plan.already, plan.want, plan.skip
        if submit is not None and want == 0:
            # The approvals are complete but the agent lacks shares (it restarted): this touch lends one.
            want, skip = 1, list(plan.not_allowed)
        with OperatorLocks(self.state) as held:
            collected = vault.collect(
                finder,
                prompts,
                digest=digest,
                want=want,
                operators=operators,
                skip=skip,
                hold=held.acquire,
            )
            key: bytearray | None = None
            try:
                crash_point("after-touch")
                if submit is not None:
                    # Nobody listed had anything to add (they approved already): nothing to hand over.
                    return submit(rid, collected) if collected.touches else self.request(rid)
                if len(already) + len(collected.touches) >= rule.approvals_required:
                    # The quorum will be met: opening the vault to sign needs its own quorum of shares.
                    self._more_shares(vault, collected, finder, prompts, digest, held, operators)
                    if len(collected.shares) >= vault.header.quorum:
                        # The key derivations (shares, seed, path) before the lock, not while others wait.
                        key = self._signing_key(state, vault, collected)
                with writer_lock(self.state):
                    return self._decide(rid, collected, key=key)
            finally:
                collected.wipe()
                if key is not None:
                    wipe(key)

    def _plan_touches(self, state: RequestState, vault: PublicVault) -> _TouchPlan:
        """Who still has to touch for ``state``, and over which digest; refuses a request that cannot be approved."""
        rid = state.request_id
        if state.status is Status.SIGNED:
            raise ApprovalError(f"request {rid} is already signed; nothing to approve", request_id=rid)
        if state.status is Status.EXPIRED:
            self._record_terminal(rid)
        if not state.pending:
            raise ApprovalError(f"request {rid} is {state.status.value}; nothing to approve", request_id=rid)
        self._check_binding(state)
        roster = roster_from_header(vault.header, suspended=self.ledger.suspended(vault.header))
        now = self._now()
        policy_decision = evaluate(self._decode(state, vault), policy_of(vault.header), self.velocity(), now)
        rule = _quorum_rule(policy_decision, vault)
        before = self._evaluate(state, [], rule, roster, now)
        if before.outcome.value in ("expired", "rejected", "stale"):
            self._record_terminal(rid)
            raise ApprovalError(f"request {rid} is {before.outcome.value}: {before.explain()}", request_id=rid)
        already = {a.operator_id for a in state.approvals if a.operator_id in before.approved_by}
        suspended = [op_id for op_id, op in roster.items() if op.suspended]
        initiator = state.payload.initiator
        excluded = [initiator] if initiator and not rule.initiator_may_approve else []
        return _TouchPlan(
            digest=approval_digest(state.payload),
            rule=rule,
            already=already,
            want=max(rule.approvals_required - len(already), 0),
            skip=[*already, *suspended, *excluded],
            not_allowed=(*suspended, *excluded),
        )

    # --- batches (the Tatum-compatible daemon) ---------------------------------------------------
    def approve_batch(
        self,
        request_ids: Sequence[str],
        *,
        finder: TokenFinder,
        prompts: Prompts,
        operators: Sequence[str] | None = None,
        chunk: int = 256,
    ) -> BatchResult:
        """Touch approvals for many requests, then open the vault once and sign every approved one.

        Each request still gets its own touch per operator, over its own digest (what an approver
        signs is that request's bytes). The touches also unwrap the operators' shares; the first
        share of each operator is kept for the batch and wiped at the end, so the vault is opened
        once, in this process, for as long as the signing takes. Approvals and signatures are
        committed ``chunk`` requests per audit transaction; each signature is decided under the
        writer lock from the log as committed, so a request is signed at most once.
        """
        vault = self.vault()
        failed: dict[str, KmsAgentError] = {}
        shares: dict[bytes, bytearray] = {}
        started = time.perf_counter()
        with OperatorLocks(self.state) as held:
            touching = _BatchTouches(vault, finder, prompts, operators, held, shares)
            try:
                touched: list[tuple[str, list[Touch]]] = []
                recent: dict[bytes, int] = {}
                approved: set[str] = set()
                for rid in request_ids:
                    try:
                        touches = self._touch_for_batch(rid, touching)
                    except KmsAgentError as exc:
                        failed[rid] = exc
                        continue
                    if touches:
                        touched.append((rid, touches))
                    else:
                        approved.add(rid)  # its approvals were complete already
                    if len(touched) >= chunk:
                        approved |= self._record_batch(touched, recent, failed)
                        touched = []
                approved |= self._record_batch(touched, recent, failed)
                approved_at = time.perf_counter()
                ready = [rid for rid in dict.fromkeys(request_ids) if rid in approved and rid not in failed]
                if ready and len(shares) < vault.header.quorum:
                    # Approved earlier (a previous run): opening the vault still needs a quorum's touches.
                    self._more_batch_shares(ready[0], touching, recent, failed)
                signed, waiting = self._sign_batch(ready, vault, shares, failed, chunk)
                waiting += [rid for rid in dict.fromkeys(request_ids) if rid not in approved and rid not in failed]
            finally:
                wipe(*shares.values())
        return BatchResult(signed, waiting, failed, approved_at - started, time.perf_counter() - approved_at)

    def _more_batch_shares(
        self, rid: str, touching: _BatchTouches, recent: dict[bytes, int], failed: dict[str, KmsAgentError]
    ) -> None:
        """Ask operators present who have not touched yet, over ``rid``'s digest (recorded as approvals of it)."""
        digest = approval_digest(self.request(rid).payload)
        need = touching.vault.header.quorum - len(touching.shares)
        touches = touching.touch(digest, need, skip=list(touching.shares), wait=False)
        self._record_batch([(rid, touches)], recent, failed)

    def _touch_for_batch(self, rid: str, touching: _BatchTouches) -> list[Touch]:
        plan = self._plan_touches(self.request(rid), touching.vault)
        return touching.touch(plan.digest, plan.want, skip=plan.skip) if plan.want else []

    def _record_batch(
        self, touched: Sequence[tuple[str, Sequence[Touch]]], recent: dict[bytes, int], failed: dict[str, KmsAgentError]
    ) -> set[str]:
        """Record a chunk's touches in one transaction, each judged from the log under the writer lock.

        Returns the requests whose approvals are now complete.
        """
        approved: set[str] = set()
        if not touched:
            return approved
        with writer_lock(self.state):
            vault = self.vault()
            roster = roster_from_header(vault.header, suspended=self.ledger.suspended(vault.header))
            now = self._now()
            with self.audit.transaction() as rows:
                velocity = TallyVelocity(rows.index, self.history_entry)
                for rid, touches in touched:
                    state = self.ledger.request(rid)
                    if not state.pending or now >= state.payload.expires_at:
                        failed[rid] = ApprovalError(
                            f"request {rid} was {state.status_at(now).value} meanwhile; nothing recorded",
                            request_id=rid,
                        )
                        continue
                    fresh = _recorded(state, touches, now)
                    self._check_binding(state)
                    policy_decision = evaluate(self._decode(state, vault), policy_of(vault.header), velocity, now)
                    rule = _quorum_rule(policy_decision, vault)
                    decision = self._evaluate(state, fresh, rule, roster, now, recent, rows.index)
                    self._record(rows, rid, state.payload, decision, fresh, roster, vault, now, payload_in_request=True)
                    for approval in decision.accepted:
                        recent[approval.slot_id] = max(recent.get(approval.slot_id, 0), approval.sign_count)
                    if decision.approved:
                        approved.add(rid)
                    elif decision.outcome.value not in ("pending", "consumed"):
                        failed[rid] = ApprovalError(
                            f"request {rid} is {decision.outcome.value}: {decision.explain()}", request_id=rid
                        )
        self.sync()
        return approved

    def _sign_batch(
        self,
        request_ids: Sequence[str],
        vault: PublicVault,
        shares: dict[bytes, bytearray],
        failed: dict[str, KmsAgentError],
        chunk: int,
    ) -> tuple[list[RequestState], list[str]]:
        """Open the vault once with the batch's shares and sign every request the log shows approved."""
        signed: list[RequestState] = []
        waiting: list[str] = []
        if not request_ids:
            return signed, waiting
        if len(shares) < vault.header.quorum:
            for rid in request_ids:
                failed[rid] = QuorumNotMet(
                    f"request {rid}: opening the vault to sign needs {vault.header.quorum} operators' touches "
                    f"and only {len(shares)} took part in this batch",
                    request_id=rid,
                )
            return signed, waiting
        keys: dict[tuple[str, int], bytearray] = {}
        copies = Collected(vault, shares={op: bytearray(share) for op, share in shares.items()})
        try:
            with vault.open_with(copies) as opened:
                for start in range(0, len(request_ids), chunk):
                    # Read outside the lock; under it, a request with a newer row is read again.
                    part = {rid: self.ledger.rows(rid) for rid in request_ids[start : start + chunk]}
                    for history in part.values():
                        wallet = (str(history[0].payload["signature_id"]), int(history[0].payload["index"]))
                        if wallet not in keys and all(row.kind != AuditKind.SIGNATURE.value for row in history):
                            keys[wallet] = _wallet_key(opened, derive(history))
                    done, still = self._sign_chunk(part, vault, keys, failed)
                    signed.extend(done)
                    waiting.extend(still)
        finally:
            wipe(*keys.values())
        return signed, waiting

    def _sign_chunk(
        self,
        histories: dict[str, list[AuditRow]],
        vault: PublicVault,
        keys: dict[tuple[str, int], bytearray],
        failed: dict[str, KmsAgentError],
    ) -> tuple[list[RequestState], list[str]]:
        """One transaction: each request judged under the writer lock from its newest rows, and signed once."""
        waiting: list[str] = []
        done: list[str] = []
        with writer_lock(self.state):
            vault = self.vault()
            roster = roster_from_header(vault.header, suspended=self.ledger.suspended(vault.header))
            policy = policy_of(vault.header)
            now = self._now()
            with self.audit.transaction() as rows:
                # Velocity sees the signatures this transaction already holds.
                velocity = TallyVelocity(rows.index, self.history_entry)
                for rid, history in histories.items():
                    if self.audit.last_seq(request_id=rid) != history[-1].seq:
                        histories[rid] = history = self.ledger.rows(rid)  # another process wrote meanwhile
                    state = derive(history)
                    if state.signed is not None or state.status_at(now) is not Status.PENDING:
                        if state.signed is None:
                            failed[rid] = ApprovalError(
                                f"request {rid} is {state.status_at(now).value}", request_id=rid
                            )
                        continue
                    summary = self._decode(state, vault)
                    self._check_binding(state, summary)
                    policy_decision = evaluate(summary, policy, velocity, now)
                    rule = _quorum_rule(policy_decision, vault)
                    decision = self._evaluate(state, [], rule, roster, now, index=rows.index)
                    if not decision.approved:
                        waiting.append(rid)
                        continue
                    if not policy_decision.allowed:
                        rows.append(
                            AuditKind.DECISION, _policy_row(policy_decision, DecisionStage.SIGN), request_id=rid, ts=now
                        )
                        failed[rid] = PolicyDenied(
                            f"request {rid} approved, but the policy denies it now: {policy_decision.explain()}",
                            request_id=rid,
                        )
                        continue
                    key = keys.get((state.signature_id, state.index))
                    if key is None:
                        continue  # signed by another process meanwhile (its key was never derived here)
                    self._sign(rows, state, vault, Collected(vault), summary, policy_decision, now, key)
                    done.append(rid)
                crash_point("before-commit")
        crash_point("after-commit")
        new: dict[str, list[AuditRow]] = {}
        for row in rows.rows:
            new.setdefault(str(row.request_id), []).append(row)
        states = [derive([*histories[rid], *new[rid]]) for rid in done]
        self.sync(known=states)
        return states, waiting

    def decide_held(self, rid: str, collected: Collected, holder: ShareHolder) -> tuple[RequestState, bool]:
        """The running agent's decision: touches a CLI sent, plus the shares held for this request.

        Shares of operators whose approval is recorded are kept (policy ``hold_shares``) until the
        request is signed or dies. Returns the request and whether it is approved but still waits
        for more touches to open the vault.
        """
        posted = {op: bytearray(share) for op, share in collected.shares.items()}
        try:
            with writer_lock(self.state):
                hold = policy_of(self.vault().header).hold_shares
                for op, share in holder.copies(rid).items():
                    if op in collected.shares:
                        wipe(share)
                    else:
                        collected.shares[op] = share
                waiting = False
                try:
                    state = self._decide(rid, collected)
                except QuorumNotMet:
                    state, waiting = self.request(rid), True
                except ApprovalError:
                    if not self.request(rid).pending:
                        holder.drop(rid)
                    raise
                except PolicyDenied:
                    holder.drop(rid)
                    raise
                if state.pending and hold:
                    approvers = {a.operator_id for a in state.approvals}
                    for op, share in posted.items():
                        if op in approvers:
                            holder.keep(rid, op, share, until=state.payload.expires_at)
                else:
                    holder.drop(rid)
                return state, waiting and state.pending
        finally:
            wipe(*posted.values())
            collected.wipe()

    def forget_dead(self, holder: ShareHolder) -> int:
        """Wipe held shares of requests that can no longer be signed, and of expired ones."""
        dead = 0
        for rid in holder.requests():
            try:
                alive = self.request(rid).pending
            except KmsAgentError:
                alive = False
            if not alive:
                holder.drop(rid)
                dead += 1
        holder.sweep()
        return dead

    def _evaluate(
        self,
        state: RequestState,
        fresh: Sequence[RecordedApproval],
        rule: QuorumRule,
        roster: Any,
        now: int,
        recent: Mapping[bytes, int] | None = None,
        index: IndexLookup | None = None,
    ) -> QuorumDecision:
        """:param recent: signCounts recorded by this batch's earlier transactions.
        :param index: lookups inside an open audit transaction."""
        request = ApprovalRequest(state.payload, initiator=state.payload.initiator, consumed=state.signed is not None)
        # Only fresh approvals are checked against the counters.
        counters = self.ledger.counters((a.slot_id for a in fresh), index)
        for slot_id, count in (recent or {}).items():
            if slot_id in counters or any(a.slot_id == slot_id for a in fresh):
                counters[slot_id] = max(counters.get(slot_id, 0), count)
        return evaluate_quorum(request, [*state.approvals, *fresh], state.rejections, rule, roster, now, counters)

    def _decide(self, rid: str, collected: Collected, *, key: bytearray | None = None) -> RequestState:
        """Under the writer lock: re-derive every input, record the touches, and sign at most once.

        :param key: the wallet key, already derived from ``collected``'s shares (the caller wipes it).
        """
        state = self.request(rid)
        vault = self.vault()
        now = self._now()
        roster = roster_from_header(vault.header, suspended=self.ledger.suspended(vault.header))
        fresh = _recorded(state, collected.touches, now)
        if state.status in (Status.REJECTED, Status.DENIED, Status.STALE):
            raise ApprovalError(f"request {rid} was {state.status.value} meanwhile; nothing recorded", request_id=rid)
        summary = self._decode(state, vault)
        self._check_binding(state, summary)
        policy_decision = evaluate(summary, policy_of(vault.header), self.velocity(), now)
        rule = _quorum_rule(policy_decision, vault)
        decision = self._evaluate(state, fresh, rule, roster, now)
        signing = decision.approved and state.signed is None
        if signing and policy_decision.allowed and key is None and len(collected.shares) < vault.header.quorum:
            signing = False
            short = vault.header.quorum - len(collected.shares)
        else:
            short = 0
        denied = decision.approved and state.signed is None and not policy_decision.allowed
        with self.audit.transaction() as rows:
            self._record(rows, rid, state.payload, decision, fresh, roster, vault, now, payload_in_request=True)
            if denied:
                rows.append(
                    AuditKind.DECISION, _policy_row(policy_decision, DecisionStage.SIGN), request_id=rid, ts=now
                )
            elif signing:
                self._sign(rows, state, vault, collected, summary, policy_decision, now, key)
            crash_point("before-commit")
        crash_point("after-commit")
        derived = self.ledger.request(rid)
        self.sync(known=derived)
        crash_point("after-queue")
        result = self._at_now(derived)
        if denied:
            raise PolicyDenied(
                f"request {rid} approved, but the policy denies it now: {policy_decision.explain()}", request_id=rid
            )
        if not decision.approved and decision.outcome.value not in ("pending", "consumed"):
            raise ApprovalError(f"request {rid} is {decision.outcome.value}: {decision.explain()}", request_id=rid)
        refused = [a for a in fresh if a.signature not in {x.signature for x in decision.accepted}]
        if refused and result.status is Status.PENDING and not decision.approved:
            raise ApprovalInvalid(f"request {rid}: the approval was refused: {decision.explain()}", request_id=rid)
        if short:
            raise QuorumNotMet(
                f"request {rid} is approved, but opening the vault to sign needs {vault.header.quorum} "
                f"operators' touches and only {len(collected.shares)} were present",
                hint="run `kms-agent approve` again when more operators' tokens are plugged in",
                request_id=rid,
            )
        return result

    def _record(
        self,
        rows: AuditTransaction,
        rid: str,
        payload: ApprovalPayload,
        decision: QuorumDecision,
        fresh: Sequence[RecordedApproval],
        roster: Any,
        vault: PublicVault,
        now: int,
        *,
        payload_in_request: bool = False,
    ) -> None:
        """Approval rows refer to what the log already holds: the request's payload, a slot seen before."""
        fresh_sigs = {a.signature for a in fresh}
        for approval in decision.accepted:
            slot = find_slot(roster, approval.slot_id)
            if approval.signature in fresh_sigs and slot is not None:
                public_sha256 = hashlib.sha256(slot_public_cbor(slot)).hexdigest()
                rows.append(
                    AuditKind.APPROVAL,
                    approval_audit_payload(
                        payload,
                        approval,
                        slot,
                        payload_inline=not payload_in_request,
                        public_inline=rows.index.last(SLOT_PUBLIC + public_sha256) is None,
                    ),
                    request_id=rid,
                    actor=vault.operator_name(approval.operator_id),
                    ts=now,
                )
        for reason in decision.alerts:
            rows.append(AuditKind.ALERT, {"rule": reason.rule, "detail": reason.detail}, request_id=rid, ts=now)
        for op_id in decision.suspended:
            rows.append(
                AuditKind.SUSPENSION,
                {"operator_id": op_id.hex(), "reason": "signCount went back: possible cloned token"},
                request_id=rid,
                actor=vault.operator_name(op_id),
                ts=now,
            )
        rows.append(
            AuditKind.DECISION,
            {
                **decision.to_json(),
                # The approvals themselves are in this transaction's approval rows (or earlier ones): name them.
                "accepted": [
                    {"slot_id": a.slot_id.hex(), "sign_count": a.sign_count, "approved_at": a.approved_at}
                    for a in decision.accepted
                ],
                "stage": DecisionStage.QUORUM.value,
            },
            request_id=rid,
            ts=now,
        )

    def _record_terminal(self, rid: str) -> None:
        """Write the decision that a request died (expired) so the log, not only the clock, says so."""
        with writer_lock(self.state):
            state = self.ledger.request(rid)
            now = self._now()
            if state.status is Status.PENDING and now >= state.payload.expires_at:
                self.audit.append(
                    AuditKind.DECISION,
                    {
                        "stage": DecisionStage.QUORUM.value,
                        "outcome": "expired",
                        "reasons": [{"rule": "request-expired", "detail": f"expired at {state.payload.expires_at}"}],
                    },
                    request_id=rid,
                    ts=now,
                )
                self.sync()

    def _check_binding(self, state: RequestState, decoded: RequestSummary | None = None) -> None:
        """The request's bytes must still be exactly what its payload (and so every approval) names.

        :param decoded: the request's bytes, decoded by the caller already.
        """
        decoded = decoded or self._decode(state)
        payload = state.payload
        if (
            hashlib.sha256(state.tx).digest() != payload.unsigned_tx_sha256
            or tuple((o.address, o.amount, o.asset) for o in decoded.outputs)
            != tuple((o.address, o.amount, o.asset) for o in payload.outputs)
            or decoded.fee != payload.fee
            or payload.request_id.hex() != state.request_id
            or payload.signature_id != state.signature_id
            or payload.derivation_index != state.index
        ):
            raise ApprovalInvalid(
                f"request {state.request_id}: the recorded transaction does not match the payload approvers "
                "sign; refusing",
                request_id=state.request_id,
            )

    def _decode(self, state: RequestState, vault: PublicVault | None = None) -> RequestSummary:
        """The request's bytes decoded again; with the vault, change to the wallet's own addresses is recognised."""
        impl = get_chain(state.chain)
        owned = _owned(vault.wallet(state.signature_id)) if vault is not None else None
        return from_tx_summary(
            impl.decode(state.tx, testnet=state.testnet, owned=owned),
            signature_id=state.signature_id,
            native_asset=impl.symbol,
        )

    def _more_shares(
        self,
        vault: PublicVault,
        collected: Collected,
        finder: TokenFinder,
        prompts: Prompts,
        digest: bytes,
        held: OperatorLocks,
        operators: Sequence[str] | None,
    ) -> None:
        """Approvals given earlier carry no share: ask more operators present to touch (never blocking)."""
        need = vault.header.quorum - len(collected.shares)
        if need <= 0:
            return
        extra = vault.collect(
            finder,
            prompts,
            digest=digest,
            want=need,
            operators=operators,
            skip=list(collected.shares),
            hold=lambda op_id: held.acquire(op_id, wait=False),
        )
        collected.merge(extra)

    @staticmethod
    def _signing_key(state: RequestState, vault: PublicVault, collected: Collected) -> bytearray:
        """The request's wallet key, opened with a quorum of ``collected``'s shares (which it leaves in place)."""
        shares = Collected(vault, shares={op: bytearray(share) for op, share in collected.shares.items()})
        with vault.open_with(shares) as opened:
            key = _wallet_key(opened, state)
        return key

    def _sign(
        self,
        rows: AuditTransaction,
        state: RequestState,
        vault: PublicVault,
        collected: Collected,
        approved: RequestSummary,
        policy_decision: Decision,
        now: int,
        key: bytearray | None = None,
    ) -> None:
        """Sign inside the decision's transaction: the signature row commits with it, or nothing does."""
        impl = get_chain(state.chain)
        wallet = vault.wallet(state.signature_id)
        owned = _owned(wallet)
        own_key = key is None
        if key is None:
            key = self._signing_key(state, vault, collected)
        try:
            signed = impl.sign(state.tx, [bytes(key)], testnet=state.testnet, owned=owned)
        finally:
            if own_key:
                wipe(key)
        # ``approved`` is the decode of these same bytes with the same wallet (change recognised).
        after = from_tx_summary(signed.summary, signature_id=state.signature_id, native_asset=impl.symbol)
        if (approved.outputs, approved.fee) != (after.outputs, after.fee):
            raise ChainError("the signed transaction does not decode to the approved summary; nothing released")
        rows.append(
            AuditKind.DECISION, _policy_row(policy_decision, DecisionStage.SIGN), request_id=state.request_id, ts=now
        )
        # Fail closed: if this row cannot be made durable, the signature never leaves the agent.
        rows.append(
            AuditKind.SIGNATURE,
            {
                "txid": signed.txid,
                "raw": signed.raw_hex,
                "sender": signed.sender,
                # What velocity limits count later, as judged from the bytes that were signed.
                "velocity": {
                    "chain": after.chain,
                    "network": after.network,
                    "signature_id": after.signature_id,
                    "outputs": [[o.address, str(o.amount), o.asset, o.is_change] for o in after.outputs],
                    "fee": str(after.fee),
                    "fee_asset": after.fee_asset,
                    "opaque": after.opaque,
                },
                # Running totals per velocity scope, so later checks read two rows, not the day.
                "tally": tally_for(rows.index, after, now),
            },
            request_id=state.request_id,
            ts=now,
        )

    # --- policy changes -----------------------------------------------------------------------------
    def change_policy(
        self, new: Any, *, finder: TokenFinder, prompts: Prompts, operators: Sequence[str] | None = None
    ) -> PolicyChanged:
        """Replace the policy in the vault header after ``admin_approvals`` distinct touches over it.

        :raises QuorumNotMet: too few approvers present (nothing is written; the attempt is audited).
        """
        from agent.policy import policy_change_payload, policy_change_rule

        vault = self.vault()
        current = policy_of(vault.header)
        now = self._now()
        rule = policy_change_rule(current)
        payload = policy_change_payload(
            vault_id=vault.header.vault_id,
            request_id=os.urandom(16),
            current=current,
            new=new,
            expires_at=now + rule.approval_ttl,
        )
        rid = payload.request_id.hex()
        self.audit.append(
            AuditKind.REQUEST,
            {"action": "policy-change", "from_generation": current.generation, "policy": new.to_dict()},
            request_id=rid,
        )
        digest = approval_digest(payload)
        with OperatorLocks(self.state) as held:
            collected = vault.collect(
                finder, prompts, digest=digest, want=rule.approvals_required, operators=operators, hold=held.acquire
            )
            try:
                self._more_shares(vault, collected, finder, prompts, digest, held, operators)
                with writer_lock(self.state):
                    return self._decide_policy(rid, payload, new, collected, operators)
            finally:
                collected.wipe()

    def _decide_policy(
        self, rid: str, payload: ApprovalPayload, new: Any, collected: Collected, operators: Sequence[str] | None
    ) -> PolicyChanged:
        from agent.policy import policy_change_rule

        vault = self.vault()
        current = policy_of(vault.header)
        now = self._now()
        if current.generation != payload.policy_generation:
            raise ApprovalError(
                f"the policy changed to generation {current.generation} while this change was being approved; "
                "nothing was written",
                hint="review the policy in force (`kms-agent policy show`) and submit the change again",
                request_id=rid,
            )
        rule = policy_change_rule(current)
        roster = roster_from_header(vault.header, suspended=self.ledger.suspended(vault.header))
        fresh = [
            RecordedApproval.from_token(
                t.approval,
                request_id=payload.request_id,
                operator_id=t.operator_id,
                slot_id=t.slot_id,
                approved_at=now,
            )
            for t in collected.touches
        ]
        decision = evaluate_quorum(
            ApprovalRequest(payload), fresh, [], rule, roster, now, self.ledger.counters(a.slot_id for a in fresh)
        )
        writing = decision.approved and len(collected.shares) >= vault.header.quorum
        if writing:
            # The backup the vault's save makes first, made before the log says the policy changed:
            # a full or read-only backup disk then refuses here, with nothing recorded as changed.
            from agent.vault.backups import before_save

            before_save(self.home / "wallet.dat")
        with self.audit.transaction() as rows:
            self._record(rows, rid, payload, decision, fresh, roster, vault, now)
            if writing:
                rows.append(
                    AuditKind.POLICY_CHANGE,
                    {"generation": new.generation, "sha256": new.sha256().hex(), "policy": new.to_dict()},
                    request_id=rid,
                    ts=now,
                )
        if not decision.approved:
            raise QuorumNotMet(
                f"policy change needs {rule.approvals_required} distinct approvers: {decision.explain()}",
                request_id=rid,
            )
        if len(collected.shares) < vault.header.quorum:
            raise QuorumNotMet(
                f"the policy change is approved, but writing it needs {vault.header.quorum} operators' "
                f"touches and only {len(collected.shares)} were present",
                request_id=rid,
            )
        # Open the file the touches were made against: if a rotation committed since, transact follows
        # it with the same operators' slots (or refuses), where the new file would not open at all.
        with collected.vault.open_with(collected) as opened:
            opened.transact(lambda v: v.set_policy(new.to_dict()))
        return PolicyChanged(rid, new.generation, tuple(vault.operator_name(a.operator_id) for a in decision.accepted))

    # --- reinstatement ------------------------------------------------------------------------------
    def reinstate(
        self, name: str, *, finder: TokenFinder, prompts: Prompts, operators: Sequence[str] | None = None
    ) -> Reinstated:
        """Lift ``name``'s suspension after a quorum of *other* operators' touches (docs/withdrawals.md §7).

        The quorum is the policy's ``admin_approvals`` (as for a policy change); the suspended
        operator is never asked and their touch would not count. Nothing is written unless the
        quorum is met (except cloned-token evidence found on the way, which is always recorded).

        :raises UsageError: no such operator, or not suspended. :raises QuorumNotMet: too few approvers.
        """
        from agent.policy import policy_change_rule

        vault = self.vault()
        op = vault.header.operator_named(name)
        if op is None:
            raise UsageError(f"no operator named {name!r} (see `kms-agent operator list`)")
        if op.operator_id not in self.ledger.suspended(vault.header):
            raise UsageError(f"operator {name} is not suspended; nothing to reinstate")
        seq = self.ledger.last_suspension(op.operator_id)
        assert seq is not None
        others = [o for o in operators if o != name] if operators else None
        if operators and not others:
            raise UsageError(f"{name}'s own touch never counts towards their reinstatement: name other operators")
        current = policy_of(vault.header)
        rule = policy_change_rule(current)
        statement = ReinstatementStatement(vault.header.vault_id, op.operator_id, seq)
        payload = reinstatement_payload(
            statement,
            request_id=os.urandom(16),
            expires_at=self._now() + rule.approval_ttl,
            policy_generation=current.generation,
        )
        digest = approval_digest(payload)
        with OperatorLocks(self.state) as held:
            collected = vault.collect(
                finder,
                prompts,
                digest=digest,
                want=rule.approvals_required,
                operators=others,
                skip=[op.operator_id],
                hold=held.acquire,
            )
            try:
                with writer_lock(self.state):
                    return self._decide_reinstatement(name, statement, payload, collected)
            finally:
                collected.wipe()

    def _decide_reinstatement(
        self, name: str, statement: ReinstatementStatement, payload: ApprovalPayload, collected: Collected
    ) -> Reinstated:
        from agent.policy import policy_change_rule

        vault = self.vault()
        now = self._now()
        if self.ledger.last_suspension(statement.operator_id) != statement.suspension_seq:
            raise ApprovalError(f"{name} was suspended again while this was being approved; nothing was written")
        current = policy_of(vault.header)
        if current.generation != payload.policy_generation:
            raise ApprovalError("the policy changed while this reinstatement was being approved; nothing was written")
        rule = policy_change_rule(current)
        roster = roster_from_header(vault.header, suspended=self.ledger.suspended(vault.header))
        fresh = [
            RecordedApproval.from_token(
                t.approval, request_id=payload.request_id, operator_id=t.operator_id, slot_id=t.slot_id, approved_at=now
            )
            for t in collected.touches
        ]
        decision = evaluate_quorum(
            ApprovalRequest(payload, initiator=statement.operator_id),
            fresh,
            [],
            rule,
            roster,
            now,
            self.ledger.counters(a.slot_id for a in fresh),
        )
        rid = payload.request_id.hex()
        if not decision.approved:
            if decision.suspended:  # cloned-token evidence is recorded whatever else happens
                with self.audit.transaction() as rows:
                    self._record(rows, rid, payload, decision, fresh, roster, vault, now)
            raise QuorumNotMet(
                f"reinstating {name} needs {rule.approvals_required} other operators' approvals: {decision.explain()}",
                hint="name operators present with --operator; the suspended operator's own touch never counts",
                request_id=rid,
            )
        approved_by = [a for a in decision.accepted if a.operator_id in decision.approved_by]
        body = {
            "operator_id": statement.operator_id.hex(),
            "operator": name,
            "suspension_seq": statement.suspension_seq,
            "statement_cbor": statement.canonical_bytes().hex(),
        }
        with self.audit.transaction() as rows:
            rows.append(AuditKind.REQUEST, {"action": "reinstatement", **body}, request_id=rid, ts=now)
            self._record(rows, rid, payload, decision, fresh, roster, vault, now)
            rows.append(
                AuditKind.REINSTATEMENT,
                {
                    **body,
                    "payload_cbor": payload.canonical_bytes().hex(),
                    "approvals_required": rule.approvals_required,
                    "approvals": [a.to_json() for a in approved_by],
                    "approved_by": [vault.operator_name(o) for o in decision.approved_by],
                },
                request_id=rid,
                actor=name,
                ts=now,
            )
        return Reinstated(
            rid, name, statement.suspension_seq, tuple(vault.operator_name(o) for o in decision.approved_by)
        )

    # --- veto -----------------------------------------------------------------------------------
    def reject(
        self,
        request_id: str,
        *,
        operator: str,
        reason: str = "",
        finder: TokenFinder | None = None,
        prompts: Prompts | None = None,
        rejection: Rejection | None = None,
    ) -> RequestState:
        """An operator's veto, signed with a touch (docs/approvals.md §8); once durable, nothing signs the request.

        :param rejection: a veto already signed (:meth:`sign_rejection`, e.g. by the CLI that hands it to
            a running agent); otherwise ``operator`` touches their token here (``finder``, ``prompts``:
            by default the tokens on this host and the terminal).
        :raises ApprovalInvalid: the signature does not verify against the operator's enrolled token.
        """
        if rejection is None:
            rejection = self.sign_rejection(
                request_id, operator=operator, reason=reason, finder=finder, prompts=prompts
            )
        return self.record_rejection(request_id, rejection, operator=operator)

    def sign_rejection(
        self,
        request_id: str,
        *,
        operator: str,
        reason: str = "",
        finder: TokenFinder | None = None,
        prompts: Prompts | None = None,
    ) -> Rejection:
        """PIN and touch of ``operator``'s token over the request's rejection digest; nothing is written."""
        vault = self.vault()
        op_id = _operator_id(vault, operator)
        if op_id is None:
            raise UsageError("only an operator can veto a request")
        state = self.request(request_id)
        self._vetoable(state)
        if finder is None:
            from agent.tokens.discovery import find_token

            home = self.home
            finder = lambda slot: find_token(slot, home)  # noqa: E731
        if prompts is None:
            prompts = _UnattendedPrompts(self.home)
        digest = rejection_digest(state.payload, reason)
        with OperatorLocks(self.state) as held:
            collected = vault.collect(finder, prompts, digest=digest, want=1, operators=[operator], hold=held.acquire)
            try:
                if not collected.touches:
                    raise TokenNotFound(
                        f"no token of {operator} is present to sign the veto",
                        hint="plug in one of the operator's tokens (see `kms-agent token list`)",
                        request_id=state.request_id,
                    )
                touch = collected.touches[0]
            finally:
                collected.wipe()
        now = self._now()
        evidence = RecordedApproval.from_token(
            touch.approval,
            request_id=state.payload.request_id,
            operator_id=touch.operator_id,
            slot_id=touch.slot_id,
            approved_at=now,
        )
        return Rejection(state.payload.request_id, op_id, now, reason, evidence)

    def record_rejection(self, request_id: str, rejection: Rejection, *, operator: str | None = None) -> RequestState:
        """Verify a signed veto against the operator's enrolled token and write its row, under the writer lock."""
        vault = self.vault()
        with writer_lock(self.state):
            state = self.request(request_id)
            rid = state.request_id
            self._vetoable(state)
            roster = roster_from_header(vault.header, suspended=self.ledger.suspended(vault.header))
            op = roster.get(rejection.operator_id)
            if op is None or (operator is not None and op.name != operator):
                raise UsageError(f"the veto is not signed by operator {operator or rejection.operator_id.hex()}")
            touch = rejection.touch
            slot = op.slot(touch.slot_id) if touch is not None else None
            if touch is None or slot is None:
                raise ApprovalInvalid(
                    f"a veto must be signed with a touch of one of {op.name}'s tokens", request_id=rid
                )
            now = self._now()
            rejection = dataclasses.replace(
                rejection, rejected_at=now, touch=dataclasses.replace(touch, approved_at=now)
            )
            verify_rejection(rejection, slot, state.payload)
            self.audit.append(
                AuditKind.REJECTION,
                rejection_audit_payload(state.payload, rejection, slot),
                request_id=rid,
                actor=op.name,
                ts=now,
            )
            self.sync()
            return self.request(rid)

    @staticmethod
    def _vetoable(state: RequestState) -> None:
        rid = state.request_id
        if state.status is Status.SIGNED:
            raise ApprovalError(f"request {rid} is already signed; too late to veto", request_id=rid)
        if not state.pending:
            raise ApprovalError(f"request {rid} is {state.status.value}; nothing to reject", request_id=rid)


class _UnattendedPrompts:
    """The default for library callers that pass no prompts: nobody is there to enter a PIN.

    Simulated tokens whose touch is automated (``KMS_AGENT_SIM_TOUCH``, README "Scripting contract")
    answer their own PIN, as the CLI's prompts do; any other token needs the caller's prompts.
    """

    def __init__(self, home: Path) -> None:
        self.home = home

    def touch(self, token_label: str) -> None:
        print(f"Touch {token_label} now...", file=sys.stderr, flush=True)

    def pin(self, token_label: str, attempts_remaining: int | None) -> bytearray:
        if token_label.startswith("sim:") and os.environ.get("KMS_AGENT_SIM_TOUCH", "ask") != "ask":
            from agent.tokens.sim import simulated_pin

            return bytearray(simulated_pin(self.home, token_label[4:]).encode())
        raise PinRequired(
            f"{token_label} needs its PIN and no prompt was given", hint="use `kms-agent reject`, which asks for it"
        )


#: Change is recognised when it pays one of the wallet's first CHANGE_GAP addresses (or carries a
#: BIP-32 derivation that re-derives from the wallet's xpub), never because a request says so.
CHANGE_GAP = 100


@dataclass
class _BatchTouches:
    """The operators' tokens of one batch, and the first share each of them gave (wiped by the batch)."""

    vault: PublicVault
    finder: TokenFinder
    prompts: Prompts
    operators: Sequence[str] | None
    held: OperatorLocks
    shares: dict[bytes, bytearray]

    def touch(self, digest: bytes, want: int, *, skip: Sequence[bytes], wait: bool = True) -> list[Touch]:
        """Up to ``want`` operators touch over ``digest``; their shares are kept, the touches returned."""
        collected = self.vault.collect(
            self.finder,
            self.prompts,
            digest=digest,
            want=want,
            operators=self.operators,
            skip=skip,
            hold=self.held.acquire if wait else (lambda op_id: self.held.acquire(op_id, wait=False)),
        )
        try:
            for op_id, share in collected.shares.items():
                if op_id not in self.shares:
                    self.shares[op_id] = bytearray(share)
            return list(collected.touches)
        finally:
            collected.wipe()


def _recorded(state: RequestState, touches: Sequence[Touch], now: int) -> list[RecordedApproval]:
    """Touches over ``state``'s digest as the approvals a decision records."""
    return [
        RecordedApproval.from_token(
            t.approval,
            request_id=state.payload.request_id,
            operator_id=t.operator_id,
            slot_id=t.slot_id,
            approved_at=now,
        )
        for t in touches
    ]


def _wallet_key(opened: UnlockedVault, state: RequestState) -> bytearray:
    """The key that signs ``state``: its wallet's mnemonic at the request's index, or its private key."""
    impl = get_chain(state.chain)
    wallet_type, secret = opened.read_secret(state.signature_id)
    try:
        text = secret.decode()
        key = (
            impl.private_key_from_mnemonic(text, state.index, testnet=state.testnet)
            if wallet_type == "MNEMONIC"
            else impl.parse_private_key(text, testnet=state.testnet)
        )
        del text
    finally:
        wipe(secret)
    return key


def _owned(wallet: WalletRow) -> Owned:
    addresses = {wallet.address} if wallet.address else set()
    xpub = wallet.xpub
    impl = get_chain(wallet.chain)
    from agent.chains.utxo import UtxoChain

    if xpub and isinstance(impl, UtxoChain):
        addresses.update(impl.addresses_from_xpub(xpub, range(CHANGE_GAP), testnet=wallet.testnet))
    return Owned(addresses=frozenset(addresses), xpub=xpub)


def _operator_id(vault: PublicVault, name: str | None) -> bytes | None:
    if name is None:
        return None
    op = vault.header.operator_named(name)
    if op is not None:
        return op.operator_id
    if name.startswith("app:"):
        return None  # an application, not an operator: it can never approve anything anyway
    raise UsageError(f"no operator named {name!r} (applications initiate as app:NAME)")


def _quorum_rule(decision: Decision, vault: PublicVault) -> QuorumRule:
    return QuorumRule(
        decision.approvals_required,
        initiator_may_approve=decision.rule.initiator_may_approve,
        approval_ttl=decision.rule.approval_ttl,
        policy_generation=policy_of(vault.header).generation,
    )


def _policy_row(decision: Decision, stage: DecisionStage) -> dict[str, Any]:
    rule = decision.rule
    return {
        **decision.to_json(),
        "stage": stage.value,
        "rule": {
            "approvals_required": decision.approvals_required,
            "initiator_may_approve": rule.initiator_may_approve,
            "approval_ttl": rule.approval_ttl,
        },
    }
