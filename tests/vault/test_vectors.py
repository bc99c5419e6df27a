"""wallet.dat test vectors: fixed inputs -> exact bytes, from both the spec's reference code and ours.

v2 (the format the agent writes) and legacy v1 (the format it still reads). Every vector file
states what a reader must do with it: ``success``, ``integrity failure`` or ``format failure``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbor2
import pytest

from agent.errors import VaultError, VaultFormatError, VaultIntegrityError
from agent.vault import format as fmt
from agent.vault import keyslots
from agent.vault.index import IndexEditor, IndexReader
from agent.vault.primitives import fingerprint
from agent.vault.records import IndexRoot, VaultHeader, WalletRow
from agent.vault.sealed import (
    VaultKeys,
    check_file_signature,
    open_body,
    open_entry,
    open_wallet_entry,
    seal_head,
    seal_wallet_entry,
)
from tests.vault import make_vectors
from tests.vault import reference as ref

VECTORS = Path(__file__).parent / "vectors"
VECTOR = json.loads((VECTORS / "v1-basic.json").read_text())
FILE = bytes.fromhex(VECTOR["file_hex"])
INPUTS = VECTOR["inputs"]
V2 = json.loads((VECTORS / "v2-basic.json").read_text())
FILE2 = bytes.fromhex(V2["file_hex"])
INPUTS2 = V2["inputs"]
h = bytes.fromhex


def read_v2(data: bytes) -> fmt.VaultFile:
    """What `kms-agent vault verify` does, from bytes: framing, signature, then every index node."""
    vf = fmt.parse(data)
    check_file_signature(vf)
    IndexReader(vf).verify()
    return vf


# --- version 2 ------------------------------------------------------------------------------------
def test_reference_implementation_reproduces_the_v2_vector() -> None:
    _, _, data = make_vectors.build_v2(INPUTS2)
    assert data == FILE2
    _, _, rows = ref.read_v2(FILE2)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows) and len(rows) == 3


def test_product_code_writes_the_v2_vector_byte_for_byte() -> None:
    ref_header, ref_rows, _ = make_vectors.build_v2(INPUTS2)
    dek, vid = bytearray(h(INPUTS2["dek"])), h(INPUTS2["vault_id"])
    keys = VaultKeys(dek, vid)
    nonces = {INPUTS2["signature_id"]: h(INPUTS2["entry_nonce"])} | {k[0]: h(k[5]) for k in INPUTS2["keys"]}
    rows = []
    for raw in ref_rows:
        row = WalletRow(*raw[:7])
        plaintext = bytearray(open_wallet_entry(keys, row, raw[7]))  # what was sealed...
        rows.append([*raw[:7], seal_wallet_entry(keys, row, plaintext, nonce=nonces[row.signature_id])])
    assert rows == ref_rows  # ...sealed again by our code, to the same bytes
    built = IndexEditor.bulk(rows, leaf_max=INPUTS2["leaf_max"], node_max=INPUTS2["node_max"]).build()
    header = VaultHeader.from_cbor_map(
        {**ref_header, "index": {"root": bytes(32), "root_node": 0, "nodes": 1, "wallets": 0}, "body_len": 16}
    )
    body = {"shares": {INPUTS2["operator_a"]: INPUTS2["share_a"], INPUTS2["operator_b"]: INPUTS2["share_b"]}}
    _, head, _ = seal_head(header.with_index(built.root), body, keys)
    assert all(isinstance(node, bytes) for node in built.nodes)
    assert head + b"".join(n for n in built.nodes if isinstance(n, bytes)) + built.table() == FILE2
    assert fingerprint(keys.signing_public) == V2["fingerprint"]


def test_product_code_reads_the_v2_vector() -> None:
    vf = read_v2(FILE2)
    assert vf.header.index == IndexRoot(vf.header.index.root, 2, 3, 3)
    keys = VaultKeys(bytearray(h(INPUTS2["dek"])), h(INPUTS2["vault_id"]))
    assert open_body(vf, keys) == {
        "shares": {INPUTS2["operator_a"]: INPUTS2["share_a"], INPUTS2["operator_b"]: INPUTS2["share_b"]}
    }
    index = IndexEditor(IndexReader(vf))
    found = index.find(INPUTS2["signature_id"])
    assert found is not None and found[5] == INPUTS2["xpub"]
    assert bytes(open_wallet_entry(keys, fmt.row_of(found), found[7])) == b"MNEMONIC\0" + INPUTS2["mnemonic"].encode()
    sig, _, _, address, key, _ = INPUTS2["keys"][1]
    found = index.find(sig)
    assert found is not None and found[6] == address
    assert bytes(open_wallet_entry(keys, fmt.row_of(found), found[7])) == b"PRIVATE_KEY\0" + key.encode()
    assert index.find("00000000-0000-0000-0000-000000000000") is None
    assert index.find("zzz") is None


@pytest.mark.parametrize("name", ["v2-leaf-swap.json", "v2-trailing-byte.json", "v2-header-edit.json"])
def test_v2_failure_vectors_are_refused_by_both_readers(name: str) -> None:
    vector = json.loads((VECTORS / name).read_text())
    data = bytes.fromhex(vector["file_hex"])
    error = {"integrity failure": VaultIntegrityError, "format failure": VaultFormatError}[vector["expect"]]
    with pytest.raises(error):
        read_v2(data)
    with pytest.raises(ref.Refused):
        ref.read_v2(data)


def test_every_single_byte_flip_of_the_v2_vector_is_detected_without_a_token() -> None:
    """Flip each byte in turn: parsing, the signature or the index walk must refuse it."""
    for offset in range(len(FILE2)):
        mutated = bytearray(FILE2)
        mutated[offset] ^= 0x01
        with pytest.raises(VaultError):
            read_v2(bytes(mutated))


@pytest.mark.parametrize("cut", [0, 7, 13, 14, 200, len(FILE2) - 300, len(FILE2) - 25, len(FILE2) - 8, len(FILE2) - 1])
def test_truncated_v2_files_are_refused(cut: int) -> None:
    with pytest.raises(VaultError):
        read_v2(FILE2[:cut])


def _v2_header(edit: Any) -> bytes:
    header_len = int.from_bytes(FILE2[10:14], "big")
    header = cbor2.loads(FILE2[14 : 14 + header_len])
    edit(header)
    return fmt.prefix_v2(cbor2.dumps(header, canonical=True)) + FILE2[14 + header_len :]


def test_v2_header_is_strict() -> None:
    with pytest.raises(VaultFormatError, match="unknown keys"):
        fmt.parse(_v2_header(lambda hd: hd.update(extra=1)))
    with pytest.raises(VaultFormatError, match=r"header.index.nodes must be an unsigned integer"):
        fmt.parse(_v2_header(lambda hd: hd["index"].update(nodes=True)))
    with pytest.raises(VaultFormatError, match=r"unknown keys"):
        fmt.parse(_v2_header(lambda hd: hd.update(wallets=[])))  # a v1 field in a v2 header
    with pytest.raises(VaultFormatError, match="root node 3 of 3"):
        fmt.parse(_v2_header(lambda hd: hd["index"].update(root_node=3)))


def test_nodes_are_strict() -> None:
    good = fmt.encode_leaf([["a", "MNEMONIC", "BTC", False, 1, "xpub", None, bytes(30)]])
    assert fmt.decode_node(good, 0)[0] == fmt.LEAF
    bad = {
        "kind": cbor2.dumps([True, []], canonical=True),
        "float kind": cbor2.dumps([0.0, []], canonical=True),
        "order": fmt.encode_leaf(
            [
                ["b", "MNEMONIC", "BTC", False, 1, None, None, bytes(30)],
                ["a", *["MNEMONIC", "BTC", False, 1, None, None, bytes(30)]],
            ]
        ),
        "short entry": fmt.encode_leaf([["a", "MNEMONIC", "BTC", False, 1, None, None, bytes(5)]]),
        "row width": fmt.encode_leaf([["a", "MNEMONIC", "BTC", False, 1, None, None]]),
        "empty internal": fmt.encode_internal([]),
        "child hash": fmt.encode_internal([["a", 0, bytes(31)]]),
        "too many rows": fmt.encode_leaf(
            [[f"{i:03}", "MNEMONIC", "BTC", False, 1, None, None, bytes(30)] for i in range(65)]
        ),
        "not canonical": b"\x82\x18\x00\x80",  # [0, []] with the 0 in a 1-byte-argument form
    }
    for what, data in bad.items():
        with pytest.raises(VaultFormatError):
            fmt.decode_node(data, 0)
            pytest.fail(what)


# --- legacy version 1 ------------------------------------------------------------------------------
def test_reference_implementation_reproduces_the_stored_v1_vector() -> None:
    _, _, data = make_vectors.build(INPUTS)
    assert data == FILE


def test_product_code_reads_the_v1_vector() -> None:
    vf = fmt.parse_v1(FILE)
    check_file_signature(vf)
    keys = VaultKeys(bytearray(h(INPUTS["dek"])), h(INPUTS["vault_id"]))
    body = open_body(vf, keys)
    assert body["shares"][INPUTS["operator_b"]] == INPUTS["share_b"]
    entry = open_entry(keys, INPUTS["signature_id"], body["entries"][INPUTS["signature_id"]])
    assert bytes(entry) == b"MNEMONIC\0" + INPUTS["mnemonic"].encode()
    share = keyslots.unwrap_share(vf.header.slots[0], bytearray(h(INPUTS["slot_ikm"])), vf.header.vault_id)
    assert bytes(share) == INPUTS["share_a"].encode()
    assert vf.rows[0].xpub == INPUTS["xpub"]
    assert vf.header.wallet_count == 1
    assert fingerprint(keys.signing_public) == VECTOR["fingerprint"]


def test_wrong_key_material_is_an_opaque_integrity_failure() -> None:
    vf = fmt.parse_v1(FILE)
    with pytest.raises(VaultIntegrityError) as exc:
        keyslots.unwrap_share(vf.header.slots[0], bytearray(32), vf.header.vault_id)
    assert str(exc.value) == str(VaultIntegrityError())
    with pytest.raises(VaultIntegrityError):
        open_body(vf, VaultKeys(bytearray(32), vf.header.vault_id))
    with pytest.raises(VaultIntegrityError):
        open_body(fmt.parse(FILE2), VaultKeys(bytearray(32), vf.header.vault_id))


def test_every_single_byte_flip_of_the_v1_vector_is_detected_without_a_token() -> None:
    for offset in range(len(FILE)):
        mutated = bytearray(FILE)
        mutated[offset] ^= 0x01
        with pytest.raises(VaultError):
            check_file_signature(fmt.parse_v1(bytes(mutated)))


@pytest.mark.parametrize("cut", [0, 7, 13, 14, 200, len(FILE) - 17, len(FILE) - 1])
def test_truncated_v1_files_are_refused(cut: int) -> None:
    with pytest.raises(VaultError):
        check_file_signature(fmt.parse_v1(FILE[:cut]))


def test_non_canonical_v1_header_is_refused() -> None:
    header_bytes, mac, sig, body = fmt.split_v1(FILE)
    header = fmt.decode_canonical(header_bytes, "header")
    loose = cbor2.dumps(dict(reversed(list(header.items()))))  # same map, keys out of canonical order
    assert loose != header_bytes
    with pytest.raises(VaultFormatError, match="canonical"):
        fmt.parse_v1(fmt.serialise_v1(loose, mac, sig, body))


def test_unknown_v1_header_key_is_refused() -> None:
    header_bytes, mac, sig, body = fmt.split_v1(FILE)
    header = fmt.decode_canonical(header_bytes, "header")
    header["extra"] = 1
    with pytest.raises(VaultFormatError, match="unknown keys"):
        fmt.parse_v1(fmt.serialise_v1(fmt.encode_canonical(header), mac, sig, body))


def test_other_versions_are_refused() -> None:
    with pytest.raises(VaultFormatError, match=r"unsupported wallet\.dat version 3"):
        fmt.version_of(FILE2[:8] + b"\x00\x03" + FILE2[10:])
