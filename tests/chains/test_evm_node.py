"""EVM signatures accepted by a real node (anvil), and the decoded summary matches what it executed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.chains import TxKind, get_chain
from agent.chains.evm import EvmChain, checksum
from tests.chains.conftest import CHAIN_ID, Node, RpcError

ABANDON = "abandon " * 11 + "about"
GWEI = 10**9
ERC20 = json.loads((Path(__file__).parent / "vectors" / "erc20.json").read_text())


@pytest.fixture(scope="module")
def eth() -> EvmChain:
    chain = get_chain("ETH")
    assert isinstance(chain, EvmChain)
    return chain


class Wallet:
    """An ETH testnet wallet from the BIP-39 test mnemonic, funded on the node."""

    def __init__(self, node: Node, chain: EvmChain, index: int) -> None:
        self.node, self.chain = node, chain
        self.key = bytes(chain.private_key_from_mnemonic(ABANDON, index, testnet=True))
        self.address = chain.address_from_private_key(self.key, testnet=True)
        assert self.address == chain.address_from_xpub(
            chain.xpub_from_mnemonic(ABANDON, testnet=True), index, testnet=True
        )

    def fund(self, wei: int) -> None:
        self.node.rpc("anvil_setBalance", self.address, hex(wei))

    def nonce(self) -> int:
        return int(self.node.rpc("eth_getTransactionCount", self.address, "latest"), 16)

    def balance(self, address: str | None = None) -> int:
        return int(self.node.rpc("eth_getBalance", address or self.address, "latest"), 16)

    def send(self, unsigned: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        signed = self.chain.sign(unsigned, [self.key], testnet=True)
        tx_hash = self.node.rpc("eth_sendRawTransaction", signed.raw_hex)
        assert tx_hash == signed.txid
        receipt = self.node.wait_receipt(tx_hash)
        onchain = self.node.rpc("eth_getTransactionByHash", tx_hash)
        assert checksum(bytes.fromhex(onchain["from"][2:])) == signed.sender[2:] == self.address[2:]
        s = signed.summary
        assert int(onchain["nonce"], 16) == s.nonce and int(onchain["chainId"], 16) == s.chain_id == CHAIN_ID
        assert int(onchain["value"], 16) == s.outputs[0].amount and int(onchain["gas"], 16) == s.size
        if s.outputs[0].address is not None:
            assert onchain["to"].lower() == s.outputs[0].address.lower()
        return signed, receipt, onchain


def _call(node: Node, to: str, data: bytes) -> int:
    return int(node.rpc("eth_call", {"to": to, "data": "0x" + data.hex()}, "latest"), 16)


def _balance_of(node: Node, token: str, who: str) -> int:
    return _call(node, token, bytes.fromhex("70a08231") + bytes(12) + bytes.fromhex(who[2:]))


def test_eip1559_and_legacy_transfers_are_executed_as_decoded(anvil: Node, eth: EvmChain) -> None:
    alice, bob = Wallet(anvil, eth, 0), Wallet(anvil, eth, 1)
    alice.fund(10**19)
    before = alice.balance(bob.address)
    tx = eth.build_transfer(
        to=bob.address.lower(),
        value=12345,
        nonce=alice.nonce(),
        chain_id=CHAIN_ID,
        max_fee_per_gas=5 * GWEI,
        max_priority_fee_per_gas=GWEI,
    )
    signed, receipt, onchain = alice.send(tx)
    assert receipt["status"] == "0x1" and onchain["type"] == "0x2"
    assert signed.summary.tx_type == "eip1559" and signed.summary.outputs[0].address == bob.address
    assert alice.balance(bob.address) == before + 12345
    legacy = eth.build_transfer(to=bob.address, value=777, nonce=alice.nonce(), chain_id=CHAIN_ID, gas_price=3 * GWEI)
    signed, receipt, onchain = alice.send(legacy)
    assert receipt["status"] == "0x1" and onchain["type"] == "0x0" and int(onchain["gasPrice"], 16) == 3 * GWEI
    assert int(onchain["v"], 16) in (CHAIN_ID * 2 + 35, CHAIN_ID * 2 + 36)
    assert alice.balance(bob.address) == before + 12345 + 777


def test_erc20_deploy_transfer_and_approve(anvil: Node, eth: EvmChain) -> None:
    from eth_abi import encode

    owner, carol, spender = Wallet(anvil, eth, 2), Wallet(anvil, eth, 3), Wallet(anvil, eth, 4)
    owner.fund(10**19)
    supply = 10**24
    deploy = eth.build_transfer(
        to="",
        value=0,
        nonce=owner.nonce(),
        chain_id=CHAIN_ID,
        gas=1_500_000,
        max_fee_per_gas=5 * GWEI,
        data=bytes.fromhex(ERC20["bytecode"][2:]) + encode(["uint256"], [supply]),
    )
    signed, receipt, _ = owner.send(deploy)
    assert signed.summary.kind is TxKind.CONTRACT_CREATION and receipt["status"] == "0x1"
    token = "0x" + checksum(bytes.fromhex(receipt["contractAddress"][2:]))
    assert _balance_of(anvil, token, owner.address) == supply

    transfer = eth.build_erc20_transfer(
        token=token, to=carol.address, amount=123_456, nonce=owner.nonce(), chain_id=CHAIN_ID, max_fee_per_gas=5 * GWEI
    )
    signed, receipt, _ = owner.send(transfer)
    s = signed.summary
    assert s.kind is TxKind.TOKEN_TRANSFER and s.asset == token and s.token is not None
    assert (s.token.recipient, s.token.amount) == (carol.address, 123_456)
    assert receipt["status"] == "0x1"
    # The node's Transfer event names the same token, sender, recipient and amount as the summary.
    (log,) = receipt["logs"]
    assert log["address"].lower() == token.lower()
    assert (
        log["topics"][0]
        == "0x" + bytes.fromhex("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef").hex()
    )
    assert log["topics"][1][-40:] == owner.address[2:].lower() and log["topics"][2][-40:] == carol.address[2:].lower()
    assert int(log["data"], 16) == s.token.amount
    assert _balance_of(anvil, token, carol.address) == 123_456

    from agent.chains.evm import erc20_approve_data

    approve = eth.build_transfer(
        to=token,
        value=0,
        nonce=owner.nonce(),
        chain_id=CHAIN_ID,
        gas=80_000,
        max_fee_per_gas=5 * GWEI,
        data=erc20_approve_data(bytes.fromhex(spender.address[2:]), 999),
    )
    signed, receipt, _ = owner.send(approve)
    assert signed.summary.kind is TxKind.TOKEN_APPROVE and signed.summary.token is not None
    assert signed.summary.token.recipient == spender.address and receipt["status"] == "0x1"
    allowance = _call(
        anvil,
        token,
        bytes.fromhex("dd62ed3e")
        + bytes(12)
        + bytes.fromhex(owner.address[2:])
        + bytes(12)
        + bytes.fromhex(spender.address[2:]),
    )
    assert allowance == 999


def test_native_sweep_empties_the_wallet(anvil: Node, eth: EvmChain) -> None:
    hot, cold = Wallet(anvil, eth, 5), Wallet(anvil, eth, 6)
    hot.fund(3 * 10**17)
    tx = eth.build_sweep(
        balance=hot.balance(), to=cold.address, nonce=hot.nonce(), chain_id=CHAIN_ID, max_fee_per_gas=5 * GWEI
    )
    signed, receipt, _ = hot.send(tx)
    assert receipt["status"] == "0x1"
    assert hot.balance() == 0 and hot.balance(cold.address) == signed.summary.outputs[0].amount


def test_node_rejects_a_tampered_signature(anvil: Node, eth: EvmChain) -> None:
    import rlp

    w = Wallet(anvil, eth, 7)
    w.fund(10**18)
    tx = eth.build_transfer(
        to=Wallet(anvil, eth, 8).address, value=1, nonce=w.nonce(), chain_id=CHAIN_ID, max_fee_per_gas=5 * GWEI
    )
    raw = eth.sign(tx, [w.key], testnet=True).raw
    fields = rlp.decode(raw[1:])
    fields[11] = (int.from_bytes(fields[11], "big") ^ 1).to_bytes(32, "big")  # flip a bit of s
    tampered = "0x02" + rlp.encode(fields).hex()
    with pytest.raises(RpcError):  # recovers to a different, unfunded sender (or no sender at all)
        anvil.rpc("eth_sendRawTransaction", tampered)
    assert w.nonce() == 0
