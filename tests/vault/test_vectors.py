"""wallet.dat v1 test vectors: fixed inputs -> exact bytes, from both the spec's reference code and ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import VaultError, VaultFormatError, VaultIntegrityError
from agent.vault import format as fmt
from agent.vault import keyslots
from agent.vault.primitives import fingerprint
from agent.vault.records import VaultHeader
from agent.vault.sealed import VaultKeys, check_file_signature, open_body, open_entry, seal_entry, seal_file
from tests.vault import make_vectors

VECTOR = json.loads((Path(__file__).parent / "vectors" / "v1-basic.json").read_text())
FILE = bytes.fromhex(VECTOR["file_hex"])
INPUTS = VECTOR["inputs"]
h = bytes.fromhex


def test_reference_implementation_reproduces_the_stored_vector() -> None:
    _, _, data = make_vectors.build(INPUTS)
    assert data == FILE


def test_product_code_writes_the_vector_byte_for_byte() -> None:
    ref_header, _, _ = make_vectors.build(INPUTS)
    dek, vid = bytearray(h(INPUTS["dek"])), h(INPUTS["vault_id"])
    keys = VaultKeys(dek, vid)
    slot = dict(ref_header["slots"][0])
    slot["nonce"], slot["wrapped"] = keyslots.wrap_share(
        INPUTS["share_a"].encode(),
        bytearray(h(INPUTS["slot_ikm"])),
        kind="fido2-hmac",
        kdf_salt=h(INPUTS["slot_salt"]),
        vault_id=vid,
        slot_id=h(INPUTS["slot_id"]),
        operator_id=h(INPUTS["operator_a"]),
        nonce=h(INPUTS["slot_nonce"]),
    )
    rec_nonce, rec_wrapped = keyslots.wrap_recovery(
        dek, bytearray(h(INPUTS["recovery_secret"])), vid, nonce=h(INPUTS["recovery_nonce"])
    )
    header = VaultHeader.from_cbor_map(
        {
            **ref_header,
            "slots": [slot],
            "signing_key": keys.signing_public,
            "recovery": {**ref_header["recovery"], "nonce": rec_nonce, "wrapped": rec_wrapped},
        }
    )
    secret = bytearray(b"MNEMONIC\0" + INPUTS["mnemonic"].encode())
    body = {
        "shares": {INPUTS["operator_a"]: INPUTS["share_a"], INPUTS["operator_b"]: INPUTS["share_b"]},
        "entries": {
            INPUTS["signature_id"]: seal_entry(keys, INPUTS["signature_id"], secret, nonce=h(INPUTS["entry_nonce"]))
        },
    }
    assert seal_file(header, body, keys) == FILE
    assert fingerprint(keys.signing_public) == VECTOR["fingerprint"]


def test_product_code_reads_the_vector() -> None:
    vf = fmt.parse(FILE)
    check_file_signature(vf)
    keys = VaultKeys(bytearray(h(INPUTS["dek"])), h(INPUTS["vault_id"]))
    body = open_body(vf, keys)
    assert body["shares"][INPUTS["operator_b"]] == INPUTS["share_b"]
    entry = open_entry(keys, INPUTS["signature_id"], body["entries"][INPUTS["signature_id"]])
    assert bytes(entry) == b"MNEMONIC\0" + INPUTS["mnemonic"].encode()
    share = keyslots.unwrap_share(vf.header.slots[0], bytearray(h(INPUTS["slot_ikm"])), vf.header.vault_id)
    assert bytes(share) == INPUTS["share_a"].encode()
    assert vf.header.wallets[0].xpub == INPUTS["xpub"]


def test_wrong_key_material_is_an_opaque_integrity_failure() -> None:
    vf = fmt.parse(FILE)
    with pytest.raises(VaultIntegrityError) as exc:
        keyslots.unwrap_share(vf.header.slots[0], bytearray(32), vf.header.vault_id)
    assert str(exc.value) == str(VaultIntegrityError())
    with pytest.raises(VaultIntegrityError):
        open_body(vf, VaultKeys(bytearray(32), vf.header.vault_id))


def test_every_single_byte_flip_is_detected_without_a_token() -> None:
    """Flip each byte of the vector file in turn: parsing or the signature check must refuse it."""
    for offset in range(len(FILE)):
        mutated = bytearray(FILE)
        mutated[offset] ^= 0x01
        with pytest.raises(VaultError):
            vf = fmt.parse(bytes(mutated))
            check_file_signature(vf)


@pytest.mark.parametrize("cut", [0, 7, 13, 14, 200, len(FILE) - 17, len(FILE) - 1])
def test_truncated_files_are_refused(cut: int) -> None:
    with pytest.raises(VaultError):
        check_file_signature(fmt.parse(FILE[:cut]))


def test_non_canonical_header_is_refused() -> None:
    header_bytes, mac, sig, body = fmt.split(FILE)
    header = fmt.decode_canonical(header_bytes, "header")
    import cbor2

    loose = cbor2.dumps(dict(reversed(list(header.items()))))  # same map, keys out of canonical order
    assert loose != header_bytes
    with pytest.raises(VaultFormatError, match="canonical"):
        fmt.parse(fmt.serialise(loose, mac, sig, body))


def test_unknown_header_key_is_refused() -> None:
    header_bytes, mac, sig, body = fmt.split(FILE)
    header = fmt.decode_canonical(header_bytes, "header")
    header["extra"] = 1
    with pytest.raises(VaultFormatError, match="unknown keys"):
        fmt.parse(fmt.serialise(fmt.encode_canonical(header), mac, sig, body))
