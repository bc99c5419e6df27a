"""Change a token's PIN: python-fido2's ``ClientPin.change_pin`` (FIDO2) or yubikit's ``PivSession.change_pin``.

The PINs arrive in bytearrays the caller wipes; the libraries take ``str``, the one unavoidable
immutable copy (as for every PIN kms-agent passes on). Nothing here logs or stores a PIN. The new
PIN is checked against the token kind's rules *before* the token is asked, so a PIN that cannot be
right costs no retry.
"""

from __future__ import annotations

import logging

from agent.errors import PinInvalid, UsageError
from agent.tokens.base import Token

logger = logging.getLogger(__name__)

#: CTAP 2.1 §6.5.1: at least 4 Unicode code points (or the token's minPINLength), at most 63 bytes.
FIDO2_PIN_MAX = 63
#: PIV (SP 800-73-4 §2.4.3): 6 to 8 bytes.
PIV_PIN_LEN = (6, 8)


def _text(pin: bytearray, what: str) -> str:
    try:
        return pin.decode()
    except UnicodeDecodeError:
        raise UsageError(f"the {what} PIN must be UTF-8 text") from None


def check_new_pin(token: Token, new: bytearray) -> None:
    """:raises UsageError: the new PIN breaks the token kind's length rules (the token is not asked)."""
    text = _text(new, "new")
    if token.kind == "piv":
        low, high = PIV_PIN_LEN
        if not low <= len(new) <= high:
            raise UsageError(f"a PIV PIN is {low} to {high} bytes long; the PIN of {token.label} was not changed")
        return
    info = getattr(token, "info", None)
    minimum = max(4, int(getattr(info, "min_pin_length", 4) or 4))
    if len(text) < minimum or len(new) > FIDO2_PIN_MAX:
        raise UsageError(
            f"a FIDO2 PIN of {token.label} is at least {minimum} characters and at most {FIDO2_PIN_MAX} bytes; "
            "the PIN was not changed"
        )


def change_pin(token: Token, old: bytearray, new: bytearray) -> None:
    """Change ``token``'s PIN from ``old`` to ``new`` (the caller wipes both).

    :raises PinInvalid: the old PIN is wrong (``attempts_remaining`` says how many tries are left).
    :raises PinBlocked: the PIN is blocked. :raises UsageError: the new PIN breaks the length rules.
    """
    check_new_pin(token, new)
    logger.info("Changing the PIN of %s", token.label)
    if token.kind == "piv":
        _change_piv(token, old, new)
    else:
        _change_fido2(token, old, new)


def _change_fido2(token: Token, old: bytearray, new: bytearray) -> None:
    from fido2.ctap2.pin import ClientPin

    from agent.tokens.fido2_errors import map_token_errors
    from agent.tokens.fido2_token import Fido2Token

    if not isinstance(token, Fido2Token):
        raise UsageError(f"{token.label} is not a FIDO2 token")
    if not token.info.options.get("clientPin"):
        raise UsageError(f"{token.label} has no PIN set yet", hint="set one, e.g. `ykman fido access change-pin`")
    client_pin = ClientPin(token.ctap)
    try:
        with map_token_errors(token.label):
            client_pin.change_pin(_text(old, "current"), _text(new, "new"))
    except PinInvalid:
        with map_token_errors(token.label):
            left = client_pin.get_pin_retries()[0]
        raise PinInvalid(
            f"wrong PIN for {token.label}: {left} {'try' if left == 1 else 'tries'} left; the PIN was not changed",
            attempts_remaining=left,
            hint="the token blocks its PIN at 0; a blocked FIDO2 PIN needs a reset",
        ) from None


def _change_piv(token: Token, old: bytearray, new: bytearray) -> None:
    from agent.tokens.piv_token import PivToken, map_piv_errors

    if not isinstance(token, PivToken):
        raise UsageError(f"{token.label} is not a PIV token")
    # _session checks the card's serial, so the PIN of the wrong card is never tried.
    with token._session() as session, map_piv_errors(token.label):
        session.change_pin(_text(old, "current"), _text(new, "new"))
