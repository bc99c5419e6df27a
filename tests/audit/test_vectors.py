"""docs/audit-log.md vectors: 3 fixed rows -> exact canonical bytes -> exact chained hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.audit import GENESIS, AuditLog, canonical_json, row_bytes, row_hash
from tests.audit import reference

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rows-v1.json").read_text())
ROWS = VECTORS["rows"]


def test_reference_reproduces_the_vectors() -> None:
    for vector, (data, digest) in zip(ROWS, reference.chain([v["row"] for v in ROWS]), strict=True):
        assert data.decode("ascii") == vector["row_bytes"]
        assert digest.hex() == vector["hash"]


@pytest.mark.parametrize("index", range(len(ROWS)))
def test_product_functions_reproduce_the_vectors(index: int) -> None:
    vector = ROWS[index]
    row = vector["row"]
    data = row_bytes(row["seq"], row["ts"], row["kind"], row["request_id"], row["actor"], row["payload"])
    assert data.decode("ascii") == vector["row_bytes"]
    assert row_hash(bytes.fromhex(vector["prev_hash"]), data).hex() == vector["hash"]
    assert index > 0 or vector["prev_hash"] == GENESIS.hex()


def test_the_log_stores_the_vector_rows_byte_for_byte(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "state")
    for vector in ROWS:
        row = vector["row"]
        stored = log.append(row["kind"], row["payload"], request_id=row["request_id"], actor=row["actor"], ts=row["ts"])
        assert stored.seq == row["seq"] and stored.hash.hex() == vector["hash"]
        assert stored.payload_text == canonical_json(row["payload"])
    pin = json.loads(log.head_path.read_text())
    assert pin == {"v": 1, "seq": 3, "hash": ROWS[-1]["hash"]}
    assert log.verify().ok
