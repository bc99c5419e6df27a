"""The CLI's side of a running agent: find it on its socket, hand it touches, read its answer.

When `kms-agent serve` runs, `approve` and `reject` talk to it over the Unix socket (0600: only the
agent's user can connect). The touch still happens in the CLI process, on this host, with the
operator's own token; what travels over the socket is the token's approval evidence and the share
it unwrapped, which the agent verifies (approvals against the signed header) and holds in memory.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import (
    ApprovalError,
    ChainError,
    KmsAgentError,
    PinError,
    StateError,
    TokenError,
    UsageError,
    VaultError,
    VaultNotFound,
)
from agent.vault.vault import Collected

if TYPE_CHECKING:
    from agent.approvals import Rejection

SOCKET_NAME = "agent.sock"
#: The JSON error ``code`` (agent/errors.py ERROR_CODES) -> the exception the CLI raises for it.
_ERRORS: dict[str, type[KmsAgentError]] = {
    "usage": UsageError,
    "token": TokenError,
    "pin": PinError,
    "approval": ApprovalError,
    "vault": VaultError,
    "vault-not-found": VaultNotFound,
    "chain": ChainError,
    "state": StateError,
}


def socket_path(home: Path) -> Path:
    return Path(home) / SOCKET_NAME


class AgentClient:
    """HTTP over the agent's Unix socket (httpx is imported only when an agent socket exists)."""

    def __init__(self, path: Path, *, timeout: float = 120.0) -> None:
        import httpx

        self.path = path
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(path)), base_url="http://kms-agent", timeout=timeout
        )

    @classmethod
    def find(cls, home: Path) -> AgentClient | None:
        """The agent serving this data directory, or None when none answers on its socket."""
        path = socket_path(home)
        if not path.exists():
            return None
        import httpx

        try:
            client = cls(path, timeout=2.0)
            if client._http.get("/health").status_code == 200:
                client._http.timeout = httpx.Timeout(120.0)
                return client
        except httpx.HTTPError:
            pass
        return None

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        try:
            response = self._http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise StateError(
                f"the agent on {self.path} did not answer ({type(exc).__name__})",
                hint="check `kms-agent serve`; nothing was recorded unless its log says so",
            ) from None
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise StateError(f"the agent answered HTTP {response.status_code} without JSON") from None
        if response.status_code >= 400:
            error = data.get("error") or {}
            cls = _ERRORS.get(str(error.get("code")), StateError)
            raise cls(
                str(error.get("message") or f"the agent refused (HTTP {response.status_code})"),
                hint=error.get("hint"),
                request_id=error.get("request_id"),
            )
        return data

    def approve(self, request_id: str, collected: Collected) -> dict[str, Any]:
        """Hand the touches (evidence and shares) to the agent; it records them and signs when it can."""
        touches = []
        for touch in collected.touches:
            share = collected.shares.get(touch.operator_id)
            a = touch.approval
            touches.append(
                {
                    "operator_id": touch.operator_id.hex(),
                    "slot_id": touch.slot_id.hex(),
                    "kind": a.kind,
                    "auth_data": base64.b64encode(a.auth_data).decode(),
                    "signature": base64.b64encode(a.signature).decode(),
                    "sign_count": a.sign_count,
                    "user_present": a.user_present,
                    "user_verified": a.user_verified,
                    "share": bytes(share).decode() if share is not None else None,
                }
            )
        return self._call("POST", f"/v1/withdrawals/{request_id}/approvals", {"touches": touches})

    def reject(self, request_id: str, *, operator: str, reason: str, rejection: Rejection) -> dict[str, Any]:
        """Hand a veto this CLI signed (``Withdrawals.sign_rejection``) to the agent, which verifies and records it."""
        touch = rejection.touch
        if touch is None:
            raise UsageError("a veto must be signed with the operator's touch")
        body = {
            "operator": operator,
            "reason": reason,
            "touch": {
                "slot_id": touch.slot_id.hex(),
                "kind": touch.kind,
                "auth_data": base64.b64encode(touch.auth_data).decode(),
                "signature": base64.b64encode(touch.signature).decode(),
                "sign_count": touch.sign_count,
                "user_present": touch.user_present,
                "user_verified": touch.user_verified,
            },
        }
        return self._call("POST", f"/v1/withdrawals/{request_id}/reject", body)
