"""One exception tree for kms-agent, each class with an operator-facing message and an exit code.

Library code raises; only ``agent.cli.main`` prints and exits. The tree::

    KmsAgentError (1)
    ├── UsageError (2)                  bad arguments, unknown chain, malformed request
    ├── TokenError (3)                  anything a token said or failed to say
    │   ├── TokenNotFound               no plugged-in token holds the credential
    │   ├── WrongToken                  a token was found but is not the one asked for
    │   ├── TouchTimeout                nobody touched the token in time
    │   ├── TouchDenied                 the touch was refused / the operation cancelled
    │   ├── TokenRemoved                the token went away mid-operation
    │   ├── TokenUnsupported            the token lacks hmac-secret, PIN support, ...
    │   └── PinError (4)
    │       ├── PinInvalid              wrong PIN, with the retries left
    │       ├── PinBlocked              no retries left
    │       └── PinRequired             the token has no PIN set, or none was given
    ├── ApprovalError (5)
    │   ├── QuorumNotMet                fewer distinct operators than the quorum
    │   └── ApprovalExpired
    ├── PolicyDenied (5)
    ├── VaultError (6)
    │   ├── VaultIntegrityError         any MAC / AEAD / signature failure: deliberately opaque
    │   ├── VaultFormatError            structural problem, quotes what is wrong
    │   ├── VaultRollback               older than the generation this agent has seen
    │   ├── VaultUntrusted              not the vault this agent pinned (or none pinned yet)
    │   ├── VaultNotFound (7)
    │   └── VaultPermissions            readable by other users
    ├── ChainError (8)                  decode / sign failures in a chain module
    └── StateError (9)                  the agent's own state or audit store is unusable (+ issue #5 block at the end)

``ProgrammingError`` is separate (a ``RuntimeError``): misuse of our API, never an operator's fault.
"""

from __future__ import annotations


class KmsAgentError(Exception):
    """Base of every error an operator can cause or fix."""

    exit_code: int = 1
    #: Optional advice printed as ``hint:`` lines under the message.
    hint: str | None = None
    #: The withdrawal or policy request the error concerns, when there is one (``--json`` reports it).
    request_id: str | None = None

    def __init__(self, message: str, *, hint: str | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint
        if request_id is not None:
            self.request_id = request_id


class UsageError(KmsAgentError):
    exit_code = 2


class TokenError(KmsAgentError):
    exit_code = 3


class TokenNotFound(TokenError):
    pass


class WrongToken(TokenError):
    pass


class TouchTimeout(TokenError):
    pass


class TouchDenied(TokenError):
    pass


class TokenRemoved(TokenError):
    pass


class TokenUnsupported(TokenError):
    pass


class PinError(TokenError):
    exit_code = 4


class PinInvalid(PinError):
    def __init__(self, message: str, *, attempts_remaining: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.attempts_remaining = attempts_remaining


class PinBlocked(PinError):
    pass


class PinRequired(PinError):
    pass


class ApprovalError(KmsAgentError):
    exit_code = 5


class QuorumNotMet(ApprovalError):
    pass


class ApprovalExpired(ApprovalError):
    pass


class PolicyDenied(KmsAgentError):
    exit_code = 5


class VaultError(KmsAgentError):
    exit_code = 6


class VaultIntegrityError(VaultError):
    """Raised for every cryptographic check that fails; says nothing about which one, on purpose."""

    def __init__(
        self,
        message: str = "wallet.dat failed its integrity check (tampered, corrupted or not ours)",
        *,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)


class VaultFormatError(VaultError):
    pass


class VaultRollback(VaultError):
    pass


class VaultUntrusted(VaultError):
    pass


class VaultNotFound(VaultError):
    exit_code = 7


class VaultPermissions(VaultError):
    pass


class ChainError(KmsAgentError):
    exit_code = 8


class StateError(KmsAgentError):
    exit_code = 9


class ProgrammingError(RuntimeError):
    """Misuse of kms-agent's Python API; a bug in the caller, not an operator error."""


#: Exit codes as documented in README.md and docs/cli.md.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected error",
    2: "usage: bad arguments, malformed input, unknown chain",
    3: "token: not found, wrong token, touch refused or timed out, removed",
    4: "PIN: wrong, blocked or missing",
    5: "approval or policy: quorum not met, denied, expired",
    6: "vault: integrity, format, rollback or permission failure",
    7: "vault not found",
    8: "chain: transaction could not be decoded, signed or broadcast",
    9: "agent state or audit store unusable",
    130: "interrupted (Ctrl-C); nothing was written",
}

#: The machine-readable ``error.code`` that ``--json`` prints for each exit code.
ERROR_CODES: dict[int, str] = {
    1: "internal",
    2: "usage",
    3: "token",
    4: "pin",
    5: "approval",
    6: "vault",
    7: "vault-not-found",
    8: "chain",
    9: "state",
    130: "interrupted",
}


def error_code(exit_code: int) -> str:
    """The ``--json`` error code for an exit code (``internal`` for any code not documented)."""
    return ERROR_CODES.get(exit_code, "internal")


# --- approvals, policy and audit (issue #5) -------------------------------------------------------
#   ApprovalError (5) ── ApprovalInvalid: evidence that does not verify for this request, or is malformed
#                     ├─ ApprovalRejected: an operator vetoed the request
#                     └─ OperatorSuspended: a cloned token was seen (signCount went back); needs reinstating
#   UsageError (2)    ── PolicyFormatError: a policy document with an unknown key, wrong type or bad value
#   StateError (9)    ── AuditIntegrityError: the audit chain or its head pin does not check out


class ApprovalInvalid(ApprovalError):
    pass


class ApprovalRejected(ApprovalError):
    pass


class OperatorSuspended(ApprovalError):
    pass


class PolicyFormatError(UsageError):
    pass


class AuditIntegrityError(StateError):
    pass
