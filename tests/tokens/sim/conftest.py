"""Fixtures: a simulated token opened through python-fido2's real CtapHidDevice, plus CTAP helpers."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fido2.cose import CoseKey
from fido2.ctap2 import AssertionResponse, AttestationResponse, Ctap2
from fido2.ctap2.extensions import HmacSecretExtension
from fido2.ctap2.pin import ClientPin, PinProtocol
from fido2.hid import CtapHidDevice
from fido2.webauthn import PublicKeyCredentialDescriptor, PublicKeyCredentialRequestOptions, PublicKeyCredentialType

from agent.tokens.sim import FixedTouch, TouchProvider, TouchResult, create_sim_token, open_sim_hid_device

RP = "kms-agent.local"
PIN = "123456"
PERM = ClientPin.PERMISSION


class CountingTouch:
    """Grants every touch and counts them (a pre-flight must not ask)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, token_name: str, stop: threading.Event) -> TouchResult:
        self.calls += 1
        return TouchResult.GRANTED


@dataclass
class Credential:
    cred_id: bytes
    public_key: CoseKey
    attestation: AttestationResponse
    client_data_hash: bytes


OpenDevice = Callable[..., CtapHidDevice]


@pytest.fixture
def open_device(home: Path) -> Iterator[OpenDevice]:
    """Open (and at teardown close) simulated tokens under ``home``; creates them on first use."""
    opened: list[CtapHidDevice] = []

    def _open(name: str = "alice", touch: TouchProvider | None = None) -> CtapHidDevice:
        create_sim_token(home, name)
        dev = open_sim_hid_device(home, name, touch=touch if touch is not None else FixedTouch(TouchResult.GRANTED))
        opened.append(dev)
        return dev

    yield _open
    for dev in opened:
        dev.close()


@pytest.fixture
def ctap(open_device: OpenDevice) -> Ctap2:
    return Ctap2(open_device())


def pin_token(
    ctap: Ctap2,
    permissions: ClientPin.PERMISSION,
    rp_id: str | None = RP,
    *,
    pin: str = PIN,
    protocol: PinProtocol | None = None,
) -> tuple[ClientPin, bytes]:
    client_pin = ClientPin(ctap, protocol)
    return client_pin, client_pin.get_pin_token(pin, permissions, rp_id)


def make_credential(
    ctap: Ctap2, *, cred_protect: int | None = 2, rp_id: str = RP, hmac_secret: bool = True, **kwargs: Any
) -> Credential:
    client_pin, token = pin_token(ctap, PERM.MAKE_CREDENTIAL, rp_id)
    cdh = hashlib.sha256(b"enrol " + rp_id.encode()).digest()
    extensions: dict[str, Any] = {}
    if hmac_secret:
        extensions["hmac-secret"] = True
    if cred_protect is not None:
        extensions["credProtect"] = cred_protect
    att = ctap.make_credential(
        cdh,
        {"id": rp_id, "name": "kms-agent"},
        {"id": b"user-1", "name": "alice"},
        [{"type": "public-key", "alg": -7}],
        extensions=extensions or None,
        pin_uv_param=client_pin.protocol.authenticate(token, cdh),
        pin_uv_protocol=client_pin.protocol.VERSION,
        **kwargs,
    )
    cred = att.auth_data.credential_data
    assert cred is not None
    return Credential(bytes(cred.credential_id), cred.public_key, att, cdh)


def hmac_assertion(
    ctap: Ctap2,
    cred_id: bytes,
    salt: bytes,
    *,
    uv: bool,
    rp_id: str = RP,
    cdh: bytes = b"\x11" * 32,
    protocol: PinProtocol | None = None,
    **kwargs: Any,
) -> tuple[bytes, AssertionResponse]:
    """One getAssertion with hmac-secret, with (uv=True) or without a PIN token; returns output1."""
    client_pin = ClientPin(ctap, protocol)
    proto = client_pin.protocol
    token = client_pin.get_pin_token(PIN, PERM.GET_ASSERTION, rp_id) if uv else None
    descriptor = PublicKeyCredentialDescriptor(type=PublicKeyCredentialType.PUBLIC_KEY, id=cred_id)
    options = PublicKeyCredentialRequestOptions(
        challenge=cdh, rp_id=rp_id, allow_credentials=[descriptor], extensions={"hmacGetSecret": {"salt1": salt}}
    )
    processor = HmacSecretExtension(allow_hmac_secret=True).get_assertion(ctap, options, proto)
    assert processor is not None
    response = ctap.get_assertion(
        rp_id,
        cdh,
        [{"type": "public-key", "id": cred_id}],
        extensions=processor.prepare_inputs(descriptor, token),
        pin_uv_param=proto.authenticate(token, cdh) if token else None,
        pin_uv_protocol=proto.VERSION if token else None,
        **kwargs,
    )
    outputs: Mapping[str, Any] = processor.prepare_outputs(response, token) or {}
    return bytes(outputs["hmacGetSecret"].output1), response


def preflight(ctap: Ctap2, cred_id: bytes, rp_id: str = RP, **kwargs: Any) -> AssertionResponse:
    return ctap.get_assertion(
        rp_id, bytes(32), [{"type": "public-key", "id": cred_id}], options={"up": False}, **kwargs
    )
