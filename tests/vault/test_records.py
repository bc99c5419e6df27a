"""The typed header records: exact round trip to the file's CBOR map, strict parsing, changed copies."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import VaultFormatError
from agent.vault import format as fmt
from agent.vault.records import OperatorEntry, RecoveryEntry, SlotEntry, VaultHeader, WalletRow
from agent.vault.schema import WALLET_FIELDS

VECTOR = json.loads((Path(__file__).parent / "vectors" / "v1-basic.json").read_text())
FILE = bytes.fromhex(VECTOR["file_hex"])


V2 = bytes.fromhex(json.loads((Path(__file__).parent / "vectors" / "v2-basic.json").read_text())["file_hex"])


def _raw_header() -> tuple[bytes, Any]:
    header_bytes = fmt.split_v1(FILE)[0]
    return header_bytes, fmt.decode_canonical(header_bytes, "header")


def test_the_v1_vector_header_round_trips_to_the_same_map_and_bytes() -> None:
    header_bytes, raw = _raw_header()
    header, rows = VaultHeader.from_v1_cbor_map(raw)
    assert header.to_v1_cbor_map(rows) == raw
    assert fmt.encode_canonical(header.to_v1_cbor_map(rows)) == header_bytes
    assert fmt.parse_v1(FILE).header == header and header.wallet_count == len(rows) == 1


def test_the_v2_vector_header_round_trips_to_the_same_map_and_bytes() -> None:
    vf = fmt.parse(V2)
    raw = fmt.decode_canonical(vf.header_bytes, "header")
    assert VaultHeader.from_cbor_map(raw) == vf.header
    assert fmt.encode_canonical(vf.header.to_cbor_map()) == vf.header_bytes
    assert vf.header.wallet_count == 3 and vf.header.index.nodes == 3


def test_records_carry_typed_fields() -> None:
    header = fmt.parse_v1(FILE).header
    assert header.generation == VECTOR["inputs"]["generation"] and len(header.vault_id) == 16
    assert [op.operator_id.hex() for op in header.operators] == [
        VECTOR["inputs"]["operator_a"],
        VECTOR["inputs"]["operator_b"],
    ]
    assert header.slots[0].label == "sim:alice" and header.slots[0].simulated
    assert header.recovery.kind == "slip39-recovery"
    assert header.policy["v"] == 1  # opaque to the vault: agent.policy parses it


def test_sub_records_round_trip_on_their_own() -> None:
    _, raw = _raw_header()
    assert OperatorEntry.from_cbor_map(raw["operators"][0]).to_cbor_map() == raw["operators"][0]
    assert SlotEntry.from_cbor_map(raw["slots"][0]).to_cbor_map() == raw["slots"][0]
    assert RecoveryEntry.from_cbor_map(raw["recovery"]).to_cbor_map() == raw["recovery"]
    assert WalletRow.from_cbor_row(raw["wallets"][0]).to_cbor_row() == raw["wallets"][0]


def test_wallet_row_json_keeps_tatum_names_and_omits_the_absent_field() -> None:
    mnemonic = WalletRow("sig-1", "MNEMONIC", "BTC", False, 1_700_000_000, xpub="xpub6...")
    assert mnemonic.to_json() == {
        "signatureId": "sig-1",
        "type": "MNEMONIC",
        "chain": "BTC",
        "testnet": False,
        "created_at": 1_700_000_000,
        "xpub": "xpub6...",
    }
    assert list(mnemonic.to_json()) == list(WALLET_FIELDS[:6])
    key = WalletRow("sig-2", "PRIVATE_KEY", "ETH", True, 1, address="0xabc")
    assert key.to_json()["address"] == "0xabc" and "xpub" not in key.to_json()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h.update(extra=1), "unknown keys"),
        (lambda h: h.pop("rp_id"), "header.rp_id is missing"),
        (lambda h: h.update(quorum=True), "header.quorum must be an unsigned integer"),
        (lambda h: h.update(quorum=3), "impossible with 2 operators"),
        (lambda h: h.update(vault_id=bytes(15)), "header.vault_id must be 16 bytes"),
        (lambda h: h["slots"][0].update(operator_id=bytes(16)), "belongs to no operator"),
        (lambda h: h["operators"].append(dict(h["operators"][0])), "lists an operator twice"),
        (lambda h: h["wallets"][0].__setitem__(3, 1), r"wallets\[0\].testnet has the wrong type"),
        (lambda h: h["wallets"][0].pop(), "must be an array of 7 fields"),
        (lambda h: h.update(policy=[]), "header.policy must be dict"),
    ],
)
def test_from_cbor_map_is_strict(edit: Any, message: str) -> None:
    _, raw = _raw_header()
    edit(raw)
    with pytest.raises(VaultFormatError, match=message):
        VaultHeader.from_v1_cbor_map(raw)


def test_changes_make_new_headers_and_leave_the_old_one_alone() -> None:
    header = fmt.parse(V2).header
    more = header.with_index(dataclasses.replace(header.index, wallets=4), body_len=99)
    assert (more.wallet_count, more.body_len) == (4, 99) and header.wallet_count == 3
    hardware = dataclasses.replace(header.slots[0], label="fido2:1", simulated=False)
    assert header.with_slots([hardware]).simulated is False and header.simulated is True
    written = header.next_write(updated_at=9, body_nonce=bytes(12))
    assert (written.generation, written.updated_at) == (header.generation + 1, 9)
    changed = header.with_policy({**header.policy, "generation": 7})
    assert changed.policy["generation"] == 7 and header.policy["generation"] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        header.generation = 0  # type: ignore[misc]
