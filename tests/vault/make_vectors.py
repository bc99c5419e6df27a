"""Regenerates tests/vault/vectors/v1-basic.json from fixed inputs with the *reference* code only.

Run by hand after a deliberate spec change: `python -m tests.vault.make_vectors`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.vault import reference as ref

VECTOR = Path(__file__).parent / "vectors" / "v1-basic.json"

#: The default policy for a 2-of-2 vault, as docs/policy.md spells it.
POLICY = {
    "v": 1,
    "generation": 1,
    "frozen": False,
    "admin_approvals": 2,
    "chains": {},
    "wallets": {},
    "default": {
        "approvals_required": 2,
        "initiator_may_approve": False,
        "approval_ttl": 7200,
        "frozen": False,
        "assets": {},
        "allowlist": [],
        "unknown_destination": "escalate",
        "escalate_by": 1,
        "over_limit": "deny",
        "velocity_scope": "wallet",
        "time_window": None,
        "allow_contract_calls": False,
    },
}


def inputs() -> dict[str, str | int | bool]:
    return {
        "dek": "00" * 16 + "11" * 16,
        "vault_id": "a0" * 16,
        "created_at": 1_764_000_000,
        "generation": 3,
        "rp_id": "kms-agent.local",
        "operator_a": "01" * 16,
        "operator_b": "02" * 16,
        "share_a": "alpha share words for operator a",
        "share_b": "bravo share words for operator b",
        "slot_id": "5a" * 16,
        "slot_ikm": "77" * 32,
        "slot_salt": "88" * 32,
        "slot_nonce": "99" * 12,
        "recovery_secret": "ee" * 32,
        "recovery_nonce": "ab" * 12,
        "body_nonce": "cd" * 12,
        "entry_nonce": "ef" * 12,
        "signature_id": "3f1c1d7e-5b7a-4a0f-9a47-2f4b7c2d9e10",
        "mnemonic": "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        "xpub": "xpub6BosfCnifzxcFwrSzQiqu2DBVTshkCXacvNsWGYJVVhhawA7d4R5WSWGFNbi8Aw6ZRc1brxMyWMzG3DSSSSoekkudhUd9yLb6qx39T9nMdj",
    }


def build(i: dict[str, str | int | bool]) -> tuple[dict, dict, bytes]:
    h = bytes.fromhex
    dek, vid = h(str(i["dek"])), h(str(i["vault_id"]))
    slot = {
        "slot_id": h(str(i["slot_id"])),
        "operator_id": h(str(i["operator_a"])),
        "kind": "fido2-hmac",
        "label": "sim:alice",
        "simulated": True,
        "enrolled_at": i["created_at"],
        "public": {"rp_id": i["rp_id"], "salt": h(str(i["slot_salt"])), "kdf_salt": h(str(i["slot_salt"]))},
        "kdf_salt": h(str(i["slot_salt"])),
        "nonce": h(str(i["slot_nonce"])),
        "wrapped": ref.wrap_slot(
            str(i["share_a"]).encode(),
            h(str(i["slot_ikm"])),
            "fido2-hmac",
            h(str(i["slot_salt"])),
            vid,
            h(str(i["slot_id"])),
            h(str(i["operator_a"])),
            h(str(i["slot_nonce"])),
        ),
    }
    header = {
        "vault_id": vid,
        "generation": i["generation"],
        "created_at": i["created_at"],
        "updated_at": i["created_at"],
        "rp_id": i["rp_id"],
        "quorum": 2,
        "operators": [
            {"operator_id": h(str(i["operator_a"])), "name": "alice"},
            {"operator_id": h(str(i["operator_b"])), "name": "bob"},
        ],
        "slots": [slot],
        "recovery": {
            "kind": "slip39-recovery",
            "threshold": 2,
            "shares": 3,
            "nonce": h(str(i["recovery_nonce"])),
            "wrapped": ref.wrap_recovery(dek, h(str(i["recovery_secret"])), vid, h(str(i["recovery_nonce"]))),
        },
        "signing_key": ref.signing_public(dek, vid),
        "body_nonce": h(str(i["body_nonce"])),
        "simulated": True,
        "wallets": [[i["signature_id"], "MNEMONIC", "BTC", False, i["created_at"], i["xpub"], None]],
        "policy": POLICY,
    }
    body = {
        "shares": {str(i["operator_a"]): i["share_a"], str(i["operator_b"]): i["share_b"]},
        "entries": {
            str(i["signature_id"]): ref.seal_entry(
                dek, vid, str(i["signature_id"]), "MNEMONIC", str(i["mnemonic"]).encode(), h(str(i["entry_nonce"]))
            )
        },
    }
    return header, body, ref.build_file(dek, header, body)


def main() -> None:
    i = inputs()
    header, _, data = build(i)
    VECTOR.parent.mkdir(parents=True, exist_ok=True)
    VECTOR.write_text(
        json.dumps(
            {
                "description": "wallet.dat v1: two operators (quorum 2), one FIDO2 slot, one mnemonic wallet",
                "expect": "success",
                "inputs": i,
                "fingerprint": ref.fingerprint(header["signing_key"]),
                "file_hex": data.hex(),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
