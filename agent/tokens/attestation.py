"""Attestation chains to pinned roots: is this key on a token made by a vendor we trust?

Both backends ask the same question. A FIDO2 authenticator answers makeCredential with a packed
attestation whose ``x5c`` is ``[leaf, intermediates...]``; a YubiKey PIV card answers ATTEST with a
per-key certificate signed by its slot-F9 certificate. Either chain must end at one of a few
*anchors*: Yubico's bundled roots (:mod:`agent.tokens.roots`), or, for simulated tokens only, the
simulator's public test CA. Anything else is "unattested" and needs the operator's explicit
``allow_unattested`` (docs/tokens.md).

We check each link with ``cryptography``'s ``verify_directly_issued_by`` (issuer name and
signature) and each certificate's validity period; we do not apply a TLS path policy (no EKU, no
name constraints), because attestation certificates are not TLS certificates and YubiKey 4 F9
certificates carry no CA basic constraint.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from agent.tokens import roots

#: The ``attestation_root`` recorded for a simulated token (its chain ends at a public test CA).
SIMULATOR = "simulator"
#: The ``attestation_root`` recorded when the operator enrolled a token without attestation.
UNATTESTED = "none"


@dataclass(frozen=True)
class Anchor:
    """A certificate a chain may end at, and the name recorded in the slot when one does."""

    name: str
    cert: x509.Certificate

    @property
    def simulated(self) -> bool:
        return self.name == SIMULATOR


def bundled_anchors(names: Sequence[str]) -> tuple[Anchor, ...]:
    """The bundled Yubico roots called ``names`` (see :data:`agent.tokens.roots.FINGERPRINTS`)."""
    return tuple(Anchor(name, roots.load_root(name)) for name in names)


def fido_anchors() -> tuple[Anchor, ...]:
    return bundled_anchors(roots.FIDO_ROOTS)


def piv_anchors() -> tuple[Anchor, ...]:
    return bundled_anchors(roots.PIV_ROOTS)


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _valid_at(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _same(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.fingerprint(hashes.SHA256()) == b.fingerprint(hashes.SHA256())


def chain_anchor(
    chain: Sequence[x509.Certificate], anchors: Sequence[Anchor], *, now: datetime.datetime | None = None
) -> Anchor | None:
    """The anchor ``chain`` (leaf first, each certificate issued by the next) ends at, or None.

    A chain that already contains its root is accepted when that root *is* an anchor.
    """
    if not chain:
        return None
    at = now or datetime.datetime.now(datetime.UTC)
    if not all(_valid_at(cert, at) for cert in chain):
        return None
    for child, parent in itertools.pairwise(chain):
        if not _issued_by(child, parent):
            return None
    last = chain[-1]
    for anchor in anchors:
        if _same(last, anchor.cert) or (_valid_at(anchor.cert, at) and _issued_by(last, anchor.cert)):
            return anchor
    return None


def describe_issuer(cert: x509.Certificate) -> str:
    """A short, printable name for whoever issued ``cert`` (for "does not chain to ..." messages)."""
    try:
        return cert.issuer.rfc4514_string() or "an unnamed issuer"
    except ValueError:
        return "an unreadable issuer"


__all__ = [
    "SIMULATOR",
    "UNATTESTED",
    "Anchor",
    "bundled_anchors",
    "chain_anchor",
    "describe_issuer",
    "fido_anchors",
    "piv_anchors",
]
