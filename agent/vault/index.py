"""The v2 wallet index: a Merkle B+-tree of wallet rows under the signed header (docs/wallet-format.md §10).

Leaves hold up to 64 rows (public row + that wallet's sealed entry) sorted by signatureId; internal
nodes hold up to 64 ``[first key, child number, child hash]`` entries. The header carries the root's
hash, so a lookup is: header check, then one node per level, each hashed and compared with the
hash its parent (or the header) recorded, each binary-searched. Nothing else of the file is read.

Node numbers are stable: a change rewrites only the nodes on the path from the root to the changed
leaves (plus a split's new node), and every other node is copied by offset with its hash reused
from its parent, which was itself authenticated. So adding a wallet hashes O(log n) nodes. A node
whose number is freed (a leaf emptied by removals) takes the highest-numbered node in its place, so
numbers stay 0..N-1 and the table has no holes.

Integrity failures (a node whose bytes do not hash to what its parent says) raise the opaque
:class:`~agent.errors.VaultIntegrityError`; a node that is well authenticated but breaks a
structural rule raises :class:`~agent.errors.VaultFormatError`.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from agent.errors import UsageError, VaultFormatError, VaultIntegrityError
from agent.vault import format as fmt
from agent.vault.primitives import DOMAIN
from agent.vault.records import IndexRoot

_NODE_DOMAIN = DOMAIN + b"index-node\0"

Node = list[Any]  # [kind, items], as decoded; mutable while being edited


def node_hash(data: bytes) -> bytes:
    """SHA-256 of a node's bytes under the index domain (§10.1)."""
    return hashlib.sha256(_NODE_DOMAIN + data).digest()


def _encode(node: Node) -> bytes:
    return fmt.encode_leaf(node[1]) if node[0] == fmt.LEAF else fmt.encode_internal(node[1])


class IndexReader:
    """Authenticated, read-only access to the index of one parsed v2 file."""

    def __init__(self, vf: fmt.VaultFile) -> None:
        self.file = vf
        self.root = vf.header.index

    def load(self, number: int, expect: bytes) -> Node:
        """Node ``number``, after checking its bytes hash to ``expect`` (from its parent or the header)."""
        data = self.file.node_bytes(number)
        if node_hash(data) != expect:
            raise VaultIntegrityError()
        kind, items = fmt.decode_node(data, number)
        return [kind, items]

    def raw(self, number: int) -> bytes:
        """Node ``number``'s bytes, unchecked (only to learn a node's key before its parent is found)."""
        return self.file.node_bytes(number)

    def verify(self) -> None:
        """Check every node, every hash and every structural rule of §10.1 (O(n): ``vault verify``).

        :raises VaultIntegrityError: a node does not hash to what its parent records.
        :raises VaultFormatError: the table, the tree's shape or the key order is wrong.
        """
        offsets = self.file.table_offsets()
        ends = [*offsets[1:], self.file.nodes_len]
        if offsets[0] != 0 or any(not a < b for a, b in zip(offsets, ends, strict=True)):
            raise VaultFormatError("the index node table is not strictly increasing from 0")
        count = self.root.nodes
        seen = bytearray(count)
        state: dict[str, Any] = {"rows": 0, "leaf_depth": None, "last": None}

        def visit(number: int, expect: bytes, depth: int, first_key: str | None) -> None:
            if depth > fmt.MAX_DEPTH or not 0 <= number < count:
                raise VaultFormatError(f"index node {number} is out of range or too deep")
            if seen[number]:
                raise VaultFormatError(f"index node {number} is reached twice")
            seen[number] = 1
            kind, items = self.load(number, expect)
            if first_key is not None and (not items or items[0][0] != first_key):
                raise VaultFormatError(f"index node {number} does not start with the key its parent records")
            if kind == fmt.INTERNAL:
                if depth == 0 and len(items) < 2:
                    raise VaultFormatError("the index root has a single child")
                for key, child, child_hash in items:
                    visit(child, child_hash, depth + 1, key)
                return
            if state["leaf_depth"] is None:
                state["leaf_depth"] = depth
            elif state["leaf_depth"] != depth:
                raise VaultFormatError("index leaves are not all at the same depth")
            if not items and depth != 0:
                raise VaultFormatError(f"index leaf {number} is empty")
            for row in items:
                if state["last"] is not None and not state["last"] < row[0]:
                    raise VaultFormatError("index rows are not in strictly increasing signatureId order")
                state["last"] = row[0]
            state["rows"] += len(items)

        visit(self.root.root_node, self.root.root, 0, None)
        if not all(seen):
            raise VaultFormatError("the index holds nodes that the tree does not reach")
        if state["rows"] != self.root.wallets:
            raise VaultFormatError(f"the index holds {state['rows']} wallets, the header says {self.root.wallets}")


