"""Well-known ERC-20 contracts per EVM network, from the bundled ``tokens.json``.

An approver reads a token amount in the token's own units only when we *know* its decimals: a
contract's ``decimals()`` and ``symbol()`` are whatever its deployer wrote (a fake "USDT" with 0
decimals would turn 1,000,000 base units into "1000000 USDT"), and a chain module never touches the
network anyway. So the labels come from this short, reviewed list keyed by chain id and address;
any other contract is shown as an unknown token in raw base units.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["KnownToken", "known_token", "known_tokens"]


@dataclass(frozen=True)
class KnownToken:
    chain_id: int
    #: EIP-55 address with ``0x``.
    address: str
    symbol: str
    decimals: int
    name: str


@cache
def known_tokens() -> dict[tuple[int, str], KnownToken]:
    """Every bundled token, keyed by (chain id, lower-case 0x address)."""
    raw: Any = json.loads(resources.files("agent.chains").joinpath("tokens.json").read_text("utf-8"))
    out: dict[tuple[int, str], KnownToken] = {}
    for chain_id, entries in raw["networks"].items():
        for e in entries:
            token = KnownToken(int(chain_id), str(e["address"]), str(e["symbol"]), int(e["decimals"]), str(e["name"]))
            out[(token.chain_id, token.address.lower())] = token
    return out


def known_token(chain_id: int | None, address: str) -> KnownToken | None:
    """The bundled entry for ``address`` (any case, ``0x``) on ``chain_id``, or None if not listed."""
    if chain_id is None:
        return None
    return known_tokens().get((chain_id, "0x" + address.lower()[-40:]))
