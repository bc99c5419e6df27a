"""Tatum's KMS endpoints over httpx, exactly as Tatum KMS calls them (research §1.6).

* ``POST {url}/v3/kms/pending/{chain}`` ``{"signatureIds": [...]}``: the pending transactions;
* ``POST {url}/v3/{path}/broadcast`` ``{"txData": raw, "signatureId": <pending id>}``: Tatum
  broadcasts and completes the pending transaction itself;
* ``POST {url}/v3/tatum/kms/batch`` ``{"errors": [{"signatureId": id, "error": text}]}``: failures
  (Tatum marks them failed and fires its KMS_FAILED_TX webhook).

Every request carries ``x-api-key`` and ``x-ttm-kms-client-version``. A down or broken API raises
:class:`TatumApiError` (one line, no traceback) and the daemon goes on with its next pass; a
broadcast never raises: its answer is a :class:`~agent.broadcast.nodes.NodeAnswer` to record verbatim.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from agent import __version__
from agent.broadcast.nodes import NodeAnswer, Outcome, clip
from agent.errors import KmsAgentError

#: Our chain name -> Tatum's broadcast path (``/v3/<path>/broadcast``), for the chains we sign.
BROADCAST_PATHS: dict[str, str] = {
    "BTC": "bitcoin",
    "LTC": "litecoin",
    "DOGE": "dogecoin",
    "BCH": "bcash",
    "ETH": "ethereum",
    "BSC": "bsc",
    "MATIC": "polygon",
    "KLAY": "klaytn",
    "XDC": "xdc",
    "ONE": "one",
    "CELO": "celo",
    "KCS": "kcs",
}
#: Tatum refuses more signatureIds than this per chain and API call (``KMS_CONSTANTS.SIGNATURE_IDS``).
MAX_SIGNATURE_IDS = 25_000
CLIENT_VERSION = f"kms-agent/{__version__}"
TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class TatumApiError(KmsAgentError):
    """The Tatum API could not be reached, or answered something that is not Tatum's shape."""


@dataclass(frozen=True)
class KeyRef:
    """One key of a pending transaction: a wallet (signatureId) and, for a mnemonic, the index."""

    signature_id: str
    index: int | None = None


@dataclass(frozen=True)
class PendingTx:
    """A pending KMS transaction (Tatum's ``TransactionKMS``): what to sign, and with which keys."""

    id: str
    chain: str
    serialized: str
    #: Private-key wallets (or a mnemonic wallet at ``index``) whose key signs.
    hashes: tuple[str, ...]
    #: Mnemonic wallets and derivation indexes (UTXO chains).
    signatures: tuple[KeyRef, ...]
    index: int | None
    withdrawal_id: str | None
    tx_id: str | None
    #: The object exactly as Tatum sent it (the body of a POST to ``--externalUrl``).
    document: Mapping[str, Any]

    @classmethod
    def from_json(cls, obj: Any, chain: str) -> PendingTx:
        """:raises TatumApiError: not a pending transaction (its id, when it has one, is in the message)."""
        if not isinstance(obj, dict):
            raise TatumApiError("a pending transaction is not a JSON object")
        tid = obj.get("id")
        if not isinstance(tid, str) or not tid or len(tid) > 200:
            raise TatumApiError("a pending transaction has no id")
        serialized = obj.get("serializedTransaction")
        if not isinstance(serialized, str):
            raise TatumApiError(f"pending transaction {tid}: serializedTransaction is not a string")
        hashes = obj.get("hashes") or []
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            raise TatumApiError(f"pending transaction {tid}: hashes is not a list of signatureIds")
        refs = []
        for sig in obj.get("signatures") or []:
            if not isinstance(sig, dict) or not isinstance(sig.get("id"), str):
                raise TatumApiError(f"pending transaction {tid}: a signature has no id")
            refs.append(KeyRef(sig["id"], _index(sig.get("index"), tid)))
        return cls(
            id=tid,
            chain=str(obj.get("chain") or chain).upper(),
            serialized=serialized,
            hashes=tuple(hashes),
            signatures=tuple(refs),
            index=_index(obj.get("index"), tid),
            withdrawal_id=_opt_str(obj.get("withdrawalId")),
            tx_id=_opt_str(obj.get("txId")),
            document=obj,
        )


@dataclass(frozen=True)
class Malformed:
    """A pending item that is not a transaction we can read: reported when it has an id."""

    id: str | None
    error: str


