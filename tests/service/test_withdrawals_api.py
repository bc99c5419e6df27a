"""``/v1/withdrawals`` against the real server: submit, read, list, cancel, idempotency, refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.service.agent_proc import AgentProcess
from tests.withdrawals.helpers import COLD, ETHER, Ready


def tx_body(ready: Ready, value: int = ETHER // 100, nonce: int = 0, **extra: Any) -> dict[str, Any]:
    return {"chain": "ETH", "signatureId": ready.sig_id, "index": 0, "tx": ready.tx(value, nonce), **extra}


def intent_body(ready: Ready, to: str = COLD, **extra: Any) -> dict[str, Any]:
    return {
        "chain": "ETH",
        "signatureId": ready.sig_id,
        "to": to,
        "amount": str(ETHER // 10),
        "nonce": 7,
        "maxFeePerGas": "30000000000",
        "initiator": "app:exchange",
        **extra,
    }


def test_submit_read_list_and_cancel(agent: AgentProcess, ready: Ready) -> None:
    with agent.tcp() as client:
        created = client.post("/v1/withdrawals", json=tx_body(ready, initiator="app:exchange"))
        assert created.status_code == 201, created.text
        view = created.json()
        assert view["status"] == "pending" and view["approvals_required"] == 2 and view["signed"] is None
        output = view["summary"]["outputs"][0]
        assert (output["amount"], output["amountHuman"]) == (str(ETHER // 100), "0.01")
        assert client.get(f"/v1/withdrawals/{view['id']}").json() == view
        listed = client.get("/v1/withdrawals", params={"status": "pending"}).json()
        assert [w["id"] for w in listed["withdrawals"]] == [view["id"]] and listed["total"] == 1
        assert client.get("/v1/withdrawals", params={"status": "signed"}).json()["total"] == 0

        intent = client.post("/v1/withdrawals", json=intent_body(ready))
        assert intent.status_code == 201 and intent.json()["summary"]["nonce"] == 7

        wrong = client.post(f"/v1/withdrawals/{view['id']}/cancel", json={"initiator": "app:other"})
        assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
        cancelled = client.post(f"/v1/withdrawals/{view['id']}/cancel", json={"initiator": "app:exchange"})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "rejected"
        again = client.post(f"/v1/withdrawals/{view['id']}/cancel", json={"initiator": "app:exchange"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "approval"
        missing = client.post(f"/v1/withdrawals/{'0' * 32}/cancel", json={"initiator": "app:exchange"})
        assert missing.status_code == 404
    rows = ready.service.audit.rows(request_id=view["id"], kinds=["decision"])
    assert rows[-1].payload["stage"] == "cancel" and rows[-1].actor == "app:exchange"
    assert ready.service.request(view["id"]).status == "rejected"  # the ledger derives it from the row
    assert ready.service.audit.verify().ok


def test_a_denial_answers_with_the_id_and_the_reasons(agent: AgentProcess, ready: Ready) -> None:
    with agent.unix() as client:
        denied = client.post("/v1/withdrawals", json=intent_body(ready, to="0x" + "0b" * 20))
    assert denied.status_code == 201, denied.text
    body = denied.json()
    assert body["status"] == "denied" and len(body["id"]) == 32
    assert any(r["rule"] == "allowlist" and r["effect"] == "deny" for r in body["reasons"])
    assert ready.service.request(body["id"]).status == "denied"


def test_a_retry_with_the_same_key_returns_the_same_withdrawal(agent: AgentProcess, ready: Ready) -> None:
    body = tx_body(ready, initiator="app:exchange")
    with agent.tcp() as client:
        first = client.post("/v1/withdrawals", json=body, headers={"Idempotency-Key": "order-1"})
        retry = client.post("/v1/withdrawals", json=body, headers={"Idempotency-Key": "order-1"})
        other = client.post("/v1/withdrawals", json=tx_body(ready, nonce=1), headers={"Idempotency-Key": "order-1"})
        bad_key = client.post("/v1/withdrawals", json=body, headers={"Idempotency-Key": "has space"})
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json() == first.json()
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency-conflict"
    assert bad_key.status_code == 422
    assert len(ready.service.audit.rows(kinds=["request"], request_id=first.json()["id"])) == 1
    assert [r.request_id for r in ready.service.audit.rows(kinds=["request"])][1:] == [first.json()["id"]]


def test_concurrent_submits_with_one_key_create_one_withdrawal(agent: AgentProcess, ready: Ready) -> None:
    body = tx_body(ready, initiator="app:exchange")

    def submit(_: int) -> httpx.Response:
        with agent.tcp() as client:
            return client.post("/v1/withdrawals", json=body, headers={"Idempotency-Key": "same-key"})

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(submit, range(24)))
    assert sorted(r.status_code for r in responses) == [200] * 23 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(ready.service.audit.rows(kinds=["request"])) == 2  # the policy change's, and this one


def bad_requests(ready: Ready) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(what, httpx request arguments, expected status)."""
    good = tx_body(ready)
    yield "not JSON", {"content": b"{", "headers": {"content-type": "application/json"}}, 400
    yield "empty", {"content": b""}, 422
    yield "a list", {"json": [good]}, 422
    yield "unknown field", {"json": {**good, "fee": "1"}}, 422
    yield "unknown intent field", {"json": {**intent_body(ready), "gasPrice": "1"}}, 422
    yield "string index", {"json": {**good, "index": "0"}}, 422
    yield "negative index", {"json": {**good, "index": -1}}, 422
    yield "float amount", {"json": {**intent_body(ready), "amount": 1.5}}, 422
    yield "zero amount", {"json": {**intent_body(ready), "amount": "0"}}, 422
    yield "not hex nor base64", {"json": {**good, "tx": "zz!!"}}, 422
    yield "undecodable tx", {"json": {**good, "tx": "00" * 40}}, 422
    yield "unknown chain", {"json": {**good, "chain": "NOPE"}}, 422
    yield "unknown wallet", {"json": {**good, "signatureId": "nope"}}, 422
    yield "bad address", {"json": intent_body(ready, to="0x1234")}, 422
    yield "oversized", {"json": {**good, "tx": "00" * 200_000}}, 413
    yield "oversized, chunked", {"content": iter([b"[" + b"0," * 100_000] * 3 + [b"0]"])}, 413
    yield "no intent state", {"json": {k: v for k, v in intent_body(ready).items() if k != "nonce"}}, 422


