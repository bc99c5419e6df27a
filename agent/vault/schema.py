"""Exact shape of the header, body and index-node maps (docs/wallet-format.md §3, §4.1, §10.1, legacy appendix A).

A tiny declarative checker instead of a schema library: the header is small, its rules are exact
(types *and* byte lengths), and the error must quote the path of the offending field. These checks
are what :meth:`agent.vault.records.VaultHeader.from_cbor_map` runs before it builds the records.
"""

from __future__ import annotations

from typing import Any

from agent.errors import VaultFormatError

Spec = Any  # a type, a (bytes, length) pair, a dict spec, a [spec] list spec, or the wallet rows


ANY_MAP = dict  # free-form map (backend-specific slot fields); checked by the backend

SLOT: dict[str, Spec] = {
    "slot_id": (bytes, 16),
    "operator_id": (bytes, 16),
    "kind": str,
    "label": str,
    "simulated": bool,
    "enrolled_at": int,
    "public": ANY_MAP,
    "kdf_salt": bytes,
    "nonce": (bytes, 12),
    "wrapped": bytes,
}

OPERATOR: dict[str, Spec] = {"operator_id": (bytes, 16), "name": str}

#: A public wallet index row is a fixed-order array, not a map: a 25,000-wallet index then decodes
#: and checks about four times faster (docs/wallet-format.md §3.2).
WALLET_FIELDS = ("signatureId", "type", "chain", "testnet", "created_at", "xpub", "address")
_WALLET_TYPES: tuple[type | tuple[type, ...], ...] = (str, str, str, bool, int, (str, type(None)), (str, type(None)))


class _Rows:
    """Marker spec for the wallet index; checked by the tight loop in :func:`check_wallet_rows`."""


RECOVERY: dict[str, Spec] = {
    "kind": str,
    "threshold": int,
    "shares": int,
    "nonce": (bytes, 12),
    "wrapped": bytes,
}

#: The v2 header's index map (§3.3): where the authenticated wallet index starts and what it holds.
INDEX: dict[str, Spec] = {
    "root": (bytes, 32),
    "root_node": int,
    "nodes": int,
    "wallets": int,
}

#: What both header versions hold, in order.
_HEADER_COMMON: dict[str, Spec] = {
    "vault_id": (bytes, 16),
    "generation": int,
    "created_at": int,
    "updated_at": int,
    "rp_id": str,
    "quorum": int,
    "operators": [OPERATOR],
    "slots": [SLOT],
    "recovery": RECOVERY,
    "signing_key": (bytes, 32),
    "body_nonce": (bytes, 12),
}

HEADER_V2: dict[str, Spec] = {
    **_HEADER_COMMON,
    "body_len": int,
    "simulated": bool,
    "index": INDEX,
    #: Custody policy (docs/policy.md); shape checked by ``agent.policy.Policy.from_dict``.
    "policy": ANY_MAP,
}

#: The legacy v1 header (docs/wallet-format.md appendix A): the wallet rows sit in the header itself.
HEADER: dict[str, Spec] = {
    **_HEADER_COMMON,
    "simulated": bool,
    "wallets": _Rows(),
    #: Custody policy (docs/policy.md); shape checked by ``agent.policy.Policy.from_dict``.
    "policy": ANY_MAP,
}

BODY: dict[str, Spec] = {
    "shares": dict,
    "entries": dict,
}

#: The v2 body holds only the operators' shares: wallet secrets live in the index (§10.2).
BODY_V2: dict[str, Spec] = {"shares": dict}


def check_wallet_rows(rows: Any, path: str) -> None:
    if not isinstance(rows, list):
        raise VaultFormatError(f"header field {path} must be a list")
    width = len(WALLET_FIELDS)
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise VaultFormatError(f"header field {path}[{i}] must be an array of {width} fields")
        for name, kind, value in zip(WALLET_FIELDS, _WALLET_TYPES, row, strict=True):
            if not isinstance(value, kind) or (
                isinstance(value, int) and kind is int and (isinstance(value, bool) or value < 0)
            ):
                raise VaultFormatError(f"header field {path}[{i}].{name} has the wrong type")


def check(value: Any, spec: Spec, path: str) -> None:
    """:raises VaultFormatError: ``value`` does not match ``spec``, naming the field at ``path``."""
    if isinstance(spec, _Rows):
        check_wallet_rows(value, path)
        return
    if isinstance(spec, tuple):
        kind, length = spec
        if not isinstance(value, kind) or len(value) != length:
            raise VaultFormatError(f"header field {path} must be {length} bytes")
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise VaultFormatError(f"header field {path} must be a list")
        for i, item in enumerate(value):
            check(item, spec[0], f"{path}[{i}]")
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise VaultFormatError(f"header field {path} must be a map")
        unknown = set(value) - set(spec)
        if unknown:
            raise VaultFormatError(f"header field {path} has unknown keys {sorted(map(str, unknown))}")
        for key, sub in spec.items():
            if key not in value:
                raise VaultFormatError(f"header field {path}.{key} is missing")
            check(value[key], sub, f"{path}.{key}")
        return
    # bool is an int subclass: keep them apart so `true` never passes as a count.
    if spec is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise VaultFormatError(f"header field {path} must be an unsigned integer")
    if not isinstance(value, spec):
        raise VaultFormatError(f"header field {path} must be {spec.__name__}")


def check_header(header: Any, spec: dict[str, Spec] = HEADER) -> None:
    """:raises VaultFormatError: ``header`` is not a header of the shape ``spec`` (v1 by default)."""
    check(header, spec, "header")
    n = len(header["operators"])
    if not 1 <= header["quorum"] <= n:
        raise VaultFormatError(f"header quorum {header['quorum']} is impossible with {n} operators")
    ids = {op["operator_id"] for op in header["operators"]}
    if len(ids) != n:
        raise VaultFormatError("header lists an operator twice")
    for slot in header["slots"]:
        if slot["operator_id"] not in ids:
            raise VaultFormatError(f"header slot {slot['label']!r} belongs to no operator")


def check_body(body: Any, spec: dict[str, Spec] = BODY) -> None:
    check(body, spec, "body")
