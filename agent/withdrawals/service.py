"""Withdrawals end to end: decode -> policy -> touch approvals bound to the bytes -> sign -> audit.

Everything downstream of :meth:`Withdrawals.create` works from the chain module's decode of the
exact bytes that will be signed, never from request metadata. Every step writes its audit row
*before* its effect is visible, and the signed transaction is released only after its
``signature`` row is durable (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.approvals import (
    ApprovalPayload,
    ApprovalRequest,
    QuorumRule,
    RecordedApproval,
    Rejection,
    approval_audit_payload,
    approval_digest,
    evaluate_quorum,
    find_slot,
    roster_from_header,
)
from agent.audit import AuditLog
from agent.chains import Owned, get_chain
from agent.errors import ApprovalError, ChainError, KmsAgentError, PolicyDenied, UsageError
from agent.policy import HistoryEntry, evaluate, from_tx_summary, withdrawal_payload
from agent.tokens.base import Prompts
from agent.vault.primitives import wipe
from agent.vault.vault import Collected, PublicVault, TokenFinder
from agent.withdrawals.queue import Queue

#: Simulated tokens keep their secrets in files: mainnet withdrawals need this set to "1".
ALLOW_SIM_MAINNET_ENV = "KMS_AGENT_ALLOW_SIMULATED_MAINNET"

PENDING, DENIED, SIGNED, REJECTED, EXPIRED = "pending", "denied", "signed", "rejected", "expired"
#: Quorum outcomes after which a request can never be signed.
TERMINAL = (EXPIRED, REJECTED, "stale", "consumed")


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


class Withdrawals:
    """The agent's withdrawal service over one data directory."""

    def __init__(self, home: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.home = home
        self.state = home / "state"
        self.queue = Queue(self.state)
        self.audit = AuditLog(self.state)
        self.clock = clock

    def vault(self) -> PublicVault:
        return PublicVault.load(self.home / "wallet.dat", self.state / "vault-pin.json")

    def _now(self) -> int:
        return int(self.clock())

    # --- create ---------------------------------------------------------------------------------
    def create(
        self, *, chain: str, signature_id: str, index: int, tx: str | bytes, initiator: str | None = None
    ) -> dict[str, Any]:
        """Decode, judge and queue a request. A denied request is recorded, then refused.

        :raises PolicyDenied: the policy denied it (its audit rows are written first).
        """
        vault = self.vault()
        wallet = vault.wallet(signature_id)
        impl = get_chain(chain)
        if impl.name != wallet["chain"]:
            raise UsageError(f"wallet {signature_id} is a {wallet['chain']} wallet, not {impl.name}")
        if index < 0 or (wallet.get("address") and index != 0):
            raise UsageError("bad derivation index for this wallet")
        if vault.simulated and not wallet["testnet"] and os.environ.get(ALLOW_SIM_MAINNET_ENV) != "1":
            raise UsageError(
                "this vault is enrolled with SIMULATED tokens: refusing a mainnet withdrawal",
                hint=f"use testnet wallets, enrol hardware tokens, or set {ALLOW_SIM_MAINNET_ENV}=1 "
                "if you really mean it",
            )
        raw = tx_bytes(tx)
        summary = impl.decode(raw, testnet=wallet["testnet"], owned=_owned(wallet))
        req_summary = from_tx_summary(summary, signature_id=signature_id, native_asset=impl.symbol)
        policy = vault.policy()
        now = self._now()
        decision = evaluate(req_summary, policy, self._history(), now)
        initiator_id = _operator_id(vault, initiator)
        request_id = os.urandom(16)
        payload = withdrawal_payload(
            req_summary,
            vault_id=vault.header["vault_id"],
            request_id=request_id,
            derivation_index=index,
            unsigned_tx_sha256=hashlib.sha256(raw).digest(),
            nonce=summary.nonce,
            expires_at=now + decision.rule.approval_ttl,
            policy_generation=policy.generation,
        )
        rid = request_id.hex()
        record: dict[str, Any] = {
            "id": rid,
            "created_at": now,
            "chain": impl.name,
            "testnet": wallet["testnet"],
            "signature_id": signature_id,
            "index": index,
            "tx": raw.hex(),
            "initiator": initiator,
            "initiator_id": initiator_id.hex() if initiator_id else None,
            "payload": payload.canonical_bytes().hex(),
            "summary": summary.to_json(),
            "decision": decision.to_json(),
            "approvals": [],
            "rejections": [],
            "rule": {
                "approvals_required": decision.approvals_required,
                "initiator_may_approve": decision.rule.initiator_may_approve,
                "approval_ttl": decision.rule.approval_ttl,
            },
            "status": PENDING if decision.allowed else DENIED,
            "signed": None,
        }
        self.audit.append(
            "request",
            {
                "chain": impl.name,
                "testnet": wallet["testnet"],
                "signature_id": signature_id,
                "index": index,
                "tx": raw.hex(),
                "initiator": initiator,
                "summary": summary.to_json(),
            },
            request_id=rid,
            actor=initiator,
        )
        self.audit.append("decision", decision.to_json(), request_id=rid)
        self.queue.put(record)
        if not decision.allowed:
            raise PolicyDenied(f"request {rid} denied by policy: {decision.explain()}")
        return record

    def _history(self, *, window: int = 86_400) -> list[HistoryEntry]:
        """Withdrawals signed in the last ``window`` seconds (the longest velocity limit is a day)."""
        from agent.policy import RequestSummary, SummaryOutput

        history = []
        for signed_at, h in self.queue.history(self._now() - window):
            outputs = tuple(SummaryOutput(a, int(n), asset, bool(change)) for a, n, asset, change in h["outputs"])
            history.append(
                HistoryEntry(
                    signed_at,
                    RequestSummary(
                        h["chain"], h["network"], h["signature_id"], outputs, int(h["fee"]), h["fee_asset"], h["opaque"]
                    ),
                )
            )
        return history

    # --- approve and sign -----------------------------------------------------------------------
    def approve(
        self,
        request_id: str,
        *,
        finder: TokenFinder,
        prompts: Prompts,
        operators: Sequence[str] | None = None,
        vault: PublicVault | None = None,
    ) -> dict[str, Any]:
        """Touch approvals over the request's digest; when the quorum is met, sign in the same process.

        Each touch signs the approval digest *and* unwraps that operator's share, so the operators
        present can approve and sign in one go; approvals given earlier still count.
        """
        rec = self.queue.get(request_id)
        if rec["status"] != PENDING:
            raise ApprovalError(f"request {rec['id']} is {rec['status']}; nothing to approve")
        vault = vault or self.vault()  # a caller that already loaded (and pinned-checked) it passes it in
        payload = ApprovalPayload.from_cbor(bytes.fromhex(rec["payload"]))
        self._check_binding(rec, payload)
        digest = approval_digest(payload)
        roster = roster_from_header(vault.header, suspended=self.queue.suspended())
        rule = _quorum_rule(rec, vault)
        existing = [RecordedApproval.from_json(a) for a in rec["approvals"]]
        rejections = [Rejection.from_json(r) for r in rec["rejections"]]
        initiator = bytes.fromhex(rec["initiator_id"]) if rec["initiator_id"] else None
        request = ApprovalRequest(payload, initiator=initiator)
        # Nobody should touch a token for a request that is already dead (expired, vetoed, stale).
        before = evaluate_quorum(request, existing, rejections, rule, roster, self._now(), self.queue.counters())
        if before.outcome.value in TERMINAL:
            rec["status"] = before.outcome.value
            self.audit.append("decision", before.to_json(), request_id=rec["id"])
            self.queue.put(rec)
            raise ApprovalError(f"request {rec['id']} is {rec['status']}: {before.explain()}")
        already = {a.operator_id for a in existing}
        suspended = [op_id for op_id, op in roster.items() if op.suspended]
        skip = [*already, *suspended, *([initiator] if initiator and not rule.initiator_may_approve else [])]
        want = max(rule.approvals_required - len(already), 0)
        collected = vault.collect(finder, prompts, digest=digest, want=want, operators=operators, skip=skip)
        try:
            now = self._now()
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
                request, [*existing, *fresh], rejections, rule, roster, now, self.queue.counters()
            )
            fresh_sigs = {a.signature for a in fresh}
            for approval in decision.accepted:
                slot = find_slot(roster, approval.slot_id)
                if approval.signature in fresh_sigs and slot is not None:
                    self.audit.append(
                        "approval",
                        approval_audit_payload(payload, approval, slot),
                        request_id=rec["id"],
                        actor=vault.operator_name(approval.operator_id),
                    )
            for reason in decision.alerts:
                self.audit.append("alert", {"rule": reason.rule, "detail": reason.detail}, request_id=rec["id"])
            for op_id in decision.suspended:
                self.queue.suspend(op_id, now, "signCount went back: possible cloned token")
            self.audit.append("decision", decision.to_json(), request_id=rec["id"])
            self.queue.update_counters(decision.counter_updates)
            rec["approvals"] = [a.to_json() for a in decision.accepted]
            rec["quorum"] = decision.to_json()
            if decision.outcome.value in TERMINAL:
                rec["status"] = decision.outcome.value
            self.queue.put(rec)
            if not decision.approved:
                collected.wipe()
                if rec["status"] != PENDING:
                    raise ApprovalError(f"request {rec['id']} is {rec['status']}: {decision.explain()}")
                return rec
            self._ensure_shares(vault, collected, finder, prompts, digest, operators)
            return self._sign(rec, vault, collected)
        except BaseException:
            collected.wipe()
            raise

    def _check_binding(self, rec: dict[str, Any], payload: ApprovalPayload) -> None:
        """The queued bytes must still be exactly what the payload (and so every approval) names.

        Approvers sign the payload; signing uses the queued bytes. Re-hash and re-decode them here so
        a queue edited after the request was judged can never get a signature.
        """
        from agent.errors import ApprovalInvalid

        raw = bytes.fromhex(rec["tx"])
        impl = get_chain(rec["chain"])
        decoded = from_tx_summary(
            impl.decode(raw, testnet=rec["testnet"]), signature_id=rec["signature_id"], native_asset=impl.symbol
        )
        if (
            hashlib.sha256(raw).digest() != payload.unsigned_tx_sha256
            or tuple((o.address, o.amount, o.asset) for o in decoded.outputs)
            != tuple((o.address, o.amount, o.asset) for o in payload.outputs)
            or decoded.fee != payload.fee
            or payload.request_id.hex() != rec["id"]
            or payload.signature_id != rec["signature_id"]
            or payload.derivation_index != rec["index"]
        ):
            raise ApprovalInvalid(
                f"request {rec['id']}: the queued transaction no longer matches what was judged "
                "and is being approved; refusing (was the queue edited?)"
            )

    def _ensure_shares(
        self,
        vault: PublicVault,
        collected: Collected,
        finder: TokenFinder,
        prompts: Prompts,
        digest: bytes,
        operators: Sequence[str] | None,
    ) -> None:
        """Approvals given in earlier sessions carry no share: touch more operators until the vault opens."""
        need = vault.header["quorum"] - len(collected.shares)
        if need > 0:
            # Anyone present may lend a touch to open the vault: the approvals are already decided.
            collected.merge(vault.collect(finder, prompts, digest=digest, want=need, skip=list(collected.shares)))
        if len(collected.shares) < vault.header["quorum"]:
            from agent.errors import QuorumNotMet

            raise QuorumNotMet(
                f"approved, but opening the vault to sign needs {vault.header['quorum']} operators' touches and "
                f"only {len(collected.shares)} token(s) were present",
                hint="run the same `kms-agent approve` again when more operators' tokens are plugged in",
            )

    def _sign(self, rec: dict[str, Any], vault: PublicVault, collected: Collected) -> dict[str, Any]:
        impl = get_chain(rec["chain"])
        raw = bytes.fromhex(rec["tx"])
        with vault.open_with(collected) as opened:
            wallet_type, secret = opened.read_secret(rec["signature_id"])
            try:
                text = secret.decode()
                key = (
                    impl.private_key_from_mnemonic(text, rec["index"], testnet=rec["testnet"])
                    if wallet_type == "MNEMONIC"
                    else impl.parse_private_key(text, testnet=rec["testnet"])
                )
                del text
            finally:
                wipe(secret)
            owned = _owned(vault.wallet(rec["signature_id"]))
            try:
                signed = impl.sign(raw, [bytes(key)], testnet=rec["testnet"], owned=owned)
            finally:
                wipe(key)
        approved = from_tx_summary(
            impl.decode(raw, testnet=rec["testnet"], owned=owned),
            signature_id=rec["signature_id"],
            native_asset=impl.symbol,
        )
        after = from_tx_summary(signed.summary, signature_id=rec["signature_id"], native_asset=impl.symbol)
        if (approved.outputs, approved.fee) != (after.outputs, after.fee):
            raise ChainError("the signed transaction does not decode to the approved summary; nothing released")
        now = self._now()
        signed_json = {**signed.to_json(), "signed_at": now}
        # Fail closed: if this row cannot be made durable, the signature never leaves the agent.
        self.audit.append(
            "signature", {"txid": signed.txid, "raw": signed.raw_hex, "sender": signed.sender}, request_id=rec["id"]
        )
        rec["status"], rec["signed"] = SIGNED, signed_json
        # What velocity limits need later, as judged from the bytes that were signed.
        rec["history"] = {
            "chain": after.chain,
            "network": after.network,
            "signature_id": after.signature_id,
            "outputs": [[o.address, str(o.amount), o.asset, o.is_change] for o in after.outputs],
            "fee": str(after.fee),
            "fee_asset": after.fee_asset,
            "opaque": after.opaque,
        }
        self.queue.put(rec)
        return rec

    # --- policy changes -----------------------------------------------------------------------------
    def change_policy(
        self, new: Any, *, finder: TokenFinder, prompts: Prompts, operators: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Replace the policy in the vault header after ``admin_approvals`` distinct touches over it.

        :raises QuorumNotMet: too few approvers present (nothing is written; the attempt is audited).
        """
        from agent.errors import QuorumNotMet
        from agent.policy import policy_change_payload, policy_change_rule

        vault = self.vault()
        current = vault.policy()
        now = self._now()
        rule = policy_change_rule(current)
        payload = policy_change_payload(
            vault_id=vault.header["vault_id"],
            request_id=os.urandom(16),
            current=current,
            new=new,
            expires_at=now + rule.approval_ttl,
        )
        rid = payload.request_id.hex()
        self.audit.append(
            "request",
            {"action": "policy-change", "from_generation": current.generation, "policy": new.to_dict()},
            request_id=rid,
        )
        digest = approval_digest(payload)
        roster = roster_from_header(vault.header, suspended=self.queue.suspended())
        collected = vault.collect(finder, prompts, digest=digest, want=rule.approvals_required, operators=operators)
        try:
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
            decision = evaluate_quorum(ApprovalRequest(payload), fresh, [], rule, roster, now, self.queue.counters())
            for approval in decision.accepted:
                slot = find_slot(roster, approval.slot_id)
                if slot is not None:
                    self.audit.append(
                        "approval",
                        approval_audit_payload(payload, approval, slot),
                        request_id=rid,
                        actor=vault.operator_name(approval.operator_id),
                    )
            self.audit.append("decision", decision.to_json(), request_id=rid)
            self.queue.update_counters(decision.counter_updates)
            if not decision.approved:
                raise QuorumNotMet(
                    f"policy change needs {rule.approvals_required} distinct approvers: {decision.explain()}"
                )
            self._ensure_shares(vault, collected, finder, prompts, digest, operators)
            with vault.open_with(collected) as opened:
                opened.header["policy"] = new.to_dict()
                self.audit.append(
                    "policy_change",
                    {"generation": new.generation, "sha256": new.sha256().hex(), "policy": new.to_dict()},
                    request_id=rid,
                )
                opened.save()
        except BaseException:
            collected.wipe()
            raise
        return {
            "id": rid,
            "generation": new.generation,
            "approved_by": [vault.operator_name(a.operator_id) for a in decision.accepted],
        }

    def reject(self, request_id: str, *, operator: str, reason: str = "") -> dict[str, Any]:
        """Record an operator's veto: the request can no longer be signed."""
        rec = self.queue.get(request_id)
        if rec["status"] != PENDING:
            raise ApprovalError(f"request {rec['id']} is {rec['status']}; nothing to reject")
        vault = self.vault()
        op_id = _operator_id(vault, operator)
        assert op_id is not None
        rejection = Rejection(bytes.fromhex(rec["id"]), op_id, self._now(), reason)
        self.audit.append("rejection", rejection.to_json(), request_id=rec["id"], actor=operator)
        rec["rejections"].append(rejection.to_json())
        rec["status"] = REJECTED
        self.queue.put(rec)
        return rec


#: Change is recognised when it pays one of the wallet's first CHANGE_GAP addresses (or carries a
#: BIP-32 derivation that re-derives from the wallet's xpub), never because a request says so.
CHANGE_GAP = 100


def _owned(wallet: dict[str, Any]) -> Owned:
    addresses = {wallet["address"]} if wallet.get("address") else set()
    xpub = wallet.get("xpub")
    impl = get_chain(wallet["chain"])
    from agent.chains.utxo import UtxoChain

    if xpub and isinstance(impl, UtxoChain):
        addresses.update(impl.addresses_from_xpub(xpub, range(CHANGE_GAP), testnet=wallet["testnet"]))
    return Owned(addresses=frozenset(addresses), xpub=xpub)


def _operator_id(vault: PublicVault, name: str | None) -> bytes | None:
    if name is None:
        return None
    for op in vault.header["operators"]:
        if op["name"] == name:
            return bytes(op["operator_id"])
    if name.startswith("app:"):
        return None  # an application, not an operator: it can never approve anything anyway
    raise UsageError(f"no operator named {name!r} (applications initiate as app:NAME)")


def _quorum_rule(rec: dict[str, Any], vault: PublicVault) -> QuorumRule:
    rule = rec["rule"]
    try:
        return QuorumRule(
            int(rule["approvals_required"]),
            initiator_may_approve=bool(rule["initiator_may_approve"]),
            approval_ttl=int(rule["approval_ttl"]),
            policy_generation=vault.policy().generation,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise KmsAgentError(f"request {rec['id']} has a malformed decision record ({exc})") from None
