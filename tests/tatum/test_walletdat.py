"""agent.tatum.walletdat against the openssl command: byte-exact output, and one error per bad input."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from agent.tatum.walletdat import TatumFileError, WrongPassword, decrypt, encrypt

DOC = {"6c7d7a3e-1d5e-4b0a-9a3c-2f1e0d9c8b7a": {"privateKey": "0x" + "11" * 32, "chain": "ETH", "testnet": True}}
SALT = bytes.fromhex("0102030405060708")


def openssl(*args: str, data: bytes) -> bytes:
    cmd = ["openssl", "enc", "-aes-256-cbc", "-md", "md5", "-a", "-A", "-pass", "pass:pässword", *args]
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def test_encrypt_is_byte_exact_with_openssl_for_the_same_salt() -> None:
    plain = json.dumps(DOC, separators=(",", ":")).encode()
    # With an explicit -S, OpenSSL 3 writes the bare ciphertext, without the Salted__ header.
    body = base64.b64decode(openssl("-S", SALT.hex(), data=plain)).removeprefix(b"Salted__" + SALT)
    assert encrypt(DOC, "pässword".encode(), salt=SALT) == base64.b64encode(b"Salted__" + SALT + body)


def test_decrypt_reads_what_openssl_writes_and_the_reverse() -> None:
    plain = json.dumps(DOC).encode()
    assert decrypt(openssl("-salt", data=plain), "pässword".encode()) == DOC
    assert json.loads(openssl("-d", data=encrypt(DOC, "pässword".encode()))) == DOC


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", TatumFileError, "empty"),
        (b"\n \n", TatumFileError, "white space"),
        (b"not base64!", TatumFileError, "base64"),
        (base64.b64encode(b"Salted_" + b"x" * 40), TatumFileError, "Salted__"),
        (base64.b64encode(b"Salted__" + SALT + b"x" * 20), TatumFileError, "truncated"),
        (base64.b64encode(b"Salted__" + SALT), TatumFileError, "truncated"),
        (encrypt(DOC, b"other"), WrongPassword, "wrong password"),
        (encrypt({}, "pässword".encode()), TatumFileError, "no wallets"),
    ],
    ids=["zero-length", "blank", "not-base64", "no-magic", "partial-block", "no-ciphertext", "wrong-password", "{}"],
)
def test_each_bad_input_is_one_clear_error(data: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        decrypt(data, "pässword".encode())
    assert words in str(info.value)
    assert getattr(info.value, "exit_code", None) == 2
