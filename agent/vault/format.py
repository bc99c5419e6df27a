"""wallet.dat framing: parse and serialise only. No crypto, no I/O (docs/wallet-format.md).

Version 2 (§2)::

    MAGIC "KMSVAULT" | u16 version = 2 | u32 header_len | header (canonical CBOR)
    | header_mac [32] | header_sig [64] | body [header.body_len] (AES-256-GCM, the operators' shares)
    | index nodes (canonical CBOR each, back to back) | node table (u64 offset per node)

The header and body are read whole; the index is read one node at a time, by offset, from a
buffer (``pread`` on the open file: :class:`agent.vault.store.FileBuffer`), so a lookup touches a
few pages whatever the vault's size. Legacy version 1 (appendix A) keeps everything, wallet rows
included, in the header and one body.

Parsing is strict so that one file has exactly one meaning: the header and every node must be
canonical CBOR (re-encoded and compared), every field must have its exact type and length, unknown
header keys are refused, and the node table must cut the node region into exactly ``index.nodes``
non-empty, contiguous pieces. Structural errors quote what is wrong; cryptographic checks live in
:mod:`agent.vault.sealed` and :mod:`agent.vault.index` and fail opaquely.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol

import cbor2

from agent.errors import VaultFormatError
from agent.vault.records import VaultHeader, WalletRow
from agent.vault.schema import WALLET_FIELDS, check_wallet_rows

MAGIC = b"KMSVAULT"
VERSION = 2
VERSION_V1 = 1
PREFIX = struct.Struct(">8sHI")
MAC_LEN = 32
SIG_LEN = 64
GCM_TAG_LEN = 16
HASH_LEN = 32
MAX_HEADER_LEN = 1 << 30
OFFSET = struct.Struct(">Q")

#: Index node kinds (§10.1) and their limits: a lookup decodes at most one node per tree level.
LEAF = 0
INTERNAL = 1
LEAF_MAX = 64
NODE_MAX = 64
#: Deeper than any tree of 64-way nodes that fits in 2^64 bytes: a bound on walks, not a real limit.
MAX_DEPTH = 16
#: nonce (12) + GCM tag (16) + at least the wallet type and its 0x00 separator.
MIN_ENTRY_LEN = 12 + 16 + 2


class Buffer(Protocol):
    """What the parser reads from: ``bytes``, or a :class:`agent.vault.store.FileBuffer` (``pread``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice, /) -> bytes: ...


def encode_canonical(value: Any) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2.1: shortest forms, sorted map keys)."""
    return bytes(cbor2.dumps(value, canonical=True))


def decode_canonical(data: bytes, what: str) -> Any:
    try:
        value = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several unrelated types for garbage
        raise VaultFormatError(f"{what} is not valid CBOR ({type(exc).__name__})") from None
    if encode_canonical(value) != data:
        raise VaultFormatError(f"{what} is not in canonical CBOR form")
    return value


def version_of(buf: Buffer) -> int:
    """The file's format version, after checking the magic bytes.

    :raises VaultFormatError: not a wallet.dat, or a version this agent does not read.
    """
    if len(buf) < PREFIX.size:
        raise VaultFormatError(f"file is truncated ({len(buf)} bytes): not a kms-agent wallet.dat")
    magic, version, _ = PREFIX.unpack(buf[0 : PREFIX.size])
    if magic != MAGIC:
        raise VaultFormatError("not a kms-agent wallet.dat (bad magic bytes)")
    if version not in (VERSION_V1, VERSION):
        raise VaultFormatError(
            f"unsupported wallet.dat version {version} (this agent reads versions {VERSION_V1} and {VERSION})"
        )
    return int(version)


# --- version 2 --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class VaultFile:
    """A v2 wallet.dat: header decoded and checked, body read, the index left in ``buf`` until asked."""

    header: VaultHeader
    header_bytes: bytes
    header_mac: bytes
    header_sig: bytes
    body: bytes
    buf: Buffer
    nodes_start: int
    table_start: int

    @property
    def prefix(self) -> bytes:
        """Bytes covered by the header MAC and bound into the body AEAD."""
        return PREFIX.pack(MAGIC, VERSION, len(self.header_bytes)) + self.header_bytes

    @property
    def nodes_len(self) -> int:
        return self.table_start - self.nodes_start

    def node_span(self, number: int) -> tuple[int, int]:
        """Node ``number``'s (offset, end) in the node region, checked against its neighbours.

        :raises VaultFormatError: no such node, or a table entry that is not strictly increasing.
        """
        count = self.header.index.nodes
        if not 0 <= number < count:
            raise VaultFormatError(f"index node {number} does not exist ({count} nodes)")
        at = self.table_start + 8 * number
        start = OFFSET.unpack(self.buf[at : at + 8])[0]
        end = OFFSET.unpack(self.buf[at + 8 : at + 16])[0] if number + 1 < count else self.nodes_len
        if (number == 0 and start != 0) or not start < end <= self.nodes_len:
            raise VaultFormatError(f"index node table entry {number} is corrupt")
        return start, end

    def node_bytes(self, number: int) -> bytes:
        start, end = self.node_span(number)
        return bytes(self.buf[self.nodes_start + start : self.nodes_start + end])

    def table_offsets(self) -> list[int]:
        """Every node's offset (a full verification reads them all)."""
        raw = self.buf[self.table_start : self.table_start + 8 * self.header.index.nodes]
        return [v for (v,) in OFFSET.iter_unpack(raw)]


