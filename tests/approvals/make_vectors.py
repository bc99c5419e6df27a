"""Regenerate tests/approvals/vectors/approval-v1.json from the reference (run by hand, then review the diff).

    .venv/bin/python -m tests.approvals.make_vectors

Signatures are ECDSA (random nonces), so regenerating changes them; the digests and CBOR must not change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fido2 import cbor
from fido2.cose import ES256

from tests.approvals import reference

OUT = Path(__file__).parent / "vectors" / "approval-v1.json"
OUT_V2 = Path(__file__).parent / "vectors" / "approval-v2.json"

BASE: dict[str, Any] = {
    "vault_id": "000102030405060708090a0b0c0d0e0f",
    "request_id": "101112131415161718191a1b1c1d1e1f",
    "chain": "BTC",
    "network": "testnet",
    "signature_id": "26d3883e-4e17-48b3-a0ee-09a3e484ac83",
    "derivation_index": 0,
    "unsigned_tx_sha256": hashlib.sha256(b"kms-agent test vector: unsigned tx").hexdigest(),
    "outputs": [
        {"address": "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "amount": "150000", "asset": "BTC"},
        {
            "address": "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
            "amount": "849000",
            "asset": "BTC",
        },
    ],
    "fee": "1000",
    "nonce": None,
    "expires_at": 1750003600,
    "policy_generation": 7,
    "action": "withdrawal",
}

PAYLOADS = {
    "btc-withdrawal": BASE,
    "erc20-withdrawal": {
        **BASE,
        "chain": "ETH",
        "network": "sepolia",
        "derivation_index": 3,
        "outputs": [
            {
                "address": "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
                "amount": "123456789012345678901234567890",
                "asset": "0x1c7d4b196cb0c7b01d743fbc6116a902379c7238",
            }
        ],
        "fee": "2100000000000000",
        "nonce": 42,
    },
    "policy-change": {
        **BASE,
        "chain": "",
        "network": "",
        "signature_id": "",
        "outputs": [],
        "fee": "0",
        "unsigned_tx_sha256": hashlib.sha256(b"new policy canonical bytes").hexdigest(),
        "expires_at": 1750604800,
        "action": "policy-change",
    },
}

# Fixed test keys (never use outside tests).
FIDO2_SCALAR = int.from_bytes(hashlib.sha256(b"kms-agent test vector fido2 key").digest(), "big")
PIV_SCALAR = int.from_bytes(hashlib.sha256(b"kms-agent test vector piv key").digest(), "big")
RP_ID = "kms.example"


def build() -> dict[str, Any]:
    payloads = {}
    for name, fields in PAYLOADS.items():
        data, digest = reference.digest(fields)
        payloads[name] = {"expect": "success", "fields": fields, "canonical_cbor": data.hex(), "digest": digest.hex()}
    good = bytes.fromhex(str(payloads["btc-withdrawal"]["canonical_cbor"]))
    invalid = {
        "unknown-key": reference.encode({**reference.payload_map(BASE), "memo": "x"}),
        "missing-key": reference.encode({k: v for k, v in reference.payload_map(BASE).items() if k != "nonce"}),
        "amount-leading-zero": reference.encode({**reference.payload_map(BASE), "fee": "01000"}),
        "amount-as-integer": reference.encode({**reference.payload_map(BASE), "fee": 1000}),
        "short-request-id": reference.encode({**reference.payload_map(BASE), "request_id": bytes(15)}),
        "bool-as-uint": reference.encode({**reference.payload_map(BASE), "policy_generation": True}),
        "unknown-action": reference.encode({**reference.payload_map(BASE), "action": "sweep"}),
        "version-2": reference.encode({**reference.payload_map(BASE), "v": 2}),
        # A two-byte head for a small integer: valid CBOR, not canonical.
        "non-canonical-int": good.replace(
            reference.encode("policy_generation") + b"\x07", reference.encode("policy_generation") + b"\x18\x07"
        ),
        "trailing-garbage": good + b"\x00",
    }
    assert invalid["non-canonical-int"] != good
    digest = bytes.fromhex(str(payloads["btc-withdrawal"]["digest"]))
    fido2_key = ec.derive_private_key(FIDO2_SCALAR, ec.SECP256R1())
    auth_data = hashlib.sha256(RP_ID.encode()).digest() + bytes([0x05]) + (17).to_bytes(4, "big")
    piv_key = ec.derive_private_key(PIV_SCALAR, ec.SECP256R1())
    return {
        "spec": "docs/approvals.md",
        "payloads": payloads,
        "invalid_payloads": {k: {"expect": "format failure", "cbor": v.hex()} for k, v in invalid.items()},
        "signatures": {
            "payload": "btc-withdrawal",
            "fido2": {
                "expect": "success",
                "rp_id": RP_ID,
                "private_scalar": f"{FIDO2_SCALAR:064x}",
                "cose_key": cbor.encode(dict(ES256.from_cryptography_key(fido2_key.public_key()))).hex(),
                "auth_data": auth_data.hex(),
                "sign_count": 17,
                "signature": fido2_key.sign(auth_data + digest, ec.ECDSA(hashes.SHA256())).hex(),
            },
            "piv": {
                "expect": "success",
                "private_scalar": f"{PIV_SCALAR:064x}",
                "sign_pub": piv_key.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint).hex(),
                "signature": piv_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))).hex(),
            },
        },
    }


INITIATOR = "202122232425262728292a2b2c2d2e2f"
PAYLOADS_V2 = {
    "withdrawal-by-operator": {**BASE, "initiator": INITIATOR},
    "withdrawal-by-application": {**BASE, "initiator": None},
    "policy-change": {**PAYLOADS["policy-change"], "initiator": None},
}


def build_v2() -> dict[str, Any]:
    """Version 2 payloads (docs/approvals.md §2.1): version 1 plus the signed initiator."""
    payloads = {}
    for name, fields in PAYLOADS_V2.items():
        data, digest = reference.digest(fields)
        payloads[name] = {"expect": "success", "fields": fields, "canonical_cbor": data.hex(), "digest": digest.hex()}
    good = reference.payload_map(PAYLOADS_V2["withdrawal-by-operator"])
    invalid = {
        "missing-initiator-in-v2": reference.encode({k: v for k, v in good.items() if k != "initiator"}),
        "initiator-in-v1": reference.encode({**good, "v": 1}),
        "short-initiator": reference.encode({**good, "initiator": bytes(15)}),
        "initiator-as-text": reference.encode({**good, "initiator": "alice"}),
        "version-3": reference.encode({**good, "v": 3}),
    }
    return {
        "spec": "docs/approvals.md",
        "payloads": payloads,
        "invalid_payloads": {k: {"expect": "format failure", "cbor": v.hex()} for k, v in invalid.items()},
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")
    OUT_V2.write_text(json.dumps(build_v2(), indent=2) + "\n")
    print(f"wrote {OUT_V2}")
