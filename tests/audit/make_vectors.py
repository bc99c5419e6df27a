"""Regenerate tests/audit/vectors/rows-v1.json from the reference: .venv/bin/python -m tests.audit.make_vectors"""

from __future__ import annotations

import json
from pathlib import Path

from tests.audit import reference

OUT = Path(__file__).parent / "vectors" / "rows-v1.json"

ROWS = [
    {
        "seq": 1,
        "ts": 1750000000,
        "kind": "request",
        "request_id": "101112131415161718191a1b1c1d1e1f",
        "actor": "api",
        "payload": {
            "chain": "BTC",
            "network": "testnet",
            "unsigned_tx": "70736274ff01",
            "outputs": [{"address": "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "amount": "150000", "asset": "BTC"}],
        },
    },
    {
        "seq": 2,
        "ts": 1750000060,
        "kind": "approval",
        "request_id": "101112131415161718191a1b1c1d1e1f",
        "actor": "alice",
        "payload": {"digest": "00" * 32, "sign_count": 17, "user_verified": True, "note": "caf\u00e9"},
    },
    {
        "seq": 3,
        "ts": 1750000090,
        "kind": "alert",
        "request_id": None,
        "actor": None,
        "payload": {"alert": "near-limit", "percent": 84, "detail": None},
    },
]


def build() -> dict[str, object]:
    rows = []
    prev = bytes(32)
    for row, (data, digest) in zip(ROWS, reference.chain(ROWS), strict=True):
        rows.append({"row": row, "prev_hash": prev.hex(), "row_bytes": data.decode("ascii"), "hash": digest.hex()})
        prev = digest
    return {"spec": "docs/audit-log.md", "expect": "success", "rows": rows}


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
