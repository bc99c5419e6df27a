"""Control flow of the simulated authenticator: a CTAP2 status to answer, or a pulled token."""

from __future__ import annotations

from fido2.ctap import CtapError

ERR = CtapError.ERR


class CtapStatus(Exception):
    """End the current CTAP2 command with this status byte (never escapes the simulator)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"0x{code:02X}")
        self.code = code


class TokenPulled(Exception):
    """The simulated token left the USB port (touch mode ``remove`` or ``set_plugged(False)``)."""