def test_bad_requests_get_a_4xx_with_a_reason_and_leave_nothing(agent: AgentProcess, ready: Ready) -> None:
    rows = len(ready.service.audit.rows())
    state = sorted(p.name for p in (ready.home / "state").iterdir())
    with agent.tcp() as client:
        for what, kwargs, status in bad_requests(ready):
            response = client.post("/v1/withdrawals", **kwargs)
            assert response.status_code == status, (what, response.text)
            error = response.json()["error"]
            assert error["code"] and error["message"], what
        for path in ("/v1/withdrawals/xyz", f"/v1/withdrawals/{'a' * 32}", "/v1/withdrawals?status=lost"):
            response = client.get(path)
            assert response.status_code in (404, 422) and response.json()["error"]["message"], path
        assert client.delete("/v1/wallets").status_code == 405
        assert client.get("/nowhere").json()["error"]["code"] == "not-found"
    assert len(ready.service.audit.rows()) == rows
    assert sorted(p.name for p in (ready.home / "state").iterdir()) == state
    assert "Traceback" not in agent.stderr


def test_errors_keep_the_json_shape_over_the_socket(agent: AgentProcess, ready: Ready) -> None:
    with agent.unix() as client:
        response = client.post("/v1/withdrawals", json={**tx_body(ready), "signatureId": "nope"})
    assert response.status_code == 422
    assert json.loads(response.text)["error"]["code"] == "usage"
