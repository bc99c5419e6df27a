"""EVM family offline: published signing vectors, ERC-20 decoding, chain ids and refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from agent.chains import Owned, TxKind, get_chain
from agent.chains.evm import EvmChain, erc20_approve_data, erc20_transfer_data, keccak256, unsigned_bytes
from agent.errors import ChainError, UsageError

VECTORS = json.loads((Path(__file__).parent / "vectors" / "evm.json").read_text())
ABANDON = "abandon " * 11 + "about"
GWEI = 10**9
TO = "0x3535353535353535353535353535353535353535"


def evm(name: str = "ETH") -> EvmChain:
    chain = get_chain(name)
    assert isinstance(chain, EvmChain)
    return chain


def key(chain: EvmChain, index: int = 0, testnet: bool = False) -> bytes:
    return bytes(chain.private_key_from_mnemonic(ABANDON, index, testnet=testnet))


def test_eip155_vector() -> None:
    v = VECTORS["eip155"]
    chain = evm()
    unsigned = unsigned_bytes(v["tx"])
    assert "0x" + unsigned.hex() == v["signing_data"]
    assert "0x" + keccak256(unsigned).hex() == v["signing_hash"]
    signed = chain.sign(v["tx"], [bytes.fromhex(v["private_key"][2:])], testnet=False)
    assert signed.raw_hex == v["signed"]
    assert signed.sender == v["sender"]
    s = signed.summary
    assert (s.tx_type, s.chain_id, s.nonce, s.fee, s.kind) == ("legacy", 1, 9, 21000 * 20 * GWEI, TxKind.TRANSFER)
    assert s.outputs[0].address == "0x" + "35" * 20 and s.outputs[0].amount == 10**18


@pytest.mark.parametrize("case", VECTORS["eip1559"]["cases"], ids=lambda c: str(c["nonce"]))
def test_eip1559_vectors(case: dict[str, Any]) -> None:
    import rlp

    v = VECTORS["eip1559"]
    chain = dataclasses.replace(evm(), mainnet_ids=(v["chain_id"],))  # the vectors use chain id 7822
    tx = {
        "type": 2,
        "chainId": v["chain_id"],
        "nonce": case["nonce"],
        "value": case["value"],
        "gas": case["gasLimit"],
        "maxPriorityFeePerGas": case["maxInclusionFeePerGas"],
        "maxFeePerGas": case["maxFeePerGas"],
        "to": case["to"],
        "data": "0x",
    }
    signed = chain.sign(tx, [bytes.fromhex(v["private_key"][2:])], testnet=False)
    assert signed.raw == rlp.decode(bytes.fromhex(case["signedTransactionRLP"][2:]))
    assert signed.summary.tx_type == "eip1559"
    assert signed.summary.fee == case["gasLimit"] * case["maxFeePerGas"]


def test_erc20_selectors_and_calldata() -> None:
    from eth_abi import encode

    for sig, sel in VECTORS["erc20"]["selectors"].items():
        assert keccak256(sig.encode())[:4].hex() == sel
    to = bytes.fromhex("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")
    assert erc20_transfer_data(to, 10**18) == bytes.fromhex("a9059cbb") + encode(
        ["address", "uint256"], ["0x" + to.hex(), 10**18]
    )
    assert erc20_approve_data(to, 2**256 - 1)[-32:] == b"\xff" * 32


def test_erc20_transfer_decoded_to_the_real_recipient() -> None:
    chain = evm()
    token = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
    recipient = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    tx = chain.build_erc20_transfer(
        token=token.lower(),
        to=recipient.upper().replace("0X", "0x"),
        amount=12345,
        nonce=3,
        chain_id=1,
        max_fee_per_gas=30 * GWEI,
        max_priority_fee_per_gas=GWEI,
    )
    s = chain.decode(tx, testnet=False)
    assert s.kind is TxKind.TOKEN_TRANSFER and s.asset == token
    assert s.token is not None and (s.token.method, s.token.token, s.token.recipient, s.token.amount) == (
        "transfer",
        token,
        recipient,
        12345,
    )
    assert s.outputs[0].address == token and s.outputs[0].amount == 0
    j = s.to_json()
    assert j["token"] == {
        "method": "transfer",
        "token": token,
        "recipient": recipient,
        "amount": "12345",
        # USDT on mainnet is in the bundled list: 6 decimals, so 12345 base units are 0.012345 USDT.
        "known": True,
        "symbol": "USDT",
        "decimals": 6,
        "amountHuman": "0.012345",
    }
    assert j["coin"] == {"symbol": "ETH", "decimals": 18, "baseUnit": "wei"}
    assert j["feeHuman"] == "0.003" and j["fee"] == str(100_000 * 30 * GWEI)
    assert j["feeBase"] is None and j["highFee"] is False  # a fee in ETH has no price in USDT to compare with
    assert json.loads(json.dumps(j)) == j


def test_approve_transfer_from_and_unknown_calldata() -> None:
    chain = evm("BSC")
    spender = "0x" + "ab" * 20
    approve = chain.build_transfer(
        to=TO,
        value=0,
        nonce=0,
        chain_id=56,
        gas=60_000,
        gas_price=3 * GWEI,
        data=erc20_approve_data(bytes.fromhex("ab" * 20), 2**256 - 1),
    )
    s = chain.decode(approve, testnet=False)
    assert s.kind is TxKind.TOKEN_APPROVE and s.token is not None
    assert s.token.recipient.lower() == spender and s.token.amount == 2**256 - 1
    tf = bytes.fromhex("23b872dd") + bytes(12) + b"\x11" * 20 + bytes(12) + b"\x22" * 20 + (5).to_bytes(32, "big")
    s = chain.decode(
        chain.build_transfer(to=TO, value=0, nonce=0, chain_id=56, gas=90_000, gas_price=GWEI, data=tf), testnet=False
    )
    assert s.kind is TxKind.TOKEN_TRANSFER_FROM and s.token is not None
    assert (s.token.sender or "").lower() == "0x" + "11" * 20 and s.token.recipient.lower() == "0x" + "22" * 20
    # Trailing bytes, dirty address padding, or another selector: not an ERC-20 call we vouch for.
    for data in (
        erc20_transfer_data(b"\x01" * 20, 1) + b"\x00",
        b"\xa9\x05\x9c\xbb" + b"\x01" * 64,
        bytes.fromhex("12345678") + bytes(64),
    ):
        s = chain.decode(
            chain.build_transfer(to=TO, value=0, nonce=0, chain_id=56, gas=90_000, gas_price=GWEI, data=data),
            testnet=False,
        )
        assert s.kind is TxKind.CONTRACT_CALL and s.token is None and s.data == "0x" + data.hex()
        assert any("unknown calldata" in w for w in s.warnings)


def test_contract_creation_and_change_flag() -> None:
    chain = evm()
    s = chain.decode({"chainId": 1, "nonce": 0, "gas": 500_000, "maxFeePerGas": GWEI, "data": "0x6000"}, testnet=False)
    assert s.kind is TxKind.CONTRACT_CREATION and s.outputs[0].address is None
    own = chain.address_from_private_key(key(chain, 1), testnet=False)
    tx = chain.build_transfer(to=own, value=5, nonce=0, chain_id=1, max_fee_per_gas=GWEI)
    assert chain.decode(tx, testnet=False, owned=Owned(addresses=frozenset({own.lower()}))).outputs[0].is_change


@pytest.mark.parametrize(
    ("name", "mainnet", "testnet"),
    [
        ("ETH", 1, 11155111),
        ("BSC", 56, 97),
        ("MATIC", 137, 80002),
        ("CELO", 42220, 44787),
        ("KLAY", 8217, 1001),
        ("ONE", 1666600000, 1666700000),
        ("XDC", 50, 51),
        ("KCS", 321, 322),
    ],
)
def test_chain_ids_per_network(name: str, mainnet: int, testnet: int) -> None:
    chain = evm(name)
    k = key(chain)
    for cid, is_test in ((mainnet, False), (testnet, True)):
        tx = chain.build_transfer(to=TO, value=1, nonce=0, chain_id=cid, gas_price=GWEI)
        signed = chain.sign(tx, [k], testnet=is_test)
        assert signed.summary.chain_id == cid and signed.sender == chain.address_from_private_key(k, testnet=False)
        with pytest.raises(ChainError, match="unknown chain id"):
            chain.decode(tx, testnet=not is_test)


def test_legacy_only_chains_refuse_type2() -> None:
    for name, cid in (("ONE", 1666600000), ("XDC", 50), ("KCS", 321)):
        chain = evm(name)
        tx = chain.build_transfer(to=TO, value=1, nonce=0, chain_id=cid, max_fee_per_gas=GWEI)
        with pytest.raises(ChainError, match="EIP-1559"):
            chain.sign(tx, [key(chain)], testnet=False)


def test_xdc_addresses_in_summaries() -> None:
    chain = evm("XDC")
    tx = chain.build_transfer(to="xdc" + "35" * 20, value=1, nonce=0, chain_id=50, gas_price=GWEI)
    assert chain.decode(tx, testnet=False).outputs[0].address == "xdc" + "35" * 20


def test_sweep_leaves_nothing_behind() -> None:
    chain = evm()
    tx = chain.build_sweep(balance=10**18, to=TO, nonce=4, chain_id=1, max_fee_per_gas=20 * GWEI)
    s = chain.decode(tx, testnet=False)
    assert s.outputs[0].amount + s.fee == 10**18
    token_tx = chain.build_token_sweep(
        token=TO, token_balance=77, to="0x" + "12" * 20, nonce=5, chain_id=1, max_fee_per_gas=GWEI
    )
    t = chain.decode(token_tx, testnet=False).token
    assert t is not None and t.amount == 77
    with pytest.raises(UsageError, match="does not cover"):
        chain.build_sweep(balance=1000, to=TO, nonce=0, chain_id=1, max_fee_per_gas=GWEI)


# --- refusals -------------------------------------------------------------------------------------


def _good() -> bytes:
    return bytes.fromhex(evm().build_transfer(to=TO, value=1, nonce=0, chain_id=1, max_fee_per_gas=GWEI)[2:])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:-3], "RLP"),  # truncated
        (lambda b: b"", "empty"),
        (lambda b: b"\x01" + b[1:], "unsupported transaction type"),  # EIP-2930
        (lambda b: b"\x03" + b[1:], "unsupported transaction type"),  # EIP-4844
        (lambda b: bytes.fromhex(VECTORS["eip155"]["signed"][2:]), "already signed"),
        (lambda b: b + b"\x00", "RLP"),  # trailing byte
    ],
)
def test_malformed_transactions(mutate: Any, match: str) -> None:
    with pytest.raises(ChainError, match=match):
        evm().sign(mutate(_good()), [key(evm())], testnet=False)


def test_unknown_chain_id_absurd_fee_and_bad_fields() -> None:
    import rlp

    chain = evm()
    k = [key(chain)]
    with pytest.raises(ChainError, match="unknown chain id 56"):
        chain.sign(chain.build_transfer(to=TO, value=1, nonce=0, chain_id=56, max_fee_per_gas=GWEI), k, testnet=False)
    with pytest.raises(ChainError, match="absurd fee"):
        chain.sign(
            chain.build_transfer(to=TO, value=1, nonce=0, chain_id=1, max_fee_per_gas=50_000 * GWEI), k, testnet=False
        )
    with pytest.raises(ChainError, match="exceeds maxFeePerGas"):
        chain.decode(
            {"chainId": 1, "nonce": 0, "gas": 21000, "to": TO, "maxFeePerGas": 1, "maxPriorityFeePerGas": 2},
            testnet=False,
        )
    with pytest.raises(ChainError, match="gas limit"):
        chain.decode({"chainId": 1, "nonce": 0, "gas": 31_000_000, "to": TO, "maxFeePerGas": 1}, testnet=False)
    with pytest.raises(ChainError, match="replayable"):
        chain.decode(rlp.encode([0, GWEI, 21000, bytes(20), 1, b""]), testnet=False)
    with pytest.raises(ChainError, match="leading zero"):
        chain.decode(b"\x02" + rlp.encode([b"\x00\x01", 0, 1, 1, 21000, bytes(20), 0, b"", []]), testnet=False)
    with pytest.raises(UsageError, match="unknown transaction fields"):
        chain.decode({"chainId": 1, "nonce": 0, "gas": 21000, "gasPrice": 1, "evil": 1}, testnet=False)
    with pytest.raises(ChainError, match="exactly one key"):
        chain.sign(_good(), k + k, testnet=False)


def test_input_forms_agree() -> None:
    chain = evm()
    raw = _good()
    want = chain.decode(raw, testnet=False)
    assert chain.decode("0x" + raw.hex(), testnet=False) == want
    assert chain.decode(raw.hex(), testnet=False) == want
    assert chain.decode(("0x" + raw.hex()).encode(), testnet=False) == want
    d = {"chainId": "0x1", "nonce": "0", "gas": 21000, "to": TO, "value": "0x1", "maxFeePerGas": GWEI}
    assert chain.decode(d, testnet=False) == want
    assert chain.decode(json.dumps(d), testnet=False) == want


@pytest.mark.parametrize("legacy", [False, True])
def test_signatures_are_byte_for_byte_eth_accounts(legacy: bool) -> None:
    """We sign with coincurve directly; eth-account (the reference) must produce the same bytes."""
    import random

    from eth_account import Account

    rng = random.Random(14 + legacy)
    chain = evm()
    for i in range(25):
        k = bytes(chain.private_key_from_mnemonic(ABANDON, i, testnet=False))
        fees = {"gas_price": rng.randrange(1, 10**12)} if legacy else {"max_fee_per_gas": rng.randrange(GWEI, 10**12)}
        data = rng.randbytes(rng.choice([0, 4, 68]))
        unsigned = chain.build_transfer(
            to=TO,
            value=rng.randrange(0, 10**20),
            nonce=rng.randrange(0, 10**6),
            chain_id=1,
            gas=60_000,
            data=data,
            **fees,
        )
        ours = chain.sign(unsigned, [k], testnet=False)
        fields = {
            "to": TO,
            "value": ours.summary.outputs[0].amount,
            "nonce": ours.summary.nonce,
            "chainId": 1,
            "gas": 60_000,
            "data": "0x" + data.hex(),
        }
        if legacy:
            fields["gasPrice"] = fees["gas_price"]
        else:
            fields.update(type=2, maxFeePerGas=fees["max_fee_per_gas"], maxPriorityFeePerGas=fees["max_fee_per_gas"])
        reference = Account.sign_transaction(fields, k)
        assert ours.raw == bytes(reference.raw_transaction)
        assert ours.txid == "0x" + bytes(reference.hash).hex()
        assert Account.recover_transaction(ours.raw) == ours.sender == Account.from_key(k).address