def parse(buf: Buffer) -> VaultFile:
    """Read a v2 file's header and body; the index stays in ``buf`` (§2).

    :raises VaultFormatError: naming what is wrong (magic, version, lengths, CBOR, header fields).
    """
    if version_of(buf) != VERSION:
        raise VaultFormatError("not a version 2 wallet.dat")
    (_, _, header_len) = PREFIX.unpack(buf[0 : PREFIX.size])
    start = PREFIX.size
    end = start + header_len
    if header_len > MAX_HEADER_LEN or end + MAC_LEN + SIG_LEN > len(buf):
        raise VaultFormatError("file is truncated or its header length is corrupt")
    header_bytes = buf[start:end]
    header = VaultHeader.from_cbor_map(decode_canonical(header_bytes, "header"))
    index = header.index
    body_start = end + MAC_LEN + SIG_LEN
    nodes_start = body_start + header.body_len
    table_start = len(buf) - 8 * index.nodes
    if header.body_len < GCM_TAG_LEN:
        raise VaultFormatError(f"header body_len {header.body_len} is shorter than a GCM tag")
    if index.nodes < 1 or index.root_node >= index.nodes:
        raise VaultFormatError(f"header index names root node {index.root_node} of {index.nodes}")
    if table_start - nodes_start < index.nodes:
        raise VaultFormatError("file is truncated: its index does not fit the header's lengths")
    return VaultFile(
        header=header,
        header_bytes=header_bytes,
        header_mac=buf[end : end + MAC_LEN],
        header_sig=buf[end + MAC_LEN : body_start],
        body=buf[body_start:nodes_start],
        buf=buf,
        nodes_start=nodes_start,
        table_start=table_start,
    )


def prefix_v2(header_bytes: bytes) -> bytes:
    return PREFIX.pack(MAGIC, VERSION, len(header_bytes)) + header_bytes


# --- index nodes (§10.1) --------------------------------------------------------------------------
#: A leaf row in the file: the seven public fields of §3.2, then the sealed secret entry (§10.2).
Row = list[Any]
#: An internal node's entry: [first signatureId under the child, child node number, child hash].
Entry = list[Any]


def row_of(row: Row) -> WalletRow:
    return WalletRow(*row[:7])


def encode_leaf(rows: list[Row]) -> bytes:
    return encode_canonical([LEAF, rows])


def encode_internal(entries: list[Entry]) -> bytes:
    return encode_canonical([INTERNAL, entries])


