"""CTAPHID framing of the simulator, at the report level and through python-fido2's CtapHidDevice."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import pytest
from fido2.ctap import CtapError
from fido2.hid import CAPABILITY, CTAPHID, CtapHidDevice

from agent.tokens.sim import FixedTouch, TouchResult, create_sim_token
from agent.tokens.sim.authenticator import SimAuthenticator
from agent.tokens.sim.ctaphid import BROADCAST_CID, PACKET_SIZE, SimHidConnection, frames
from agent.tokens.sim.state import SimStateFile

from .conftest import OpenDevice

ERR = CtapError.ERR


@pytest.fixture
def conn(home: Path) -> SimHidConnection:
    create_sim_token(home, "alice")
    return SimHidConnection(SimAuthenticator(SimStateFile(home, "alice"), touch=FixedTouch(TouchResult.GRANTED)))


def _init(conn: SimHidConnection) -> int:
    nonce = os.urandom(8)
    conn.write_packet(
        struct.pack(">IBH", BROADCAST_CID, 0x80 | CTAPHID.INIT, 8).ljust(PACKET_SIZE, b"\0")[:7]
        + nonce
        + bytes(PACKET_SIZE - 15)
    )
    reply = conn.read_packet()
    assert reply[:7] == struct.pack(">IBH", BROADCAST_CID, 0x80 | CTAPHID.INIT, 17)
    assert reply[7:15] == nonce
    cid, version, *_, caps = struct.unpack_from(">IBBBBB", reply, 15)
    assert version == 2 and caps & CAPABILITY.CBOR and not caps & CAPABILITY.NMSG
    return int(cid)


def _error_code(packet: bytes, cid: int) -> int:
    assert packet[:7] == struct.pack(">IBH", cid, 0x80 | CTAPHID.ERROR, 1)
    return packet[7]


def test_device_opens_with_fido2_descriptor(open_device: OpenDevice) -> None:
    dev = open_device("alice")
    assert dev.descriptor.path == "sim:alice"
    assert dev.product_name == "kms-agent simulated authenticator (INSECURE)"
    assert dev.capabilities & CAPABILITY.CBOR
    assert dev.version == 2


def test_long_ping_crosses_continuation_packets(open_device: OpenDevice) -> None:
    dev = open_device()
    message = os.urandom(1000)  # 1 init + 17 continuation packets each way
    assert dev.ping(message) == message
    dev.wink()


def test_channels_are_distinct_and_unknown_ones_refused(conn: SimHidConnection) -> None:
    first, second = _init(conn), _init(conn)
    assert first != second
    conn.write_packet(frames(0x12345678, CTAPHID.PING, b"hi")[0])
    assert _error_code(conn.read_packet(), 0x12345678) == ERR.INVALID_CHANNEL
    conn.write_packet(frames(BROADCAST_CID, CTAPHID.PING, b"hi")[0])
    assert _error_code(conn.read_packet(), BROADCAST_CID) == ERR.INVALID_CHANNEL
    conn.write_packet(frames(second, CTAPHID.PING, b"hi")[0])
    assert conn.read_packet()[:9] == struct.pack(">IBH", second, 0x80 | CTAPHID.PING, 2) + b"hi"


def test_wrong_sequence_number(conn: SimHidConnection) -> None:
    cid = _init(conn)
    packets = frames(cid, CTAPHID.PING, bytes(200))
    conn.write_packet(packets[0])
    conn.write_packet(packets[2])  # seq 1 where 0 was due
    assert _error_code(conn.read_packet(), cid) == ERR.INVALID_SEQ


def test_unknown_command_and_empty_cbor(conn: SimHidConnection) -> None:
    cid = _init(conn)
    conn.write_packet(frames(cid, CTAPHID.MSG, b"\0\1\0\0")[0])  # no U2F: NMSG is not advertised
    assert _error_code(conn.read_packet(), cid) == ERR.INVALID_COMMAND
    conn.write_packet(frames(cid, CTAPHID.CBOR, b"")[0])
    assert _error_code(conn.read_packet(), cid) == ERR.INVALID_LENGTH


def test_busy_while_waiting_for_touch(home: Path) -> None:
    create_sim_token(home, "alice")
    gate = threading.Event()

    def touch(name: str, stop: threading.Event) -> TouchResult:
        gate.wait(5)
        return TouchResult.GRANTED

    conn = SimHidConnection(SimAuthenticator(SimStateFile(home, "alice"), touch=touch))
    one, two = _init(conn), _init(conn)
    conn.write_packet(frames(one, CTAPHID.CBOR, b"\x0b")[0])  # selection: waits for the touch
    keepalive = conn.read_packet()
    assert keepalive[:8] == struct.pack(">IBHB", one, 0x80 | CTAPHID.KEEPALIVE, 1, 2)  # UPNEEDED
    conn.write_packet(frames(two, CTAPHID.PING, b"x")[0])
    while (packet := conn.read_packet())[:4] != struct.pack(">I", two):
        pass
    assert _error_code(packet, two) == ERR.CHANNEL_BUSY
    gate.set()
    while (packet := conn.read_packet())[4] != 0x80 | CTAPHID.CBOR:
        pass
    assert packet[:8] == struct.pack(">IBHB", one, 0x80 | CTAPHID.CBOR, 1, 0)


def test_bad_cbor_and_unknown_ctap_command(open_device: OpenDevice) -> None:
    dev: CtapHidDevice = open_device()
    assert dev.call(CTAPHID.CBOR, b"\x01\xa1\x01") == bytes([ERR.INVALID_CBOR])  # truncated map
    assert dev.call(CTAPHID.CBOR, b"\x01\x80") == bytes([ERR.CBOR_UNEXPECTED_TYPE])  # an array, not a map
    assert dev.call(CTAPHID.CBOR, b"\x55") == bytes([ERR.INVALID_COMMAND])
    assert dev.call(CTAPHID.CBOR, b"\x02\xa0") == bytes([ERR.MISSING_PARAMETER])  # getAssertion without rpId


def test_closed_connection_raises(open_device: OpenDevice) -> None:
    dev = open_device()
    dev.close()
    with pytest.raises(OSError):
        dev.ping()
