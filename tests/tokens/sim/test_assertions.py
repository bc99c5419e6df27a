"""makeCredential / getAssertion / hmac-secret / credProtect, driven by python-fido2's real Ctap2."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from fido2.attestation import InvalidSignature, PackedAttestation, verify_x509_chain
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.extensions import HmacSecretExtension
from fido2.ctap2.pin import PinProtocolV1, PinProtocolV2
from fido2.webauthn import (
    AuthenticatorData,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialRequestOptions,
    PublicKeyCredentialType,
)

from agent.tokens.sim.attestation import sim_attestation_ca_certificate
from agent.tokens.sim.state import SIM_AAGUID

from .conftest import PERM, RP, CountingTouch, OpenDevice, hmac_assertion, make_credential, pin_token, preflight

SALT = bytes(range(32))
FLAG = AuthenticatorData.FLAG
ERR = CtapError.ERR


def test_get_info_parsed_by_ctap2(ctap: Ctap2) -> None:
    info = ctap.info
    assert info.versions == ["FIDO_2_0", "FIDO_2_1"]
    assert {"hmac-secret", "credProtect"} <= set(info.extensions)
    assert info.pin_uv_protocols == [2, 1]
    assert info.options["clientPin"] is True and info.options["pinUvAuthToken"] is True
    assert info.options["rk"] is False
    assert bytes(info.aaguid) == SIM_AAGUID
    assert info.max_cred_id_length >= 100


def test_make_credential_attestation_verifies(home: Path, ctap: Ctap2) -> None:
    cred = make_credential(ctap, cred_protect=2)
    att = cred.attestation
    assert att.fmt == "packed"
    auth_data = att.auth_data
    assert auth_data.flags & (FLAG.UP | FLAG.UV | FLAG.AT | FLAG.ED) == FLAG.UP | FLAG.UV | FLAG.AT | FLAG.ED
    assert auth_data.rp_id_hash == hashlib.sha256(RP.encode()).digest()
    assert auth_data.extensions == {"hmac-secret": True, "credProtect": 2}
    assert auth_data.credential_data is not None and bytes(auth_data.credential_data.aaguid) == SIM_AAGUID
    result = PackedAttestation().verify(att.att_stmt, auth_data, cred.client_data_hash)
    ca = sim_attestation_ca_certificate(home).public_bytes(serialization.Encoding.DER)
    verify_x509_chain([*result.trust_path, ca])
    # A tampered client data hash must not verify.
    with pytest.raises(InvalidSignature):
        PackedAttestation().verify(att.att_stmt, auth_data, bytes(32))


def test_assertion_signature_verifies_and_sign_count_rises(ctap: Ctap2) -> None:
    cred = make_credential(ctap)
    counters = [cred.attestation.auth_data.counter]
    for cdh in (b"\x01" * 32, b"\x02" * 32):
        _, response = hmac_assertion(ctap, cred.cred_id, SALT, uv=True, cdh=cdh)
        response.verify(cdh, cred.public_key)
        assert response.auth_data.flags & (FLAG.UP | FLAG.UV | FLAG.ED) == FLAG.UP | FLAG.UV | FLAG.ED
        counters.append(response.auth_data.counter)
        with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidSignature
            response.verify(bytes(32), cred.public_key)
    counters.append(preflight(ctap, cred.cred_id).auth_data.counter)
    assert counters == sorted(counters) and len(set(counters)) == len(counters)


@pytest.mark.parametrize("protocol", [PinProtocolV1, PinProtocolV2])
def test_hmac_secret_uv_differs_from_non_uv_and_is_stable(ctap: Ctap2, protocol: type[PinProtocolV1]) -> None:
    cred = make_credential(ctap)
    with_uv = hmac_assertion(ctap, cred.cred_id, SALT, uv=True, protocol=protocol())[0]
    without_uv, response = hmac_assertion(ctap, cred.cred_id, SALT, uv=False, protocol=protocol())
    assert len(with_uv) == len(without_uv) == 32
    assert with_uv != without_uv
    assert not response.auth_data.flags & FLAG.UV and response.auth_data.flags & FLAG.UP
    assert hmac_assertion(ctap, cred.cred_id, SALT, uv=True, protocol=protocol())[0] == with_uv
    assert hmac_assertion(ctap, cred.cred_id, SALT, uv=False, protocol=protocol())[0] == without_uv
    assert hmac_assertion(ctap, cred.cred_id, bytes(32), uv=True, protocol=protocol())[0] != with_uv


def test_hmac_secret_is_the_same_under_both_pin_protocols(ctap: Ctap2) -> None:
    cred = make_credential(ctap)
    v1 = hmac_assertion(ctap, cred.cred_id, SALT, uv=True, protocol=PinProtocolV1())[0]
    v2 = hmac_assertion(ctap, cred.cred_id, SALT, uv=True, protocol=PinProtocolV2())[0]
    assert v1 == v2


_CHILD = """
import sys
from pathlib import Path
from fido2.ctap2 import Ctap2
from agent.tokens.sim import open_sim_hid_device
from tests.tokens.sim.conftest import hmac_assertion
dev = open_sim_hid_device(Path(sys.argv[1]), "alice")
print(hmac_assertion(Ctap2(dev), bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]), uv=True)[0].hex())
"""


def test_hmac_secret_survives_a_process_restart(home: Path, ctap: Ctap2) -> None:
    cred = make_credential(ctap)
    here = hmac_assertion(ctap, cred.cred_id, SALT, uv=True)[0]
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "KMS_AGENT_SIM_TOUCH": "auto"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(home), cred.cred_id.hex(), SALT.hex()],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert bytes.fromhex(out.stdout.strip()) == here


def test_preflight_finds_credential_without_touch(open_device: OpenDevice) -> None:
    enrol = Ctap2(open_device())
    cred = make_credential(enrol)
    touch = CountingTouch()
    ctap = Ctap2(open_device(touch=touch))
    response = preflight(ctap, cred.cred_id)
    assert touch.calls == 0
    assert not response.auth_data.flags & (FLAG.UP | FLAG.UV | FLAG.ED)
    assert response.credential["id"] == cred.cred_id
    response.verify(bytes(32), cred.public_key)
    # Even with hmac-secret asked for, up=false gives no output (and still no touch).
    descriptor = PublicKeyCredentialDescriptor(type=PublicKeyCredentialType.PUBLIC_KEY, id=cred.cred_id)
    options = PublicKeyCredentialRequestOptions(
        challenge=bytes(32), rp_id=RP, allow_credentials=[descriptor], extensions={"hmacGetSecret": {"salt1": SALT}}
    )
    processor = HmacSecretExtension(allow_hmac_secret=True).get_assertion(ctap, options, PinProtocolV2())
    assert processor is not None
    response = ctap.get_assertion(
        RP,
        bytes(32),
        [{"type": "public-key", "id": cred.cred_id}],
        options={"up": False},
        extensions=processor.prepare_inputs(descriptor, None),
    )
    assert response.auth_data.extensions is None and not response.auth_data.flags & FLAG.ED
    assert touch.calls == 0


def test_preflight_rejects_foreign_credentials(open_device: OpenDevice) -> None:
    alice = Ctap2(open_device("alice"))
    bob = Ctap2(open_device("bob"))
    bobs = make_credential(bob)
    for foreign in (bobs.cred_id, b"\0", os.urandom(len(bobs.cred_id))):
        with pytest.raises(CtapError) as info:
            preflight(alice, foreign)
        assert info.value.code == ERR.NO_CREDENTIALS
    # Right token, wrong RP: the credential id is bound to its RP ID.
    with pytest.raises(CtapError) as info:
        preflight(bob, bobs.cred_id, rp_id="evil.example")
    assert info.value.code == ERR.NO_CREDENTIALS


def test_up_true_without_matching_credential_still_asks_for_touch(open_device: OpenDevice) -> None:
    touch = CountingTouch()
    ctap = Ctap2(open_device(touch=touch))
    with pytest.raises(CtapError) as info:
        ctap.get_assertion(RP, bytes(32), [{"type": "public-key", "id": b"\0" * 16}])
    assert info.value.code == ERR.NO_CREDENTIALS
    assert touch.calls == 1


def test_cred_protect_3_hides_credential_without_uv(ctap: Ctap2) -> None:
    cred = make_credential(ctap, cred_protect=3)
    assert cred.attestation.auth_data.extensions == {"hmac-secret": True, "credProtect": 3}
    with pytest.raises(CtapError) as info:
        preflight(ctap, cred.cred_id)
    assert info.value.code == ERR.NO_CREDENTIALS
    with pytest.raises(CtapError) as info:
        hmac_assertion(ctap, cred.cred_id, SALT, uv=False)
    assert info.value.code == ERR.NO_CREDENTIALS
    # With a PIN token the pre-flight (pinUvAuthParam over 32 zero bytes, as Fido2Client sends) finds it.
    client_pin, token = pin_token(ctap, PERM.GET_ASSERTION)
    response = ctap.get_assertion(
        RP,
        bytes(32),
        [{"type": "public-key", "id": cred.cred_id}],
        options={"up": False},
        pin_uv_param=client_pin.protocol.authenticate(token, bytes(32)),
        pin_uv_protocol=client_pin.protocol.VERSION,
    )
    assert response.auth_data.flags & FLAG.UV and not response.auth_data.flags & FLAG.UP
    assert len(hmac_assertion(ctap, cred.cred_id, SALT, uv=True)[0]) == 32


def test_cred_protect_2_allows_non_uv_assertion_by_credential_id(ctap: Ctap2) -> None:
    cred = make_credential(ctap, cred_protect=2)
    preflight(ctap, cred.cred_id)
    assert len(hmac_assertion(ctap, cred.cred_id, SALT, uv=False)[0]) == 32


def test_make_credential_needs_the_pin_once_set(ctap: Ctap2) -> None:
    with pytest.raises(CtapError) as info:
        ctap.make_credential(bytes(32), {"id": RP}, {"id": b"u"}, [{"type": "public-key", "alg": -7}])
    assert info.value.code == ERR.PUAT_REQUIRED


def test_make_credential_rejects_unsupported_algorithm_and_rk(ctap: Ctap2) -> None:
    client_pin, token = pin_token(ctap, PERM.MAKE_CREDENTIAL)
    auth = client_pin.protocol.authenticate(token, bytes(32))
    with pytest.raises(CtapError) as info:
        ctap.make_credential(
            bytes(32),
            {"id": RP},
            {"id": b"u"},
            [{"type": "public-key", "alg": -257}],
            pin_uv_param=auth,
            pin_uv_protocol=client_pin.protocol.VERSION,
        )
    assert info.value.code == ERR.UNSUPPORTED_ALGORITHM
    with pytest.raises(CtapError) as info:
        ctap.make_credential(
            bytes(32),
            {"id": RP},
            {"id": b"u"},
            [{"type": "public-key", "alg": -7}],
            options={"rk": True},
            pin_uv_param=auth,
            pin_uv_protocol=client_pin.protocol.VERSION,
        )
    assert info.value.code == ERR.UNSUPPORTED_OPTION


def test_pin_token_is_bound_to_its_rp_and_permission(ctap: Ctap2) -> None:
    cred = make_credential(ctap)
    cdh = bytes(32)
    client_pin, token = pin_token(ctap, PERM.GET_ASSERTION, "other.example")
    auth = client_pin.protocol.authenticate(token, cdh)
    with pytest.raises(CtapError) as info:
        ctap.get_assertion(
            RP,
            cdh,
            [{"type": "public-key", "id": cred.cred_id}],
            options={"up": False},
            pin_uv_param=auth,
            pin_uv_protocol=client_pin.protocol.VERSION,
        )
    assert info.value.code == ERR.PIN_AUTH_INVALID
    client_pin, token = pin_token(ctap, PERM.GET_ASSERTION)
    with pytest.raises(CtapError) as info:  # a getAssertion token cannot make credentials
        ctap.make_credential(
            cdh,
            {"id": RP},
            {"id": b"u"},
            [{"type": "public-key", "alg": -7}],
            pin_uv_param=client_pin.protocol.authenticate(token, cdh),
            pin_uv_protocol=client_pin.protocol.VERSION,
        )
    assert info.value.code == ERR.PIN_AUTH_INVALID
    with pytest.raises(CtapError) as info:  # a MAC over other data
        ctap.get_assertion(
            RP,
            cdh,
            [{"type": "public-key", "id": cred.cred_id}],
            options={"up": False},
            pin_uv_param=client_pin.protocol.authenticate(token, b"\1" * 32),
            pin_uv_protocol=client_pin.protocol.VERSION,
        )
    assert info.value.code == ERR.PIN_AUTH_INVALID


def test_pin_token_is_spent_by_a_touch_as_ctap_2_1_requires(ctap: Ctap2) -> None:
    """CTAP 2.1 §6.1.2 step 14 / §6.2.2 step 9: after a user-present mc/ga the token's permissions are gone."""
    cdh = bytes(32)
    client_pin, token = pin_token(ctap, PERM.MAKE_CREDENTIAL | PERM.GET_ASSERTION)
    proto = client_pin.protocol
    att = ctap.make_credential(
        cdh,
        {"id": RP},
        {"id": b"u"},
        [{"type": "public-key", "alg": -7}],
        extensions={"hmac-secret": True},
        pin_uv_param=proto.authenticate(token, cdh),
        pin_uv_protocol=proto.VERSION,
    )
    assert att.auth_data.credential_data is not None
    cred_id = bytes(att.auth_data.credential_data.credential_id)
    with pytest.raises(CtapError) as info:
        ctap.get_assertion(
            RP,
            cdh,
            [{"type": "public-key", "id": cred_id}],
            pin_uv_param=proto.authenticate(token, cdh),
            pin_uv_protocol=proto.VERSION,
        )
    assert info.value.code == ERR.PIN_AUTH_INVALID
    # An up=false pre-flight does not spend it; the touch that follows does.
    client_pin, token = pin_token(ctap, PERM.GET_ASSERTION)
    for _ in range(2):
        ctap.get_assertion(
            RP,
            cdh,
            [{"type": "public-key", "id": cred_id}],
            options={"up": False},
            pin_uv_param=proto.authenticate(token, cdh),
            pin_uv_protocol=proto.VERSION,
        )
    ctap.get_assertion(
        RP,
        cdh,
        [{"type": "public-key", "id": cred_id}],
        pin_uv_param=proto.authenticate(token, cdh),
        pin_uv_protocol=proto.VERSION,
    )
    with pytest.raises(CtapError) as info:
        ctap.get_assertion(
            RP,
            cdh,
            [{"type": "public-key", "id": cred_id}],
            pin_uv_param=proto.authenticate(token, cdh),
            pin_uv_protocol=proto.VERSION,
        )
    assert info.value.code == ERR.PIN_AUTH_INVALID


def test_exclude_list_reports_existing_credential(ctap: Ctap2) -> None:
    cred = make_credential(ctap)
    with pytest.raises(CtapError) as info:
        make_credential(ctap, exclude_list=[{"type": "public-key", "id": cred.cred_id}])
    assert info.value.code == ERR.CREDENTIAL_EXCLUDED


def test_reset_forgets_credentials_and_pin(home: Path, open_device: OpenDevice) -> None:
    from agent.tokens.sim import sim_pin

    ctap = Ctap2(open_device())
    cred = make_credential(ctap)
    ctap.reset()
    assert ctap.get_info().options["clientPin"] is False
    with pytest.raises(CtapError) as info:
        preflight(ctap, cred.cred_id)
    assert info.value.code == ERR.NO_CREDENTIALS
    from agent.errors import PinRequired

    with pytest.raises(PinRequired):
        sim_pin(home, "alice")
