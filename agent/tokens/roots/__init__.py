"""Yubico's published attestation roots, bundled as package data and pinned by fingerprint.

Sources: https://developers.yubico.com/PKI/yubico-ca-certs.txt (the U2F and FIDO roots) and
https://developers.yubico.com/PIV/Introduction/piv-attestation-ca.pem (the 2018 re-issue of the PIV
root: same key and serial as the 2016 certificate, ``pathlen:1``). The files are never fetched at
run time; a root whose SHA-256 differs from :data:`FINGERPRINTS` is refused at load, so a swapped
file cannot quietly add an issuer.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import hashes

#: root name (recorded as a slot's ``attestation_root``) -> (file, SHA-256 of the DER certificate)
FINGERPRINTS: dict[str, tuple[str, str]] = {
    "yubico-u2f-457200631": (
        "yubico-u2f-root-ca-457200631.pem",
        "0fa1386f80eb8713263ae5c1d84deb455bdf08aea50ab05503cefee82b092d42",
    ),
    "yubico-fido-450203556": (
        "yubico-fido-root-ca-450203556.pem",
        "35f1a54b353bfb711e6d42adbeb76c0e9dead095018e6a94783ba2192fd6faad",
    ),
    "yubico-piv-263751": (
        "yubico-piv-root-ca-263751.pem",
        "63ece914e54dd87915f34033c85af4c0696ba1512f8add66ced738331207b546",
    ),
}
#: Roots a FIDO2 authenticator's packed attestation may chain to.
FIDO_ROOTS = ("yubico-fido-450203556", "yubico-u2f-457200631")
#: Roots a PIV card's F9 attestation certificate may chain to.
PIV_ROOTS = ("yubico-piv-263751",)


@cache
def load_root(name: str) -> x509.Certificate:
    """The bundled root ``name``, checked against its pinned fingerprint.

    :raises KeyError: no such root.
    :raises ValueError: the bundled file does not match its fingerprint (a tampered install).
    """
    filename, fingerprint = FINGERPRINTS[name]
    pem = resources.files(__name__).joinpath(filename).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    if cert.fingerprint(hashes.SHA256()).hex() != fingerprint:
        raise ValueError(f"the bundled attestation root {filename} does not match its pinned fingerprint")
    return cert


__all__ = ["FIDO_ROOTS", "FINGERPRINTS", "PIV_ROOTS", "load_root"]
