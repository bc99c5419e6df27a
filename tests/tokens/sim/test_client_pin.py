"""clientPIN through python-fido2's ClientPin: both protocols, retries, lock-outs, set/change."""

from __future__ import annotations

from pathlib import Path

import pytest
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2

from agent.tokens.sim import sim_pin

from .conftest import PERM, PIN, RP, OpenDevice

ERR = CtapError.ERR


def _code(exc: pytest.ExceptionInfo[CtapError]) -> int:
    return int(exc.value.code)


@pytest.mark.parametrize("protocol", [PinProtocolV1, PinProtocolV2])
@pytest.mark.parametrize("permissions", [None, PERM.GET_ASSERTION])
def test_both_protocols_give_working_tokens(
    ctap: Ctap2, protocol: type[PinProtocolV1], permissions: ClientPin.PERMISSION | None
) -> None:
    """permissions=None takes the legacy getPinToken (0x05); otherwise subcommand 0x09."""
    client_pin = ClientPin(ctap, protocol())
    token = client_pin.get_pin_token(PIN, permissions, RP if permissions else None)
    assert len(token) == 32
    cdh = bytes(32)
    # The token authenticates a real command: NO_CREDENTIALS, not PIN_AUTH_INVALID.
    with pytest.raises(CtapError) as info:
        ctap.get_assertion(
            RP,
            cdh,
            [{"type": "public-key", "id": b"\0" * 8}],
            options={"up": False},
            pin_uv_param=client_pin.protocol.authenticate(token, cdh),
            pin_uv_protocol=client_pin.protocol.VERSION,
        )
    assert _code(info) == ERR.NO_CREDENTIALS
    # A made-up token does not.
    with pytest.raises(CtapError) as info:
        ctap.get_assertion(
            RP,
            cdh,
            [{"type": "public-key", "id": b"\0" * 8}],
            options={"up": False},
            pin_uv_param=client_pin.protocol.authenticate(b"\1" * 32, cdh),
            pin_uv_protocol=client_pin.protocol.VERSION,
        )
    assert _code(info) == ERR.PIN_AUTH_INVALID


def test_wrong_pin_costs_a_retry_and_right_pin_restores_them(ctap: Ctap2) -> None:
    client_pin = ClientPin(ctap)
    assert client_pin.get_pin_retries() == (8, False)
    with pytest.raises(CtapError) as info:
        client_pin.get_pin_token("000000", PERM.GET_ASSERTION, RP)
    assert _code(info) == ERR.PIN_INVALID
    assert client_pin.get_pin_retries()[0] == 7
    client_pin.get_pin_token(PIN, PERM.GET_ASSERTION, RP)
    assert client_pin.get_pin_retries()[0] == 8


def test_three_wrong_pins_need_a_power_cycle_and_eight_block(open_device: OpenDevice) -> None:
    expected = [ERR.PIN_INVALID, ERR.PIN_INVALID, ERR.PIN_AUTH_BLOCKED]
    seen: list[int] = []
    for power_cycle in range(3):
        client_pin = ClientPin(Ctap2(open_device()))  # each open is a fresh power-up
        for _ in range(3):
            try:
                client_pin.get_pin_token("999999", PERM.GET_ASSERTION, RP)
            except CtapError as exc:
                seen.append(int(exc.code))
                if exc.code in (ERR.PIN_AUTH_BLOCKED, ERR.PIN_BLOCKED):
                    break
        if power_cycle < 2:
            assert client_pin.get_pin_retries() == (8 - 3 * (power_cycle + 1), True)
            with pytest.raises(CtapError) as info:  # even the right PIN, until the power cycle
                client_pin.get_pin_token(PIN, PERM.GET_ASSERTION, RP)
            assert _code(info) == ERR.PIN_AUTH_BLOCKED
    assert seen == expected * 2 + [ERR.PIN_INVALID, ERR.PIN_BLOCKED]
    client_pin = ClientPin(Ctap2(open_device()))
    assert client_pin.get_pin_retries()[0] == 0
    with pytest.raises(CtapError) as info:
        client_pin.get_pin_token(PIN, PERM.GET_ASSERTION, RP)
    assert _code(info) == ERR.PIN_BLOCKED


def test_change_pin_and_sim_pin_follows(home: Path, ctap: Ctap2) -> None:
    client_pin = ClientPin(ctap)
    with pytest.raises(CtapError) as info:
        client_pin.change_pin("000000", "654321")
    assert _code(info) == ERR.PIN_INVALID
    client_pin.change_pin(PIN, "654321")
    assert sim_pin(home, "alice") == "654321"
    with pytest.raises(CtapError):
        client_pin.get_pin_token(PIN, PERM.GET_ASSERTION, RP)
    assert len(client_pin.get_pin_token("654321", PERM.GET_ASSERTION, RP)) == 32


def test_set_pin_only_when_none_is_set(home: Path, ctap: Ctap2) -> None:
    client_pin = ClientPin(ctap)
    with pytest.raises(CtapError) as info:
        client_pin.set_pin("111111")
    assert _code(info) == ERR.PIN_AUTH_INVALID
    ctap.reset()
    ctap = Ctap2(ctap.device)
    assert ctap.info.options["clientPin"] is False
    with pytest.raises(CtapError) as info:
        ClientPin(ctap).get_pin_token(PIN, PERM.GET_ASSERTION, RP)
    assert _code(info) == ERR.PIN_NOT_SET
    ClientPin(ctap).set_pin("24680")
    assert sim_pin(home, "alice") == "24680"
    assert ctap.get_info().options["clientPin"] is True


def test_unsupported_permissions_are_refused(ctap: Ctap2) -> None:
    with pytest.raises(CtapError) as info:
        ClientPin(ctap).get_pin_token(PIN, PERM.CREDENTIAL_MGMT)
    assert _code(info) == ERR.UNAUTHORIZED_PERMISSION


def test_unknown_subcommand_and_protocol(ctap: Ctap2) -> None:
    with pytest.raises(CtapError) as info:
        ctap.client_pin(2, 0x20)
    assert _code(info) == ERR.INVALID_SUBCOMMAND
    with pytest.raises(CtapError) as info:
        ctap.client_pin(3, ClientPin.CMD.GET_KEY_AGREEMENT)
    assert _code(info) == ERR.INVALID_PARAMETER
