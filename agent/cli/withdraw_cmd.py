"""``kms-agent request|approve|reject``: withdrawals with the 4-eye principle."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agent.cli.context import CliPrompts, Paths, emit, err
from agent.cli.options import Json, Operators, PinStdin

if TYPE_CHECKING:
    from agent.withdrawals.ledger import RequestState
from agent.errors import UsageError

app = typer.Typer(help="withdrawal requests: create, list, show", no_args_is_help=True)


def _service() -> Any:
    from agent.withdrawals.service import Withdrawals

    return Withdrawals(Paths.resolve().home)


def describe(state: RequestState) -> str:
    """The summary an approver reads: decoded again from the logged bytes, amounts in units, text escaped."""
    from agent.chains import get_chain
    from agent.policy import Reason, policy_of
    from agent.vault.vault import PublicVault
    from agent.withdrawals.display import render_request
    from agent.withdrawals.service import _owned

    paths = Paths.resolve()
    vault = PublicVault.load(paths.vault, paths.pin)
    summary = get_chain(state.chain).decode(
        state.tx, testnet=state.testnet, owned=_owned(vault.wallet(state.signature_id))
    )
    return render_request(
        summary,
        chain=state.chain,
        testnet=state.testnet,
        signature_id=state.signature_id,
        index=state.index,
        initiator=state.initiator,
        status=state.status.value,
        reasons=[Reason.from_json(r) for r in state.decision.get("reasons", [])],
        approvals=len({a.operator_id for a in state.approvals}),
        approvals_required=int(state.rule.get("approvals_required", 0)),
        request_id=state.request_id,
        max_fee_percent=policy_of(vault.header).rule_for(state.chain, state.signature_id).max_fee_percent,
    )


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "status",
        "created_at",
        "chain",
        "testnet",
        "signature_id",
        "index",
        "initiator",
        "summary",
        "decision",
        "rule",
        "signed",
    )
    out = {("signatureId" if k == "signature_id" else k): rec[k] for k in keys}  # Tatum's name for a wallet
    out["onchain"] = rec.get("onchain")  # broadcast and confirmations (docs/broadcast.md §5)
    out["approvals"] = [
        {
            "operator_id": a["operator_id"],
            "slot_id": a["slot_id"],
            "sign_count": a["sign_count"],
            "approved_at": a["approved_at"],
        }
        for a in rec["approvals"]
    ]
    out["rejections"] = rec["rejections"]
    return out


@app.command("create")
def create(
    chain: Annotated[str, typer.Argument(help="BTC, ETH, ...")],
    signature_id: Annotated[str, typer.Argument(help="the wallet paying")],
    index: Annotated[int, typer.Argument(help="derivation index of the paying address")] = 0,
    tx: Annotated[str | None, typer.Option("--tx", help="unsigned tx: hex (EVM) or base64 PSBT; default stdin")] = None,
    initiator: Annotated[str | None, typer.Option(help="who asks: an operator name or app:NAME")] = None,
    to: Annotated[str | None, typer.Option("--to", help="intent: destination address (instead of --tx)")] = None,
    amount: Annotated[int | None, typer.Option(help="intent: amount in base units (satoshi, wei)")] = None,
    asset: Annotated[str | None, typer.Option(help="intent: ERC-20 token contract (EVM); default the coin")] = None,
    nonce: Annotated[int | None, typer.Option(help="intent, EVM: the address's next nonce")] = None,
    max_fee_per_gas: Annotated[int | None, typer.Option(help="intent, EVM: wei per gas")] = None,
    utxos: Annotated[Path | None, typer.Option(help="intent, UTXO: JSON coins (see `sweep --help`)")] = None,
    fee_rate: Annotated[float | None, typer.Option(help="intent, UTXO: sat/vbyte")] = None,
    change_index: Annotated[int, typer.Option(help="intent, UTXO: wallet index that receives change")] = 1,
    as_json: Json = False,
) -> None:
    """queue a withdrawal (PSBT, unsigned tx, or an intent): decode the exact bytes, judge by policy"""
    if to is not None:
        tx = _build_intent(
            chain,
            signature_id,
            to=to,
            amount=amount,
            asset=asset,
            nonce=nonce,
            max_fee_per_gas=max_fee_per_gas,
            utxos=utxos,
            fee_rate=fee_rate,
            change_index=change_index,
        )
    if tx is None:
        if sys.stdin.isatty():
            raise UsageError("give the unsigned transaction with --tx or on stdin")
        tx = sys.stdin.read().strip()
    state = _service().create(chain=chain, signature_id=signature_id, index=index, tx=tx, initiator=initiator)
    emit(_public(state.to_record()), as_json, describe(state))


def _build_intent(chain: str, signature_id: str, *, amount: int | None, **intent: Any) -> str:
    from agent.cli.session import load_public
    from agent.withdrawals.intent import build_for_wallet

    if amount is None:
        raise UsageError("an intent needs --amount")
    wallet = load_public(Paths.resolve(), quiet=True).wallet(signature_id)
    return build_for_wallet(wallet, chain=chain, amount=amount, **intent)


@app.command("list")
def list_requests(
    status: Annotated[str | None, typer.Option(help="pending, denied, signed or rejected")] = None,
    as_json: Json = False,
) -> None:
    """list withdrawal requests"""
    recs = _service().queue.list(status)  # the index: fast, and rebuilt from the audit log when behind
    emit(
        {"requests": [_public(r) for r in recs]},
        as_json,
        "\n".join(f"{r['id']}  {r['status']:<8} {r['chain']:<5} {r['signature_id']}" for r in recs),
    )


@app.command("show")
def show(request_id: str, as_json: Json = False) -> None:
    """show a request decoded from its raw bytes, with its policy decision and approvals"""
    state = _service().request(request_id)  # from the audit log, not the index
    emit(_public(state.to_record()), as_json, describe(state))


@app.command("rebuild")
def rebuild(as_json: Json = False) -> None:
    """rebuild the queue (state/queue.sqlite) and the audit log's index from the audit rows; nothing else changes"""
    service = _service()
    entries = service.audit.reindex()
    service.queue.reset()
    count = service.sync()
    emit(
        {"rebuilt": count, "index_entries": entries},
        as_json,
        f"Rebuilt the queue index from the audit log: {count} requests; the audit index: {entries} entries.",
    )


