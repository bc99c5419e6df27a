"""Translate python-fido2's errors into kms-agent's tree, once, at the boundary.

Like httpx's ``map_httpcore_exceptions``: every CTAP status a token can return maps to one class
with a message an operator can act on; a test walks ``CtapError.ERR`` to keep the table complete.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fido2.ctap import CtapError

from agent.errors import (
    PinBlocked,
    PinInvalid,
    PinRequired,
    TokenError,
    TokenRemoved,
    TokenUnsupported,
    TouchDenied,
    TouchTimeout,
    WrongToken,
)

ERR = CtapError.ERR

#: CTAP status -> (exception class, message). ``{label}`` is the token's label.
CTAP_ERRORS: dict[int, tuple[type[TokenError], str]] = {
    ERR.PIN_INVALID: (PinInvalid, "wrong PIN for {label}"),
    ERR.PIN_BLOCKED: (PinBlocked, "the PIN of {label} is blocked; only a reset (which destroys its credentials) helps"),
    ERR.PIN_AUTH_BLOCKED: (PinBlocked, "{label} blocked PIN entry after 3 wrong tries: unplug it and plug it back in"),
    ERR.PIN_NOT_SET: (PinRequired, "{label} has no PIN set; set one first (e.g. `ykman fido access change-pin`)"),
    ERR.PIN_POLICY_VIOLATION: (PinInvalid, "the new PIN for {label} violates the token's PIN policy"),
    ERR.PIN_AUTH_INVALID: (TokenError, "{label} rejected the PIN authentication (stale PIN token); try again"),
    ERR.PUAT_REQUIRED: (PinRequired, "{label} requires its PIN for this operation"),
    ERR.UV_BLOCKED: (PinBlocked, "user verification on {label} is blocked"),
    ERR.UV_INVALID: (PinInvalid, "user verification failed on {label}"),
    ERR.USER_ACTION_TIMEOUT: (TouchTimeout, "no touch on {label} in time"),
    ERR.ACTION_TIMEOUT: (TouchTimeout, "no touch on {label} in time"),
    ERR.USER_ACTION_PENDING: (TouchTimeout, "{label} is still waiting for a touch from an earlier request"),
    ERR.OPERATION_DENIED: (TouchDenied, "the touch on {label} was refused"),
    ERR.KEEPALIVE_CANCEL: (TouchDenied, "the operation on {label} was cancelled"),
    ERR.NO_CREDENTIALS: (WrongToken, "{label} does not hold the enrolled credential (wrong token?)"),
    ERR.PIN_TOKEN_EXPIRED: (TokenError, "the PIN session on {label} expired; try again"),
    ERR.UP_REQUIRED: (TouchTimeout, "{label} needs a touch for this operation"),
    ERR.UNAUTHORIZED_PERMISSION: (TokenError, "{label} refused: the PIN token lacks the permission"),
    ERR.INVALID_CREDENTIAL: (WrongToken, "{label} does not recognise the enrolled credential"),
    ERR.LIMIT_EXCEEDED: (TokenError, "{label} refused: a limit was exceeded"),
    ERR.INTEGRITY_FAILURE: (TokenError, "{label} reported an integrity failure"),
    ERR.UNSUPPORTED_OPTION: (TokenUnsupported, "{label} does not support a required option"),
    ERR.UNSUPPORTED_ALGORITHM: (TokenUnsupported, "{label} does not support ES256 credentials"),
    ERR.KEY_STORE_FULL: (TokenUnsupported, "{label} has no room for another credential"),
    ERR.CREDENTIAL_EXCLUDED: (TokenUnsupported, "{label} already holds this credential"),
    ERR.NOT_ALLOWED: (TokenError, "{label} refused the operation"),
    ERR.CHANNEL_BUSY: (TokenError, "{label} is busy with another application; try again"),
    ERR.TIMEOUT: (TouchTimeout, "{label} timed out"),
}


def describe(code: int, label: str) -> TokenError:
    cls, message = CTAP_ERRORS.get(code, (TokenError, "{label} failed: CTAP error " + f"0x{code:02X}"))
    return cls(message.format(label=label))


@contextlib.contextmanager
def map_token_errors(label: str) -> Iterator[None]:
    """Re-raise CTAP and transport errors as kms-agent ``TokenError`` subclasses."""
    try:
        yield
    except CtapError as exc:
        raise describe(int(exc.code), label) from exc
    except (OSError, EOFError) as exc:
        raise TokenRemoved(f"{label} was removed or stopped answering during the operation") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("smartcard"):
            # pyscard: CardConnectionException / NoCardException when a card leaves the reader.
            raise TokenRemoved(f"{label} left the reader or stopped answering during the operation") from exc
        # python-fido2 raises bare Exception/ValueError for malformed frames from a failing device.
        if type(exc).__name__ == "ConnectionFailure":
            raise TokenRemoved(f"{label} stopped answering correctly (unplugged or reset?)") from exc
        if exc.__class__.__module__.startswith("fido2"):
            raise TokenError(f"{label} failed: {exc.__class__.__name__}") from exc
        raise
