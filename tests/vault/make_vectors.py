"""Regenerates tests/vault/vectors/*.json from fixed inputs with the *reference* code only.

Run by hand after a deliberate spec change: `python -m tests.vault.make_vectors`.
v1-basic.json (legacy §A), v2-basic.json (§2-§5: three wallets in a two-level index, built with
nodes of at most 2 items so that a small file has internal nodes), and v2 failure cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbor2

from tests.vault import reference as ref

VECTORS = Path(__file__).parent / "vectors"
VECTOR = VECTORS / "v1-basic.json"

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


#: The extra wallets of v2-basic (private keys; fixed ids and nonces so the bytes are fixed).
V2_KEYS = [
    ("0b5e1f0e-2c55-4d47-8c1f-3f3c1f2a9b01", "ETH", True, "0x" + "11" * 20, "22" * 32, "31" * 12),
    ("c7a4f3d2-9e1b-4f60-b1a2-6d5e4c3b2a10", "ETH", False, "0x" + "33" * 20, "44" * 32, "32" * 12),
]


def inputs_v2() -> dict[str, Any]:
    return {**inputs(), "leaf_max": 2, "node_max": 2, "keys": [list(k) for k in V2_KEYS]}


def build_v2(i: dict[str, Any]) -> tuple[dict, list[list[Any]], bytes]:
    """(header map without index/body_len, leaf rows, file bytes) of v2-basic."""
    h = bytes.fromhex
    v1_header, v1_body, _ = build(i)
    dek, vid = h(str(i["dek"])), h(str(i["vault_id"]))
    header = {k: v for k, v in v1_header.items() if k != "wallets"}
    public = [[*v1_header["wallets"][0]]]
    secrets = [(b"MNEMONIC\0" + str(i["mnemonic"]).encode(), h(str(i["entry_nonce"])))]
    for sig, chain, testnet, address, key, nonce in i["keys"]:
        public.append([sig, "PRIVATE_KEY", chain, testnet, i["created_at"], None, address])
        secrets.append((b"PRIVATE_KEY\0" + key.encode(), h(nonce)))
    rows = sorted(
        (
            [*row, ref.seal_wallet_entry(dek, vid, row, plain, nonce)]
            for row, (plain, nonce) in zip(public, secrets, strict=True)
        ),
        key=lambda r: r[0],
    )
    data = ref.build_file_v2(dek, header, v1_body["shares"], rows, int(i["leaf_max"]), int(i["node_max"]))
    return header, rows, data


def _write(name: str, doc: dict[str, Any]) -> None:
    VECTORS.mkdir(parents=True, exist_ok=True)
    (VECTORS / name).write_text(json.dumps(doc, indent=2) + "\n")


def failure_cases(data: bytes) -> dict[str, tuple[str, str, bytes]]:
    """name -> (description, expect, file bytes): edits of v2-basic that a reader must refuse."""
    header_len = int.from_bytes(data[10:14], "big")
    body_end = 14 + header_len + 96 + cbor2.loads(data[14 : 14 + header_len])["body_len"]
    table = len(data) - 8 * 3
    offsets = [int.from_bytes(data[table + 8 * k : table + 8 * k + 8], "big") for k in range(3)]
    leaf0 = data[body_end : body_end + offsets[1]]
    leaf1 = data[body_end + offsets[1] : body_end + offsets[2]]
    root = data[body_end + offsets[2] : table]
    # The two leaves exchanged, the table rewritten to match: a well-formed file whose leaves no
    # longer hash to what the root records.
    swapped = (
        data[:body_end]
        + leaf1
        + leaf0
        + root
        + b"".join(n.to_bytes(8, "big") for n in (0, len(leaf1), len(leaf1) + len(leaf0)))
    )
    return {
        "v2-leaf-swap.json": (
            "v2-basic with the two leaves' node-table entries swapped",
            "integrity failure",
            bytes(swapped),
        ),
        "v2-trailing-byte.json": ("v2-basic with one byte appended", "format failure", data + b"\0"),
        "v2-header-edit.json": (
            "v2-basic with its generation changed (3 -> 4) and the old MAC and signature kept",
            "integrity failure",
            data[:14]
            + data[14 : 14 + header_len].replace(b"jgeneration\x03", b"jgeneration\x04")
            + data[14 + header_len :],
        ),
    }


def main() -> None:
    i = inputs()
    header, _, data = build(i)
    _write(
        "v1-basic.json",
        {
            "description": "wallet.dat v1: two operators (quorum 2), one FIDO2 slot, one mnemonic wallet",
            "expect": "success",
            "inputs": i,
            "fingerprint": ref.fingerprint(header["signing_key"]),
            "file_hex": data.hex(),
        },
    )
    i2 = inputs_v2()
    _, _, data2 = build_v2(i2)
    _write(
        "v2-basic.json",
        {
            "description": "wallet.dat v2: v1-basic's header and shares, a mnemonic and two private-key "
            "wallets in an index of two leaves under one internal root (nodes of at most 2 items)",
            "expect": "success",
            "inputs": i2,
            "fingerprint": ref.fingerprint(header["signing_key"]),
            "file_hex": data2.hex(),
        },
    )
    for name, (description, expect, bad) in failure_cases(data2).items():
        _write(name, {"description": description, "expect": expect, "file_hex": bad.hex()})


if __name__ == "__main__":
    main()