def register(root: typer.Typer) -> None:
    @root.command("approve")
    def approve(
        request_id: str,
        operator: Operators = None,
        pin_stdin: PinStdin = False,
        broadcast: Annotated[
            bool, typer.Option("--broadcast", help="once signed, send it to its chain's node (docs/broadcast.md)")
        ] = False,
        as_json: Json = False,
    ) -> None:
        """approve a withdrawal with PIN and touch; signs as soon as the quorum is met

        With `kms-agent serve` running, the touches go to the agent, which holds each approver's
        share until the quorum signs: operators can approve hours apart, each with only their own token.
        """
        from agent.cli.session import load_public
        from agent.service.agent_client import AgentClient
        from agent.tokens.discovery import find_token

        paths = Paths.resolve()
        service = _service()
        state = service.request(request_id)
        vault = load_public(paths)  # warns when the tokens are simulated
        if broadcast:
            from agent.broadcast import config as node_config

            if node_config.load(paths.home).node(state.chain, state.testnet) is None:
                raise UsageError(
                    f"--broadcast: no node configured for {state.chain} {'testnet' if state.testnet else 'mainnet'}",
                    hint="kms-agent node set CHAIN ... (nothing was approved)",
                )
        err(describe(state))
        agent = AgentClient.find(paths.home)
        answer: dict[str, Any] = {}

        def submit(rid: str, collected: Any) -> RequestState:
            assert agent is not None
            answer.update(agent.approve(rid, collected))
            decided: RequestState = service.request(rid)  # the agent committed: the audit log says what happened
            return decided

        state = service.approve(
            request_id,
            finder=lambda slot: find_token(slot, paths.home),
            prompts=CliPrompts(paths, pin_stdin=pin_stdin),
            operators=operator,
            vault=vault,
            submit=submit if agent is not None else None,
        )
        rec = state.to_record()
        result = _public(rec)
        touches = answer.get("vault_touches")
        if touches is not None:
            result["vault_touches"] = touches
        if state.signed is not None and broadcast:
            from agent.broadcast.broadcaster import BroadcastFailed, broadcast_request

            sent = broadcast_request(paths.home, state.request_id)
            result["broadcast"] = sent.to_json()
            emit(result, as_json, f"Signed. txid {state.signed.txid}\nbroadcast: {sent.outcome or sent.skipped}")
            if not sent.ok and not sent.skipped:
                raise BroadcastFailed(
                    f"request {state.request_id} is signed but was not accepted: {sent.reason or 'no answer'}",
                    hint=f"kms-agent broadcast {state.request_id}",
                    request_id=state.request_id,
                )
            return
        if state.signed is not None:
            emit(result, as_json, f"Signed. txid {state.signed.txid}\n{state.signed.raw}")
            return
        line = f"Recorded: {len(rec['approvals'])} of {rec['rule']['approvals_required']} approvals"
        if touches is not None:
            line += f"; the agent holds {touches['held']} of the {touches['needed']} shares that open the vault"
        emit(result, as_json, line + "; waiting for more.")

    @root.command("reject")
    def reject(
        request_id: str,
        operator: Annotated[str, typer.Option("--operator", help="the operator vetoing (touches their token)")],
        reason: Annotated[str, typer.Option(help="why (signed with the veto, and goes to the audit log)")] = "",
        pin_stdin: PinStdin = False,
        as_json: Json = False,
    ) -> None:
        """veto a withdrawal: it can no longer be signed

        The operator enters the PIN and touches their token, as for an approval: the veto is signed
        evidence, bound to this request's exact bytes and to the reason.
        """
        from agent.service.agent_client import AgentClient
        from agent.tokens.discovery import find_token

        paths = Paths.resolve()
        service = _service()
        agent = AgentClient.find(paths.home)
        # The touch happens here, on this host, with the operator's own token; a running agent only
        # verifies the signed veto against the header and records it (and wipes held shares).
        rejection = service.sign_rejection(
            request_id,
            operator=operator,
            reason=reason,
            finder=lambda slot: find_token(slot, paths.home),
            prompts=CliPrompts(paths, pin_stdin=pin_stdin),
        )
        if agent is not None:
            agent.reject(rejection.request_id.hex(), operator=operator, reason=reason, rejection=rejection)
            state = service.request(request_id)
        else:
            state = service.reject(request_id, operator=operator, reason=reason, rejection=rejection)
        emit(_public(state.to_record()), as_json, f"Rejected {state.request_id}.")