@dataclass(frozen=True)
class Built:
    """What a save writes after the header and body: the index's root and its nodes in number order.

    Each node is either new bytes, or ``(offset, length)``: bytes copied unchanged from the base file.
    """

    root: IndexRoot
    nodes: list[bytes | tuple[int, int]]

    def table(self) -> bytes:
        out = bytearray()
        offset = 0
        for node in self.nodes:
            out += fmt.OFFSET.pack(offset)
            offset += len(node) if isinstance(node, bytes) else node[1]
        return bytes(out)


class IndexEditor:
    """Copy-on-write changes over a base index (or a new, empty one).

    Nodes come from, in order: ``mem`` (decoded, changed: re-encoded at :meth:`build`), ``fresh``
    (encoded, new: written as they are), or the base file (``origin`` maps a moved node's new
    number to its old one). A changed node's hash in its parent is ``None`` until :meth:`build`.
    """

    def __init__(self, base: IndexReader | None, *, leaf_max: int = fmt.LEAF_MAX, node_max: int = fmt.NODE_MAX) -> None:
        if not (2 <= leaf_max <= fmt.LEAF_MAX and 2 <= node_max <= fmt.NODE_MAX):
            raise ValueError("node limits out of range")
        self.base = base
        self.leaf_max, self.node_max = leaf_max, node_max
        self.mem: dict[int, Node] = {}
        self.fresh: dict[int, bytes] = {}
        self.origin: dict[int, int] = {}
        self.root_hash: bytes | None
        if base is None:
            self.root_no, self.root_hash, self.n, self.count = 0, None, 1, 0
            self.mem[0] = [fmt.LEAF, []]
        else:
            r = base.root
            self.root_no, self.root_hash, self.n, self.count = r.root_node, r.root, r.nodes, r.wallets

    @classmethod
    def bulk(
        cls, rows: Iterable[fmt.Row], *, leaf_max: int = fmt.LEAF_MAX, node_max: int = fmt.NODE_MAX
    ) -> IndexEditor:
        """A new index holding ``rows`` (sorted by signatureId, distinct), built bottom-up in one pass.

        Used to migrate a v1 vault and to build large vaults fast; rows are encoded as they come.
        """
        editor = cls(None, leaf_max=leaf_max, node_max=node_max)
        editor.mem.clear()
        level: list[tuple[str, int, bytes]] = []  # (first key, number, hash) of the level being built
        nodes: list[bytes] = []
        batch: list[fmt.Row] = []
        last: str | None = None
        count = 0

        def emit(data: bytes, first: str) -> None:
            level.append((first, len(nodes), node_hash(data)))
            nodes.append(data)

        for row in rows:
            if last is not None and not last < row[0]:
                raise UsageError(f"wallet {row[0]!r} is out of order or repeated")
            last = row[0]
            batch.append(row)
            count += 1
            if len(batch) == leaf_max:
                emit(fmt.encode_leaf(batch), batch[0][0])
                batch = []
        if batch or not nodes:
            emit(fmt.encode_leaf(batch), batch[0][0] if batch else "")
        while len(level) > 1:
            groups = -(-len(level) // node_max)
            size, extra = divmod(len(level), groups)
            below, level, at = level, [], 0
            for g in range(groups):
                part = below[at : at + size + (1 if g < extra else 0)]
                at += len(part)
                emit(fmt.encode_internal([[k, no, h] for k, no, h in part]), part[0][0])
        editor.fresh = dict(enumerate(nodes))
        editor.root_no, editor.root_hash, editor.n, editor.count = len(nodes) - 1, level[0][2], len(nodes), count
        return editor

    # --- reading --------------------------------------------------------------------------------
    def _get(self, number: int, expect: bytes | None) -> Node:
        node = self.mem.get(number)
        if node is not None:
            return node
        data = self.fresh.get(number)
        if data is not None:
            kind, items = fmt.decode_node(data, number)
            return [kind, items]
        if self.base is None or expect is None:
            raise VaultIntegrityError()
        return self.base.load(self.origin.get(number, number), expect)

    def find(self, key: str) -> fmt.Row | None:
        """The row of ``key``, or None: one node per level, each authenticated."""
        number, expect = self.root_no, self.root_hash
        for _ in range(fmt.MAX_DEPTH):
            kind, items = self._get(number, expect)
            if kind == fmt.LEAF:
                i = bisect_left([row[0] for row in items], key)
                return items[i] if i < len(items) and items[i][0] == key else None
            i = bisect_right([entry[0] for entry in items], key) - 1
            if i < 0:
                return None
            number, expect = items[i][1], items[i][2]
        raise VaultFormatError("the index is deeper than any valid index")

    def rows(self) -> Iterator[fmt.Row]:
        """Every row in signatureId order, streamed one leaf at a time."""
        stack: list[tuple[int, bytes | None, int]] = [(self.root_no, self.root_hash, 0)]
        while stack:
            number, expect, depth = stack.pop()
            if depth > fmt.MAX_DEPTH:
                raise VaultFormatError("the index is deeper than any valid index")
            kind, items = self._get(number, expect)
            if kind == fmt.LEAF:
                yield from items
            else:
                stack.extend((child, h, depth + 1) for _, child, h in reversed(items))

    # --- changing -------------------------------------------------------------------------------
    def _edit(self, number: int, expect: bytes | None) -> Node:
        """Node ``number`` as a changeable node in ``mem`` (its parent must mark its hash unknown)."""
        node = self.mem.get(number)
        if node is None:
            node = self._get(number, expect)
            self.mem[number] = node
            self.fresh.pop(number, None)
            self.origin.pop(number, None)
        return node

    def _path(self, key: str) -> list[tuple[int, Node, int]]:
        """Root-to-leaf path for ``key`` as (number, node, child index taken), every node made changeable."""
        path: list[tuple[int, Node, int]] = []
        number, expect = self.root_no, self.root_hash
        self.root_hash = None
        for _ in range(fmt.MAX_DEPTH):
            node = self._edit(number, expect)
            if node[0] == fmt.LEAF:
                path.append((number, node, -1))
                return path
            entries = node[1]
            i = max(bisect_right([entry[0] for entry in entries], key) - 1, 0)
            path.append((number, node, i))
            number, expect = entries[i][1], entries[i][2]
            entries[i][2] = None
        raise VaultFormatError("the index is deeper than any valid index")

    def insert(self, row: fmt.Row) -> None:
        """Add a row (its signatureId must be new: check with :meth:`find` first)."""
        key = row[0]
        path = self._path(key)
        leaf = path[-1][1]
        i = bisect_left([r[0] for r in leaf[1]], key)
        if i < len(leaf[1]) and leaf[1][i][0] == key:
            raise UsageError(f"a wallet {key} already exists")
        leaf[1].insert(i, row)
        self.count += 1
        for depth in range(len(path) - 1, -1, -1):
            number, node, _ = path[depth]
            limit = self.leaf_max if node[0] == fmt.LEAF else self.node_max
            sibling: tuple[str, int] | None = None
            if len(node[1]) > limit:
                half = len(node[1]) // 2
                new_no = self._new_number()
                self.mem[new_no] = [node[0], node[1][half:]]
                del node[1][half:]
                sibling = (self.mem[new_no][1][0][0], new_no)
            if depth == 0:
                if sibling is not None:  # the root split: a new root above both halves
                    root_no = self._new_number()
                    self.mem[root_no] = [fmt.INTERNAL, [[node[1][0][0], number, None], [sibling[0], sibling[1], None]]]
                    self.root_no = root_no
                break
            parent, at = path[depth - 1][1], path[depth - 1][2]
            parent[1][at][0] = node[1][0][0]
            if sibling is not None:
                parent[1].insert(at + 1, [sibling[0], sibling[1], None])

    def remove(self, key: str) -> fmt.Row:
        """Delete the row of ``key``; emptied nodes leave the tree and the numbering stays dense.

        :raises UsageError: no such row.
        """
        if self.find(key) is None:
            raise UsageError(f"no wallet with signatureId {key!r} in this vault")
        path = self._path(key)
        leaf = path[-1][1]
        i = bisect_left([r[0] for r in leaf[1]], key)
        row: fmt.Row = leaf[1].pop(i)
        self.count -= 1
        freed: list[int] = []
        for depth in range(len(path) - 1, 0, -1):
            number, node, _ = path[depth]
            parent, at = path[depth - 1][1], path[depth - 1][2]
            if node[1]:
                parent[1][at][0] = node[1][0][0]
            else:
                del parent[1][at]
                freed.append(number)
        root = self.mem[self.root_no]
        if root[0] == fmt.INTERNAL and not root[1]:
            root[0] = fmt.LEAF
        while root[0] == fmt.INTERNAL and len(root[1]) == 1:
            freed.append(self.root_no)
            _, self.root_no, self.root_hash = root[1][0]
            root = self._get(self.root_no, self.root_hash)
        for number in freed:
            self.mem.pop(number, None)
            self.fresh.pop(number, None)
            self.origin.pop(number, None)
        for number in sorted(freed, reverse=True):
            self._compact(number)
        return row

    def _new_number(self) -> int:
        self.n += 1
        return self.n - 1

    def _compact(self, freed: int) -> None:
        """Give number ``freed`` to the highest-numbered node, so numbers stay 0..n-1."""
        last = self.n - 1
        self.n -= 1
        if freed == last:
            return
        if last == self.root_no:
            self.root_no = freed
        else:
            key = self._first_key(last)
            path = self._path(key)
            for _, node, at in path:
                if node[0] == fmt.INTERNAL and node[1][at][1] == last:
                    node[1][at][1] = freed
                    break
            else:
                raise VaultIntegrityError()
        if last in self.mem:
            self.mem[freed] = self.mem.pop(last)
        elif last in self.fresh:
            self.fresh[freed] = self.fresh.pop(last)
        else:
            self.origin[freed] = self.origin.pop(last, last)

    def _first_key(self, number: int) -> str:
        node = self.mem.get(number)
        if node is None:
            data = self.fresh.get(number)
            if data is None:
                if self.base is None:
                    raise VaultIntegrityError()
                data = self.base.raw(self.origin.get(number, number))
            node = list(fmt.decode_node(data, number))
        if not node[1]:
            raise VaultIntegrityError()
        key: str = node[1][0][0]
        return key

    # --- writing --------------------------------------------------------------------------------
    def build(self) -> Built:
        """Encode and hash the changed nodes (bottom-up), and list every node for the new file."""
        encoded: dict[int, bytes] = {}

        def finish(number: int) -> bytes:
            node = self.mem[number]
            if node[0] == fmt.INTERNAL:
                for entry in node[1]:
                    if entry[2] is None:
                        entry[2] = finish(entry[1])
            data = _encode(node)
            encoded[number] = data
            return node_hash(data)

        if self.root_hash is None:
            self.root_hash = finish(self.root_no)
        if set(encoded) != set(self.mem):
            raise RuntimeError("index editor lost track of a changed node")
        spans: list[int] = []
        if self.base is not None and len(encoded) + len(self.fresh) < self.n:
            spans = [*self.base.file.table_offsets(), self.base.file.nodes_len]
            if spans[0] != 0 or any(not a < b for a, b in pairwise(spans)):
                raise VaultFormatError("the index node table is not strictly increasing from 0")
        nodes: list[bytes | tuple[int, int]] = []
        for number in range(self.n):
            data = encoded.get(number) or self.fresh.get(number)
            if data is not None:
                nodes.append(data)
                continue
            old = self.origin.get(number, number)
            assert self.base is not None
            start = self.base.file.nodes_start + spans[old]
            nodes.append((start, spans[old + 1] - spans[old]))
        root = IndexRoot(self.root_hash, self.root_no, self.n, self.count)
        return Built(root, nodes)
