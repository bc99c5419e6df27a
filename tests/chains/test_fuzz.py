"""Random and mutated bytes into every decoder: only clean errors (ChainError / UsageError) come out."""

from __future__ import annotations

import base64
import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.chains import get_chain
from agent.chains.utxo import AddressKind
from agent.errors import ChainError, UsageError
from tests.chains.utxo_helpers import make_coins

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAGIC = b"psbt\xff"


def _valid_psbt() -> bytes:
    btc = get_chain("BTC")
    coins = make_coins(btc, [(0, AddressKind.P2WPKH, 100_000), (1, AddressKind.P2PKH, 50_000)])  # type: ignore[arg-type]
    psbt = btc.build_psbt(
        [c.utxo for c in coins],
        [("bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu", 149_000)],  # type: ignore[attr-defined]
        testnet=False,
    )
    return base64.b64decode(psbt)


VALID_PSBT = _valid_psbt()
VALID_EVM = bytes.fromhex(
    get_chain("ETH").build_transfer(  # type: ignore[attr-defined]
        to="0x" + "35" * 20, value=1, nonce=0, chain_id=1, max_fee_per_gas=10**9, data=b"\xa9\x05\x9c\xbb" + bytes(64)
    )[2:]
)


def _only_clean_errors(chain_name: str, data: bytes | str) -> None:
    chain = get_chain(chain_name)
    with contextlib.suppress(ChainError, UsageError):
        chain.decode(data, testnet=False)


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_utxo(data: bytes) -> None:
    for name in ("BTC", "BCH"):
        _only_clean_errors(name, data)
        _only_clean_errors(name, MAGIC + data)


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_evm(data: bytes) -> None:
    _only_clean_errors("ETH", data)
    _only_clean_errors("ETH", b"\x02" + data)
    _only_clean_errors("ONE", data)


@SETTINGS
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    _only_clean_errors("BTC", text)
    _only_clean_errors("ETH", text)


@SETTINGS
@given(st.data())
def test_mutated_valid_psbt_and_evm_tx(data: st.DataObject) -> None:
    for name, valid in (("BTC", VALID_PSBT), ("ETH", VALID_EVM)):
        buf = bytearray(valid)
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(buf) - 1))
            op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
            if op == "flip":
                buf[pos] ^= 1 << data.draw(st.integers(0, 7))
            elif op == "cut":
                del buf[pos : pos + data.draw(st.integers(1, 8))]
            else:
                buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
            if not buf:
                break
        _only_clean_errors(name, bytes(buf))
