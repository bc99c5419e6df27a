"""Packed attestation for simulated FIDO2 tokens, under a per-home test CA (INSECURE).

``<home>/sim/fido2-ca.json`` holds a self-generated CA key in clear: anyone who can read it can
mint "attested" simulated tokens. Its only job is to make simulated attestation chains look and
verify like real ones (WebAuthn §8.2.1 certificate rules: C, O, OU = "Authenticator Attestation",
CN, CA=false, the AAGUID extension), while never chaining to a real vendor root.
"""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import StateError
from agent.tokens.sim.storage import locked, read_json, sim_dir, write_json

CA_FILE = "fido2-ca.json"
CA_COMMON_NAME = "kms-agent simulated FIDO2 attestation CA (INSECURE test key)"
#: FIDO's id-fido-gen-ce-aaguid: the AAGUID as a DER OCTET STRING, not critical.
OID_FIDO_AAGUID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
_VALID_FROM = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_VALID_TO = datetime.datetime(2099, 12, 31, tzinfo=datetime.UTC)


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "ZZ"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kms-agent simulator (INSECURE)"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(der: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC key")
    return key


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(CA_COMMON_NAME, "Authenticator Attestation CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_VALID_FROM)
        .not_valid_after(_VALID_TO)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def sim_attestation_ca(home: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The test CA of ``home`` (created on first use), as (private key, certificate).

    :raises StateError: the CA file exists but cannot be read.
    """
    path = sim_dir(home) / CA_FILE
    with locked(path.with_name(path.name + ".lock")):
        try:
            data = read_json(path)
            if data is None:
                key, cert = _new_ca()
                write_json(
                    path,
                    {
                        "schema": 1,
                        "key": base64.b64encode(_pkcs8(key)).decode(),
                        "cert": base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(),
                    },
                )
                return key, cert
            return (
                _load_key(base64.b64decode(data["key"])),
                x509.load_der_x509_certificate(base64.b64decode(data["cert"])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"the simulated FIDO2 attestation CA {path} is corrupt: {exc}") from None


def sim_attestation_ca_certificate(home: Path) -> x509.Certificate:
    """The test CA certificate only: the root to hand an attestation verifier for simulated tokens."""
    return sim_attestation_ca(home)[1]


def new_attestation_identity(home: Path, token_name: str, aaguid: bytes) -> tuple[bytes, bytes]:
    """A fresh attestation key and its certificate under the test CA, as (PKCS#8 DER, cert DER)."""
    ca_key, ca_cert = sim_attestation_ca(home)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"kms-agent simulated authenticator sim:{token_name}", "Authenticator Attestation"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_VALID_FROM)
        .not_valid_after(_VALID_TO)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.UnrecognizedExtension(OID_FIDO_AAGUID, b"\x04\x10" + aaguid), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pkcs8(key), cert.public_bytes(serialization.Encoding.DER)


def load_attestation_key(der: bytes) -> ec.EllipticCurvePrivateKey:
    return _load_key(der)