def decode_node(data: bytes, number: int) -> tuple[int, list[Any]]:
    """``(LEAF, rows)`` or ``(INTERNAL, entries)``, checked field by field (§10.1).

    :raises VaultFormatError: not canonical CBOR, an unknown kind, a mistyped field, too many or no
        items, keys not strictly increasing.
    """
    what = f"index node {number}"
    node = decode_canonical(data, what)
    if not (isinstance(node, list) and len(node) == 2 and type(node[0]) is int and node[0] in (LEAF, INTERNAL)):
        raise VaultFormatError(f"{what} is not a [kind, items] pair of a known kind")
    kind, items = node
    if not isinstance(items, list):
        raise VaultFormatError(f"{what} items must be a list")
    if kind == LEAF:
        _check_rows(items, what)
    else:
        _check_entries(items, what)
    return kind, items


def _check_rows(rows: list[Any], what: str) -> None:
    if len(rows) > LEAF_MAX:
        raise VaultFormatError(f"{what} holds {len(rows)} rows (at most {LEAF_MAX})")
    width = len(WALLET_FIELDS) + 1
    previous: str | None = None
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise VaultFormatError(f"{what} row {i} must be an array of {width} fields")
        check_wallet_rows([row[:-1]], f"{what} row {i}")
        if not isinstance(row[-1], bytes) or len(row[-1]) < MIN_ENTRY_LEN:
            raise VaultFormatError(f"{what} row {i} has no well-formed sealed entry")
        if previous is not None and not previous < row[0]:
            raise VaultFormatError(f"{what} rows are not in strictly increasing signatureId order")
        previous = row[0]


def _check_entries(entries: list[Any], what: str) -> None:
    if not 1 <= len(entries) <= NODE_MAX:
        raise VaultFormatError(f"{what} has {len(entries)} children (1 to {NODE_MAX})")
    previous: str | None = None
    for i, entry in enumerate(entries):
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], int)
            and not isinstance(entry[1], bool)
            and entry[1] >= 0
            and isinstance(entry[2], bytes)
            and len(entry[2]) == HASH_LEN
        ):
            raise VaultFormatError(f"{what} child {i} must be [text, uint, bytes(32)]")
        if previous is not None and not previous < entry[0]:
            raise VaultFormatError(f"{what} children are not in strictly increasing key order")
        previous = entry[0]


# --- legacy version 1 (appendix A) ---------------------------------------------------------------------
@dataclass(frozen=True)
class V1File:
    """The four parts of a legacy v1 wallet.dat, with the header (and its wallet rows) decoded."""

    header: VaultHeader
    rows: tuple[WalletRow, ...]
    header_bytes: bytes
    header_mac: bytes
    header_sig: bytes
    body: bytes

    @property
    def prefix(self) -> bytes:
        return PREFIX.pack(MAGIC, VERSION_V1, len(self.header_bytes)) + self.header_bytes


def serialise_v1(header_bytes: bytes, header_mac: bytes, header_sig: bytes, body: bytes) -> bytes:
    """A v1 file from its parts (tests build tampered legacy files with it; the agent never writes v1)."""
    if len(header_mac) != MAC_LEN or len(header_sig) != SIG_LEN:
        raise ValueError("bad MAC or signature length")
    return PREFIX.pack(MAGIC, VERSION_V1, len(header_bytes)) + header_bytes + header_mac + header_sig + body


def split_v1(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Cut a v1 file into (header_bytes, mac, sig, body) without decoding anything."""
    if version_of(data) != VERSION_V1:
        raise VaultFormatError("not a version 1 wallet.dat")
    (_, _, header_len) = PREFIX.unpack_from(data)
    start = PREFIX.size
    end = start + header_len
    if header_len > MAX_HEADER_LEN or end + MAC_LEN + SIG_LEN + GCM_TAG_LEN > len(data):
        raise VaultFormatError("file is truncated or its header length is corrupt")
    return (
        data[start:end],
        data[end : end + MAC_LEN],
        data[end + MAC_LEN : end + MAC_LEN + SIG_LEN],
        data[end + MAC_LEN + SIG_LEN :],
    )


def parse_v1(data: bytes) -> V1File:
    header_bytes, header_mac, header_sig, body = split_v1(data)
    header, rows = VaultHeader.from_v1_cbor_map(decode_canonical(header_bytes, "header"))
    return V1File(header, rows, header_bytes, header_mac, header_sig, body)
