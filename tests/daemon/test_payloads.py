"""Tatum payloads -> our unsigned transactions; the daemon's options; the Tatum API client over real HTTP."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from agent.broadcast.nodes import Outcome
from agent.chains import get_chain
from agent.chains.utxo import AddressKind
from agent.daemon.options import UrlMethod, read_env_file, resolve
from agent.daemon.payloads import PayloadError, PayloadKind, bitcore_to_psbt, evm_transaction, to_unsigned
from agent.daemon.tatum_api import CLIENT_VERSION, Failure, KeyRef, Malformed, PendingTx, TatumApi, TatumApiError
from agent.errors import UsageError
from tests.chains.utxo_helpers import make_coins
from tests.daemon.fake_tatum import API_KEY, FakeTatum, closed_port

COLD = "0x00000000000000000000000000000000000c01d0"
TOKEN = "0x1111111111111111111111111111111111111111"
COLD_BTC = "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"
SEPOLIA = 11155111
ETH = get_chain("ETH")
BTC: Any = get_chain("BTC")


def pending(chain: str, serialized: str | dict[str, Any], **extra: Any) -> PendingTx:
    text = serialized if isinstance(serialized, str) else json.dumps(serialized)
    doc = {"id": "5e6645712b55823de7ea82f1", "chain": chain, "serializedTransaction": text, "hashes": ["w1"], **extra}
    return PendingTx.from_json(doc, chain)


# --- EVM: web3 TransactionConfig --------------------------------------------------------------------


def test_transaction_config_in_any_number_spelling_is_the_same_transaction() -> None:
    want = ETH.build_transfer(to=COLD, value=10**16, nonce=7, chain_id=SEPOLIA, max_fee_per_gas=30 * 10**9)  # type: ignore[attr-defined]
    spellings: list[dict[str, Any]] = [
        {"to": COLD, "value": 10**16, "nonce": 7, "gas": 21000, "maxFeePerGas": 30 * 10**9, "chainId": SEPOLIA},
        {
            "to": COLD,
            "value": "10000000000000000",
            "nonce": "7",
            "gas": "21000",
            "maxFeePerGas": "30000000000",
            "chainId": str(SEPOLIA),
        },
        {
            "to": COLD,
            "value": hex(10**16),
            "nonce": "0x7",
            "gasLimit": "0x5208",
            "maxFeePerGas": hex(30 * 10**9),
            "chainId": hex(SEPOLIA),
            "from": "0x" + "22" * 20,
        },
    ]
    for config in spellings:
        unsigned = to_unsigned(pending("ETH", config, index=3))
        assert (unsigned.tx, unsigned.signature_id, unsigned.index) == (want, "w1", 3)
        assert unsigned.kind is PayloadKind.TRANSACTION_CONFIG


def test_legacy_gas_price_and_erc20_calldata_decode_as_a_token_transfer() -> None:
    from agent.chains.evm import erc20_transfer_data

    data = "0x" + erc20_transfer_data(ETH.address_bytes(COLD), 5 * 10**6).hex()  # type: ignore[attr-defined]
    config = {
        "to": TOKEN,
        "value": "0",
        "data": data,
        "nonce": 0,
        "gas": 60000,
        "gasPrice": "1000000000",
        "chainId": SEPOLIA,
    }
    summary = ETH.decode(evm_transaction(json.dumps(config)), testnet=True)
    assert summary.token is not None
    assert (summary.token.method, summary.token.recipient.lower(), summary.token.amount) == (
        "transfer",
        COLD,
        5 * 10**6,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nonce": None}, "has no nonce"),
        ({"gas": None}, "has no gas"),
        ({"maxFeePerGas": None}, "has no gasPrice or maxFeePerGas"),
        ({"chainId": None}, "has no chainId"),
        ({"value": 1.5}, "not an integer"),
        ({"value": 1e30}, "not an integer"),
        ({"value": "12abc"}, "value is not an integer"),
        ({"value": str(2**256)}, "value is out of range"),
        ({"value": -1}, "value is out of range"),
        ({"gas": 10**9}, "gas is out of range"),
        ({"nonce": True}, "nonce must be an integer"),
        ({"to": "0x1234"}, "20 bytes"),
        ({"data": 5}, "data must be a hex string"),
        ({"nodeUrl": "x"}, "unknown TransactionConfig fields: nodeUrl"),
    ],
)
def test_bad_transaction_configs_are_refused_clearly(change: dict[str, Any], message: str) -> None:
    config: dict[str, Any] = {"to": COLD, "value": 1, "nonce": 0, "gas": 21000, "maxFeePerGas": 1, "chainId": SEPOLIA}
    for key, value in change.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    with pytest.raises(PayloadError, match=message):
        to_unsigned(pending("ETH", config))


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"to": ', "null"])
def test_malformed_json_is_refused(text: str) -> None:
    with pytest.raises(PayloadError, match="serializedTransaction"):
        evm_transaction(text)


# --- keys -------------------------------------------------------------------------------------------


def test_which_key_signs() -> None:
    config = {"to": COLD, "value": 1, "nonce": 0, "gas": 21000, "maxFeePerGas": 1, "chainId": SEPOLIA}
    assert to_unsigned(pending("ETH", config)).index == 0  # a private-key wallet: hashes[0]
    sigs = [{"id": "w1", "index": 5}, {"id": "w1", "index": 5}]
    assert to_unsigned(pending("ETH", config, hashes=[], signatures=sigs)).index == 5
    with pytest.raises(PayloadError, match="keys of 2 wallets"):
        to_unsigned(pending("ETH", config, hashes=["w1", "w2"]))
    with pytest.raises(PayloadError, match="keys of 2 wallets"):
        to_unsigned(pending("ETH", config, signatures=[{"id": "w2", "index": 1}]))
    with pytest.raises(PayloadError, match="several indexes"):
        to_unsigned(pending("ETH", config, hashes=[], signatures=[{"id": "w1", "index": 1}, {"id": "w1", "index": 2}]))
    with pytest.raises(PayloadError, match="names no wallet"):
        to_unsigned(pending("ETH", config, hashes=[]))
    with pytest.raises(PayloadError, match="off-chain"):
        to_unsigned(pending("ETH", config, withdrawalId="w-1"))
    with pytest.raises(PayloadError, match="SOL is not one kms-agent signs for"):
        to_unsigned(pending("SOL", config))
    with pytest.raises(TatumApiError, match="index"):
        pending("ETH", config, index=-1)
    with pytest.raises(TatumApiError, match="no id"):
        PendingTx.from_json({"serializedTransaction": "{}"}, "ETH")


# --- Bitcoin family: bitcore JSON and PSBT ----------------------------------------------------------


def bitcore(amount_in: int = 50_000, outs: tuple[int, int] = (30_000, 19_000), **extra: Any) -> dict[str, Any]:
    net = BTC.net(True)
    coins = make_coins(BTC, [(0, AddressKind.P2WPKH, amount_in)], testnet=True)
    change = BTC.address_from_xpub(
        BTC.xpub_from_mnemonic(" ".join(["abandon"] * 11 + ["about"]), testnet=True), 1, testnet=True
    )
    return {
        "hash": "00" * 32,
        "version": 2,
        "inputs": [
            {
                "prevTxId": coins[0].utxo.txid,
                "outputIndex": coins[0].utxo.vout,
                "sequenceNumber": 0xFFFFFFFD,
                "script": "",
                "output": {"satoshis": amount_in, "script": coins[0].spk.hex()},
            }
        ],
        "outputs": [
            {"satoshis": outs[0], "script": BTC.script_from_address(COLD_BTC, net).hex()},
            {"satoshis": outs[1], "script": BTC.script_from_address(change, net).hex()},
        ],
        "nLockTime": 0,
        "changeScript": BTC.script_from_address(change, net).hex(),
        "changeIndex": 1,
        "fee": amount_in - sum(outs),
        **extra,
    }


def test_bitcore_json_becomes_a_psbt_the_utxo_layer_decodes() -> None:
    obj = bitcore()
    unsigned = to_unsigned(pending("BTC", obj, hashes=[], signatures=[{"id": "w1", "index": 0}]))
    assert unsigned.kind is PayloadKind.BITCORE
    summary = BTC.decode(unsigned.tx, testnet=True)
    assert summary.fee == 1000
    assert (summary.outputs[0].address, summary.outputs[0].amount) == (COLD_BTC, 30_000)
    assert summary.inputs[0].txid == obj["inputs"][0]["prevTxId"]
    assert summary.inputs[0].amount == 50_000


def test_a_psbt_passes_through_as_base64_or_hex() -> None:
    psbt = bitcore_to_psbt(json.dumps(bitcore()))
    raw = base64.b64decode(psbt)
    for text in (psbt, raw.hex()):
        unsigned = to_unsigned(pending("BTC", text, hashes=["w1"]))
        assert (unsigned.kind, unsigned.tx) == (PayloadKind.PSBT, psbt)
    for junk in ("aGVsbG8=", "70736274ffzz", "!!!"):
        with pytest.raises(PayloadError, match="neither bitcore JSON nor a PSBT"):
            to_unsigned(pending("BTC", junk, hashes=["w1"]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.update(fee=999), "fee 999 is not inputs minus outputs"),
        (lambda o: o["inputs"][0].update(script="0014" + "00" * 20), "already has a scriptSig"),
        (lambda o: o["inputs"][0].pop("output"), "amount it spends is unknown"),
        (lambda o: o["inputs"][0]["output"].update(satoshis="50000"), "output.satoshis must be an integer"),
        (lambda o: o["outputs"][0].update(satoshis=10**17), "satoshis must be an integer"),
        (lambda o: o["outputs"][0].update(satoshis=40_000), "spends 59000 satoshi but its inputs hold 50000"),
        (lambda o: o["inputs"][0].update(prevTxId="ab"), "prevTxId must be 32 bytes"),
        (lambda o: o["outputs"][0].update(script="zz"), "script is not hex"),
        (lambda o: o.update(changeIndex=0), "changeIndex does not point at changeScript"),
        (lambda o: o.update(inputs=[]), "no inputs"),
    ],
)
def test_bad_bitcore_json_is_refused_clearly(change: Any, message: str) -> None:
    obj = bitcore()
    change(obj)
    with pytest.raises(PayloadError, match=message):
        bitcore_to_psbt(json.dumps(obj))


# --- options ----------------------------------------------------------------------------------------


def test_options_read_tatum_variables_like_tatum(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        '# comment\nexport TATUM_API_KEY="from-file"\nTATUM_API_URL=http://127.0.0.1:9/ # trailing\n\nOTHER=1\n'
    )
    assert read_env_file(env_file) == {
        "TATUM_API_KEY": "from-file",
        "TATUM_API_URL": "http://127.0.0.1:9/",
        "OTHER": "1",
    }
    opts = resolve(testnet=True, env_file=env_file, environ={})
    assert (opts.api_key, opts.api_url) == ("from-file", "http://127.0.0.1:9")
    assert "from-file" not in repr(opts)
    opts = resolve(testnet=True, env_file=env_file, environ={"TATUM_API_KEY": "from-env"})
    assert opts.api_key == "from-env"  # dotenv never overrides the environment
    opts = resolve(testnet=True, env_file=env_file, environ={"TATUM_API_KEY": "from-env"}, api_key="from-flag")
    assert opts.api_key == "from-flag"
    opts = resolve(testnet=True, environ={"TATUM_API_KEY": "k", "HOME": str(tmp_path)}, chain="eth, btc,ETH")
    assert opts.chains == ("ETH", "BTC") and opts.api_url == "https://api.tatum.io"
    assert opts.external_method is UrlMethod.GET and opts.period == 5.0
    env_file.write_text("TATUM_API_KEY=x\nthis is not an assignment with-secret\n")
    with pytest.raises(UsageError, match="line 2: not a NAME=value") as info:
        read_env_file(env_file)
    assert "with-secret" not in info.value.message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"testnet": True, "environ": {}}, "no Tatum API key"),
        ({"environ": {"TATUM_API_KEY": "k"}}, "--externalUrl is required without --testnet"),
        ({"testnet": True, "chain": "ETH,SOL"}, "unknown chain 'SOL'"),
        ({"testnet": True, "wallets": "a,b"}, "only with --runOnce"),
        ({"testnet": True, "transaction_ids": "a"}, "only with --runOnce"),
        ({"testnet": True, "period": 0}, "--period"),
        ({"testnet": True, "external_url": "ftp://x"}, "http:// or https://"),
        ({"testnet": True, "env_file": Path("/nonexistent/.env")}, "does not exist"),
        ({"testnet": True, "environ": {"TATUM_API_KEY": "k", "TATUM_API_URL": "nope"}}, "TATUM_API_URL"),
    ],
)
def test_bad_options_are_one_clear_error(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("environ", {"TATUM_API_KEY": "k"})
    with pytest.raises(UsageError, match=message):
        resolve(**kwargs)


# --- the Tatum API client, over real HTTP -----------------------------------------------------------


def test_the_client_speaks_tatums_protocol() -> None:
    with FakeTatum() as fake:
        fake.add("ETH", {"id": "t1", "serializedTransaction": "{}", "hashes": ["w1"], "index": 2})
        fake.add("ETH", {"id": "t2", "serializedTransaction": 5, "hashes": ["w1"]})  # malformed
        fake.add("ETH", {"id": "t3", "serializedTransaction": "{}", "hashes": ["w9"]})  # another wallet
        api = TatumApi(fake.url, API_KEY)
        items = api.pending("ETH", ["w1"])
        assert [type(i) for i in items] == [PendingTx, Malformed]
        first = items[0]
        assert isinstance(first, PendingTx)
        assert (first.id, first.hashes, first.index, first.signatures) == ("t1", ("w1",), 2, ())
        assert items[1] == Malformed("t2", "pending transaction t2: serializedTransaction is not a string")
        seen = fake.seen("/v3/kms/pending/ETH")[0]
        assert seen.body == {"signatureIds": ["w1"]}
        assert seen.headers["x-api-key"] == API_KEY and seen.headers["x-ttm-kms-client-version"] == CLIENT_VERSION
        assert api.pending("BTC", []) == []  # posted even with no wallets, as Tatum does
        assert fake.seen("/v3/kms/pending/BTC")[0].body == {"signatureIds": []}

        answer = api.broadcast("ETH", "0xf86c", "t1")
        assert answer.outcome is Outcome.ACCEPTED and answer.http_status == 200 and answer.txid
        assert fake.seen("/v3/ethereum/broadcast")[0].body == {"txData": "0xf86c", "signatureId": "t1"}
        fake.broadcast_status = 400
        answer = api.broadcast("BTC", "0200", "t3")
        assert (answer.outcome, answer.reason) == (Outcome.REJECTED, "broadcast failed")
        fake.broadcast_status = 503
        assert api.broadcast("BTC", "0200", "t3").outcome is Outcome.UNREACHABLE

        api.report([Failure("t2", "bad"), Failure("t3", "worse")])
        assert fake.seen("/v3/tatum/kms/batch")[0].body == {
            "errors": [{"signatureId": "t2", "error": "bad"}, {"signatureId": "t3", "error": "worse"}]
        }
        assert fake.still_pending() == set()  # t1 broadcast (accepted), t2 and t3 reported: Tatum completes all
        fake.pending_status = 500
        with pytest.raises(TatumApiError, match="answered 500 to the pending ETH transactions"):
            api.pending("ETH", ["w1"])
        with pytest.raises(TatumApiError, match="answered 403"):
            TatumApi(fake.url, "wrong-key").pending("ETH", ["w1"])
        api.close()
    down = TatumApi(closed_port(), API_KEY)
    with pytest.raises(TatumApiError, match="unreachable: ConnectError"):
        down.pending("ETH", ["w1"])
    assert down.broadcast("ETH", "0x00", "t1").outcome is Outcome.UNREACHABLE
    assert KeyRef("w1").index is None
