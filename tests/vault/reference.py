"""An independent implementation of docs/wallet-format.md, written from the spec text with raw
``cryptography`` and ``cbor2`` calls and no import from ``agent``. The test vectors must agree with
both this and the product code, so a change to either that drifts from the spec is caught.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DOMAIN = b"kms-agent/v1/"


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=DOMAIN + info).derive(ikm)


def cbor(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def signing_key(dek: bytes, vault_id: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hkdf(dek, vault_id, b"header-signing"))


def signing_public(dek: bytes, vault_id: bytes) -> bytes:
    return (
        signing_key(dek, vault_id).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def wrap_slot(
    share: bytes,
    ikm: bytes,
    kind: str,
    kdf_salt: bytes,
    vault_id: bytes,
    slot_id: bytes,
    operator_id: bytes,
    nonce: bytes,
) -> bytes:
    kek = hkdf(ikm, kdf_salt, b"slot/" + kind.encode() + b"\0" + vault_id + slot_id)
    aad = DOMAIN + b"slot\0" + kind.encode() + b"\0" + vault_id + slot_id + operator_id
    return AESGCM(kek).encrypt(nonce, share, aad)


def wrap_recovery(dek: bytes, secret: bytes, vault_id: bytes, nonce: bytes) -> bytes:
    kek = hkdf(secret, vault_id, b"recovery")
    return AESGCM(kek).encrypt(nonce, dek, DOMAIN + b"recovery\0" + vault_id)


def seal_entry(dek: bytes, vault_id: bytes, signature_id: str, wallet_type: str, secret: bytes, nonce: bytes) -> bytes:
    key = hkdf(dek, vault_id, b"entry")
    aad = DOMAIN + b"entry\0" + vault_id + signature_id.encode()
    return nonce + AESGCM(key).encrypt(nonce, wallet_type.encode() + b"\0" + secret, aad)


def build_file(dek: bytes, header: dict[str, Any], body: dict[str, Any]) -> bytes:
    vault_id = header["vault_id"]
    header_bytes = cbor(header)
    prefix = b"KMSVAULT" + struct.pack(">HI", 1, len(header_bytes)) + header_bytes
    ciphertext = AESGCM(hkdf(dek, vault_id, b"body")).encrypt(header["body_nonce"], cbor(body), prefix)
    mac = hmac.new(hkdf(dek, vault_id, b"header-mac"), prefix, hashlib.sha256).digest()
    sig = signing_key(dek, vault_id).sign(prefix + mac + hashlib.sha256(ciphertext).digest())
    return prefix + mac + sig + ciphertext


def fingerprint(public: bytes) -> str:
    digest = hashlib.sha256(DOMAIN + b"vault-signing-key\0" + public).hexdigest()[:40]
    return ":".join(digest[i : i + 4] for i in range(0, 40, 4))


# --- version 2 (docs/wallet-format.md §2-§5) -------------------------------------------------------
def node_hash(data: bytes) -> bytes:
    return hashlib.sha256(DOMAIN + b"index-node\0" + data).digest()


def seal_wallet_entry(dek: bytes, vault_id: bytes, row: list[Any], plaintext: bytes, nonce: bytes) -> bytes:
    """§5.2: the associated data is the vault id and the canonical CBOR of the 7-field public row."""
    aad = DOMAIN + b"wallet-entry\0" + vault_id + cbor(row)
    return nonce + AESGCM(hkdf(dek, vault_id, b"entry")).encrypt(nonce, plaintext, aad)


def open_wallet_entry(dek: bytes, vault_id: bytes, row: list[Any]) -> bytes:
    """``row`` is a leaf row: the 7 public fields, then the sealed entry."""
    blob = row[7]
    aad = DOMAIN + b"wallet-entry\0" + vault_id + cbor(row[:7])
    return AESGCM(hkdf(dek, vault_id, b"entry")).decrypt(blob[:12], blob[12:], aad)


def build_index(rows: list[list[Any]], leaf_max: int = 64, node_max: int = 64) -> tuple[list[bytes], int, bytes]:
    """§5.3's bulk layout: full leaves in key order, then each level's nodes split as evenly as possible."""
    nodes: list[bytes] = []
    level: list[tuple[str, int, bytes]] = []

    def emit(node: list[Any], first: str) -> None:
        data = cbor(node)
        level.append((first, len(nodes), node_hash(data)))
        nodes.append(data)

    for i in range(0, len(rows), leaf_max):
        emit([0, rows[i : i + leaf_max]], rows[i][0])
    if not rows:
        emit([0, []], "")
    while len(level) > 1:
        groups = -(-len(level) // node_max)
        size, extra = divmod(len(level), groups)
        below, level, at = level, [], 0
        for g in range(groups):
            part = below[at : at + size + (1 if g < extra else 0)]
            at += len(part)
            emit([1, [[k, n, h] for k, n, h in part]], part[0][0])
    return nodes, len(nodes) - 1, level[0][2]


def build_file_v2(
    dek: bytes, header: dict[str, Any], shares: dict[str, str], rows: list[list[Any]], leaf_max: int, node_max: int
) -> bytes:
    """``header`` without ``index`` and ``body_len``: both are filled in from the rows and the body."""
    vault_id = header["vault_id"]
    nodes, root_node, root = build_index(rows, leaf_max, node_max)
    body = cbor({"shares": shares})
    full = {
        **header,
        "index": {"root": root, "root_node": root_node, "nodes": len(nodes), "wallets": len(rows)},
        "body_len": len(body) + 16,
    }
    header_bytes = cbor(full)
    prefix = b"KMSVAULT" + struct.pack(">HI", 2, len(header_bytes)) + header_bytes
    ciphertext = AESGCM(hkdf(dek, vault_id, b"body")).encrypt(full["body_nonce"], body, prefix)
    mac = hmac.new(hkdf(dek, vault_id, b"header-mac"), prefix, hashlib.sha256).digest()
    sig = signing_key(dek, vault_id).sign(prefix + mac + hashlib.sha256(ciphertext).digest())
    offsets, at = [], 0
    for node in nodes:
        offsets.append(struct.pack(">Q", at))
        at += len(node)
    return prefix + mac + sig + ciphertext + b"".join(nodes) + b"".join(offsets)


class Refused(Exception):
    """The reference reader refuses the file (any reason)."""


def _canonical(data: bytes) -> Any:
    try:
        value = cbor2.loads(data)
    except Exception as exc:
        raise Refused(f"not CBOR: {exc}") from None
    if cbor(value) != data:
        raise Refused("not canonical CBOR")
    return value


def read_v2(data: bytes) -> tuple[dict[str, Any], bytes, list[list[Any]]]:
    """Check a v2 file as §2-§5 say, with no key: returns (header map, sealed body, leaf rows in order).

    Checks the framing, the header signature under the header's own key, every node's hash against
    its parent (the root against the header), the table, key order, leaf depth and counts.
    """
    if len(data) < 14 or data[:8] != b"KMSVAULT":
        raise Refused("magic")
    version, header_len = struct.unpack(">HI", data[8:14])
    if version != 2:
        raise Refused("version")
    end = 14 + header_len
    if end + 96 > len(data):
        raise Refused("truncated")
    header = _canonical(data[14:end])
    if not isinstance(header, dict) or set(header) != {
        "vault_id", "generation", "created_at", "updated_at", "rp_id", "quorum", "operators", "slots",
        "recovery", "signing_key", "body_nonce", "body_len", "simulated", "index", "policy",
    }:  # fmt: skip
        raise Refused("header keys")
    index = header["index"]
    if set(index) != {"root", "root_node", "nodes", "wallets"}:
        raise Refused("index keys")
    mac, sig = data[end : end + 32], data[end + 32 : end + 96]
    body_end = end + 96 + header["body_len"]
    body = data[end + 96 : body_end]
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(header["signing_key"]).verify(
            sig, data[:end] + mac + hashlib.sha256(body).digest()
        )
    except (InvalidSignature, ValueError):
        raise Refused("signature") from None
    count = index["nodes"]
    table_start = len(data) - 8 * count
    if count < 1 or table_start <= body_end or header["body_len"] < 16:
        raise Refused("lengths")
    offsets = [v for (v,) in struct.iter_unpack(">Q", data[table_start:])]
    ends = [*offsets[1:], table_start - body_end]
    if offsets[0] != 0 or any(a >= b for a, b in zip(offsets, ends, strict=True)):
        raise Refused("table")
    seen: set[int] = set()
    rows: list[list[Any]] = []
    depths: set[int] = set()

    def visit(number: int, expect: bytes, depth: int, first: str | None) -> None:
        if number in seen or not 0 <= number < count or depth > 16:
            raise Refused("node number")
        seen.add(number)
        raw = data[body_end + offsets[number] : body_end + ends[number]]
        if node_hash(raw) != expect:
            raise Refused("node hash")
        node = _canonical(raw)
        kind, items = node
        if type(kind) is not int or kind not in (0, 1) or not isinstance(items, list):
            raise Refused("node kind")
        if first is not None and (not items or items[0][0] != first):
            raise Refused("first key")
        if kind == 1:
            if not 1 <= len(items) <= 64 or (depth == 0 and len(items) < 2):
                raise Refused("fan-out")
            keys = [k for k, _, _ in items]
            if keys != sorted(set(keys)):
                raise Refused("key order")
            for key, child, child_hash in items:
                visit(child, child_hash, depth + 1, key)
            return
        if len(items) > 64 or (not items and depth):
            raise Refused("leaf size")
        depths.add(depth)
        rows.extend(items)

    visit(index["root_node"], index["root"], 0, None)
    keys = [r[0] for r in rows]
    if len(seen) != count or len(depths) != 1 or keys != sorted(set(keys)) or len(rows) != index["wallets"]:
        raise Refused("tree shape")
    for r in rows:
        if len(r) != 8 or not isinstance(r[7], bytes) or r[1] not in ("MNEMONIC", "PRIVATE_KEY"):
            raise Refused("row shape")
    return header, body, rows


def open_body_v2(dek: bytes, data: bytes) -> dict[str, Any]:
    header, body, _ = read_v2(data)
    end = 14 + struct.unpack(">I", data[10:14])[0]
    prefix = data[:end]
    vid = header["vault_id"]
    if not hmac.compare_digest(
        hmac.new(hkdf(dek, vid, b"header-mac"), prefix, hashlib.sha256).digest(), data[end : end + 32]
    ):
        raise Refused("header MAC")
    plain: dict[str, Any] = cbor2.loads(AESGCM(hkdf(dek, vid, b"body")).decrypt(header["body_nonce"], body, prefix))
    return plain
