"""The WebAuthn-level Fido2Client works against the simulator: it is a well-behaved authenticator."""

from __future__ import annotations

import os

import pytest
from fido2.client import ClientError, DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap2.extensions import CredProtectExtension, HmacSecretExtension
from fido2.webauthn import AuthenticatorData, PublicKeyCredentialCreationOptions, PublicKeyCredentialRequestOptions

from .conftest import PIN, RP, OpenDevice

ORIGIN = "https://kms-agent.local"


class Operator(UserInteraction):
    def __init__(self, pin: str = PIN) -> None:
        self.pin = pin
        self.prompted = 0

    def prompt_up(self) -> None:
        self.prompted += 1

    def request_pin(self, permissions: object, rp_id: str | None) -> str | None:
        return self.pin


def _client(dev: object, operator: Operator) -> Fido2Client:
    return Fido2Client(
        dev,
        DefaultClientDataCollector(ORIGIN),
        operator,  # type: ignore[arg-type]
        extensions=[HmacSecretExtension(allow_hmac_secret=True), CredProtectExtension()],
    )


def test_make_credential_and_hmac_get_secret(open_device: OpenDevice) -> None:
    operator = Operator()
    client = _client(open_device(), operator)
    registration = client.make_credential(
        PublicKeyCredentialCreationOptions.from_dict(
            {
                "rp": {"id": RP, "name": "kms-agent"},
                "user": {"id": b"user-1", "name": "alice"},
                "challenge": os.urandom(32),
                "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
                "authenticatorSelection": {"userVerification": "required"},
                "extensions": {
                    "hmacCreateSecret": True,
                    "credentialProtectionPolicy": "userVerificationOptionalWithCredentialIDList",
                },
            }
        )
    )
    assert registration.client_extension_results["hmacCreateSecret"] is True
    cred = registration.response.attestation_object.auth_data.credential_data
    assert cred is not None

    def assertion(salt: bytes, uv: str) -> tuple[bytes, AuthenticatorData]:
        result = client.get_assertion(
            PublicKeyCredentialRequestOptions.from_dict(
                {
                    "rpId": RP,
                    "challenge": os.urandom(32),
                    "allowCredentials": [{"type": "public-key", "id": cred.credential_id}],
                    "userVerification": uv,
                    "extensions": {"hmacGetSecret": {"salt1": salt}},
                }
            )
        ).get_response(0)
        return result.client_extension_results.hmac_get_secret.output1, result.response.authenticator_data

    salt = os.urandom(32)
    out, auth_data = assertion(salt, "required")
    assert len(out) == 32 and auth_data.is_user_verified() and auth_data.is_user_present()
    assert assertion(salt, "required")[0] == out
    non_uv, auth_data = assertion(salt, "discouraged")
    assert non_uv != out and not auth_data.is_user_verified()
    assert operator.prompted >= 4  # each touch was announced through on_keepalive -> prompt_up


def test_wrong_pin_surfaces_as_client_error(open_device: OpenDevice) -> None:
    client = _client(open_device(), Operator(pin="000000"))
    with pytest.raises(ClientError):
        client.make_credential(
            PublicKeyCredentialCreationOptions.from_dict(
                {
                    "rp": {"id": RP, "name": "kms-agent"},
                    "user": {"id": b"u", "name": "u"},
                    "challenge": os.urandom(32),
                    "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
                    "authenticatorSelection": {"userVerification": "required"},
                }
            )
        )