@dataclass(frozen=True)
class Failure:
    """One entry of ``/v3/tatum/kms/batch``: the pending transaction's id and why it failed."""

    pending_id: str
    error: str

    def to_json(self) -> dict[str, str]:
        return {"signatureId": self.pending_id, "error": self.error}


def _index(value: Any, tid: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise TatumApiError(f"pending transaction {tid}: index {value!r} is not a derivation index")
    return value


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class TatumApi:
    """One API base URL and key; one connection pool for the daemon's life."""

    def __init__(self, base_url: str, api_key: str, *, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            timeout=timeout,
            headers={"x-api-key": api_key, "x-ttm-kms-client-version": CLIENT_VERSION},
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: Any) -> httpx.Response:
        url = f"{self.base_url}{path}"
        try:
            return self._client.post(url, json=body)
        except httpx.TimeoutException:
            raise TatumApiError(f"the Tatum API at {self.base_url} did not answer {path} in time") from None
        except httpx.HTTPError as exc:
            raise TatumApiError(
                f"the Tatum API at {self.base_url} is unreachable: {type(exc).__name__}: {exc}"
            ) from None

    def pending(self, chain: str, signature_ids: Sequence[str]) -> list[PendingTx | Malformed]:
        """Every pending transaction of ``chain`` for these wallets (POSTed even when there are none, as Tatum does).

        :raises TatumApiError: unreachable, a non-2xx answer, or not a JSON list.
        """
        out: list[PendingTx | Malformed] = []
        ids = list(signature_ids)
        chunks = [ids[i : i + MAX_SIGNATURE_IDS] for i in range(0, len(ids), MAX_SIGNATURE_IDS)] or [[]]
        for chunk in chunks:
            response = self._post(f"/v3/kms/pending/{chain}", {"signatureIds": chunk})
            if not response.is_success:
                raise TatumApiError(
                    f"the Tatum API answered {response.status_code} to the pending {chain} transactions: "
                    f"{_short(response.text)}"
                )
            try:
                items = response.json()
            except ValueError:
                raise TatumApiError(f"the Tatum API's pending {chain} answer is not JSON") from None
            if not isinstance(items, list):
                raise TatumApiError(f"the Tatum API's pending {chain} answer is not a list")
            for item in items:
                try:
                    out.append(PendingTx.from_json(item, chain))
                except TatumApiError as exc:
                    tid = item.get("id") if isinstance(item, dict) else None
                    out.append(Malformed(tid if isinstance(tid, str) and tid else None, exc.message))
        return out

    def broadcast_url(self, chain: str) -> str:
        return f"{self.base_url}/v3/{BROADCAST_PATHS[chain]}/broadcast"

    def broadcast(self, chain: str, tx_data: str, pending_id: str) -> NodeAnswer:
        """Hand signed bytes to Tatum, which broadcasts them and completes ``pending_id``. Never raises."""
        url = self.broadcast_url(chain)
        try:
            response = self._client.post(url, json={"txData": tx_data, "signatureId": pending_id})
        except httpx.HTTPError as exc:
            return NodeAnswer(Outcome.UNREACHABLE, None, clip(f"{type(exc).__name__}: {exc}"))
        text = clip(response.text)
        if response.is_success:
            txid = None
            try:
                body = response.json()
                if isinstance(body, dict) and isinstance(body.get("txId"), str):
                    txid = body["txId"]
            except ValueError:
                pass
            return NodeAnswer(Outcome.ACCEPTED, response.status_code, text, txid=txid)
        if response.status_code >= 500 or response.status_code in (408, 429):
            return NodeAnswer(Outcome.UNREACHABLE, response.status_code, text)
        return NodeAnswer(Outcome.REJECTED, response.status_code, text, reason=_reason(response))

    def report(self, failures: Sequence[Failure]) -> None:
        """Tell Tatum these pending transactions failed. :raises TatumApiError: not delivered."""
        if not failures:
            return
        response = self._post("/v3/tatum/kms/batch", {"errors": [f.to_json() for f in failures]})
        if not response.is_success:
            raise TatumApiError(
                f"the Tatum API answered {response.status_code} to the failure report: {_short(response.text)}"
            )


def _short(text: str, limit: int = 300) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[:limit] + "..."


def _reason(response: httpx.Response) -> str:
    """Tatum's error message (``{"message": ..., "cause": ...}``), else the body's first line."""
    try:
        body = response.json()
    except ValueError:
        return _short(response.text) or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("message", "cause") if isinstance(body.get(k), str | int) and body.get(k)]
        if parts:
            return _short(": ".join(parts))
    return _short(json.dumps(body))
