"""The simulated authenticator behind real CTAPHID framing, for python-fido2's ``CtapHidDevice``.

:class:`SimHidConnection` is a ``fido2.hid.base.CtapHidConnection``: it takes and gives 64-byte HID
reports exactly as ``/dev/hidraw*`` would, so python-fido2's own ``CtapHidDevice`` does the INIT
handshake, splits requests into continuation packets, reads KEEPALIVE frames (calling
``on_keepalive``), sends CANCEL, and raises on ERROR frames, all unchanged. Spec: CTAP 2.1 §11.2.

A CBOR request that may wait for a touch runs in a worker thread so that the device can keep
talking (KEEPALIVE every ~100 ms while it waits) and keep listening (CANCEL) meanwhile; one that
never waits for the user (getInfo, clientPin) is answered in the host's own write, which saves a
thread start and two hand-offs per command and changes nothing the host can see. A token "pulled out"
(touch mode ``remove``, or :func:`~agent.tokens.sim.state.set_plugged` from anywhere) makes every
later ``read_packet``/``write_packet`` raise ``OSError(EIO)``, as a vanished hidraw node does.

INSECURE: simulator only.
"""

from __future__ import annotations

import errno
import logging
import queue
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fido2.ctap import CtapError
from fido2.hid import CAPABILITY, CTAPHID, CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor

from agent.errors import StateError, TokenNotFound
from agent.tokens.sim.authenticator import SimAuthenticator
from agent.tokens.sim.ctap_status import TokenPulled
from agent.tokens.sim.state import SimStateFile, sim_token_names
from agent.tokens.sim.touch import TouchProvider

logger = logging.getLogger(__name__)

PACKET_SIZE = 64
BROADCAST_CID = 0xFFFFFFFF
TYPE_INIT = 0x80
INIT_PAYLOAD = PACKET_SIZE - 7
CONT_PAYLOAD = PACKET_SIZE - 5
#: The longest message 64-byte reports can carry: one init packet and 128 continuations.
MAX_MESSAGE = INIT_PAYLOAD + 128 * CONT_PAYLOAD
CTAPHID_PROTOCOL_VERSION = 2
DEVICE_VERSION = (1, 0, 0)
#: pid.codes' shared test VID/PID: honest for a device that does not exist.
VENDOR_ID = 0x1209
PRODUCT_ID = 0x0001
PRODUCT_NAME = "kms-agent simulated authenticator (INSECURE)"
PATH_PREFIX = "sim:"
#: CTAP2 commands that never wait for a touch: authenticatorGetInfo, authenticatorClientPIN.
_NO_TOUCH_COMMANDS = frozenset({0x04, 0x06})
#: A host read with nothing on its way (not even keepalives) fails after this long, not never.
READ_GIVE_UP_SECONDS = 300.0
_ERR = CtapError.ERR


def frames(cid: int, cmd: int, data: bytes) -> list[bytes]:
    """``data`` as CTAPHID response reports: one init packet, then continuations (seq 0..127)."""
    packets = [struct.pack(">IBH", cid, TYPE_INIT | cmd, len(data)) + data[:INIT_PAYLOAD]]
    rest, seq = data[INIT_PAYLOAD:], 0
    while rest:
        packets.append(struct.pack(">IB", cid, seq) + rest[:CONT_PAYLOAD])
        rest, seq = rest[CONT_PAYLOAD:], seq + 1
    return [p.ljust(PACKET_SIZE, b"\0") for p in packets]


@dataclass
class _Incoming:
    """A request being reassembled from its init packet and continuations."""

    cid: int
    cmd: int
    length: int
    data: bytearray
    next_seq: int = 0


@dataclass
class _Job:
    """A CBOR request the authenticator is working on."""

    cid: int
    cancel: threading.Event = field(default_factory=threading.Event)
    #: Set when the host re-INITs the channel: the answer must then be dropped.
    abandoned: bool = False


class SimHidConnection(CtapHidConnection):
    """CTAPHID over in-memory 64-byte reports, in front of a :class:`SimAuthenticator`."""

    def __init__(self, authenticator: SimAuthenticator) -> None:
        self.authenticator = authenticator
        self.store = authenticator.store
        self._out: queue.Queue[bytes] = queue.Queue()
        self._lock = threading.Lock()
        self._channels: set[int] = set()
        self._next_cid = 1
        self._incoming: _Incoming | None = None
        self._job: _Job | None = None
        self._ready: tuple[_Job, bytes] | None = None
        self._removed = False
        self._closed = False

    # --- CtapHidConnection ------------------------------------------------------------------------
    def read_packet(self) -> bytes:
        deadline = time.monotonic() + READ_GIVE_UP_SECONDS
        while True:
            self._check_alive()
            try:
                return self._out.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise OSError(errno.ETIMEDOUT, "simulated token sent nothing") from None

    def write_packet(self, data: bytes) -> None:
        self._check_alive()
        if len(data) != PACKET_SIZE:
            raise OSError(errno.EINVAL, f"a CTAPHID report is {PACKET_SIZE} bytes, not {len(data)}")
        cid = struct.unpack_from(">I", data)[0]
        if data[4] & TYPE_INIT:
            self._check_plugged()
            with self._lock:
                self._on_init_packet(cid, data[4] & 0x7F, struct.unpack_from(">H", data, 5)[0], data[7:])
                ready, self._ready = self._ready, None
        else:
            with self._lock:
                self._on_continuation(cid, data[4], data[5:])
                ready, self._ready = self._ready, None
        if ready is None:
            return
        job, request = ready
        if request[0] in _NO_TOUCH_COMMANDS:
            self._run(job, request)
        else:
            threading.Thread(
                target=self._run, args=(job, request), name=f"sim:{self.store.name} ctap", daemon=True
            ).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._job is not None:
                self._job.abandoned = True
                self._job.cancel.set()

    # --- liveness ---------------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._removed:
            raise OSError(errno.EIO, f"simulated token sim:{self.store.name} was removed")
        if self._closed:
            raise OSError(errno.EBADF, "connection closed")

    def _check_plugged(self) -> None:
        try:
            plugged = self.store.read().plugged
        except (TokenNotFound, StateError):
            plugged = False
        if not plugged:
            with self._lock:
                self._pull()
            self._check_alive()

    def _pull(self) -> None:
        self._removed = True
        job = self._job
        if job is not None:
            job.abandoned = True
            job.cancel.set()

    # --- receiving --------------------------------------------------------------------------------
    def _send(self, cid: int, cmd: int, data: bytes) -> None:
        for packet in frames(cid, cmd, data):
            self._out.put(packet)

    def _error(self, cid: int, code: int) -> None:
        self._send(cid, CTAPHID.ERROR, bytes([code]))

    def _on_init_packet(self, cid: int, cmd: int, length: int, payload: bytes) -> None:
        if cmd == CTAPHID.INIT:
            self._on_ctaphid_init(cid, length, payload)
            return
        if cid == BROADCAST_CID or cid not in self._channels:
            self._error(cid, _ERR.INVALID_CHANNEL)
            return
        if cmd == CTAPHID.CANCEL:
            if self._job is not None and self._job.cid == cid:
                self._job.cancel.set()
            return  # CANCEL never gets an answer of its own
        if self._job is not None or (self._incoming is not None and self._incoming.cid != cid):
            self._error(cid, _ERR.CHANNEL_BUSY)
            return
        if self._incoming is not None:  # a new request before the last one was complete
            self._incoming = None
            self._error(cid, _ERR.INVALID_SEQ)
            return
        if length > MAX_MESSAGE:
            self._error(cid, _ERR.INVALID_LENGTH)
            return
        self._incoming = _Incoming(cid, cmd, length, bytearray(payload[:length]))
        self._maybe_complete()

    def _on_continuation(self, cid: int, seq: int, payload: bytes) -> None:
        incoming = self._incoming
        if incoming is None or incoming.cid != cid:
            return  # spurious continuation packets are ignored (§11.2.4)
        if seq != incoming.next_seq:
            self._incoming = None
            self._error(cid, _ERR.INVALID_SEQ)
            return
        incoming.next_seq += 1
        incoming.data += payload[: incoming.length - len(incoming.data)]
        self._maybe_complete()

    def _on_ctaphid_init(self, cid: int, length: int, payload: bytes) -> None:
        if length != 8:
            self._error(cid, _ERR.INVALID_LENGTH)
            return
        nonce = payload[:8]
        if cid == BROADCAST_CID:
            new_cid = self._next_cid
            self._next_cid += 1
            self._channels.add(new_cid)
        elif cid in self._channels:
            new_cid = cid  # resynchronise: abort whatever this channel was doing
            if self._incoming is not None and self._incoming.cid == cid:
                self._incoming = None
            if self._job is not None and self._job.cid == cid:
                self._job.abandoned = True
                self._job.cancel.set()
        else:
            self._error(cid, _ERR.INVALID_CHANNEL)
            return
        capabilities = CAPABILITY.CBOR | CAPABILITY.WINK  # no NMSG: CTAP2 only, no U2F fallback
        self._send(
            cid,
            CTAPHID.INIT,
            nonce + struct.pack(">IBBBBB", new_cid, CTAPHID_PROTOCOL_VERSION, *DEVICE_VERSION, capabilities),
        )

    def _maybe_complete(self) -> None:
        incoming = self._incoming
        if incoming is None or len(incoming.data) < incoming.length:
            return
        self._incoming = None
        cid, cmd, data = incoming.cid, incoming.cmd, bytes(incoming.data)
        if cmd == CTAPHID.PING:
            self._send(cid, cmd, data)
        elif cmd == CTAPHID.WINK:
            self._send(cid, cmd, b"")
        elif cmd == CTAPHID.CBOR:
            if not data:
                self._error(cid, _ERR.INVALID_LENGTH)
                return
            self._job = job = _Job(cid)
            self._ready = (job, data)  # started by write_packet once the lock is released
        else:  # MSG (no U2F), LOCK and vendor commands are not implemented
            self._error(cid, _ERR.INVALID_COMMAND)

    # --- the worker -------------------------------------------------------------------------------
    def _run(self, job: _Job, request: bytes) -> None:
        def keepalive(status: int) -> None:
            with self._lock:
                if not job.abandoned:
                    self._send(job.cid, CTAPHID.KEEPALIVE, bytes([status]))

        try:
            response = self.authenticator.handle_cbor(request, keepalive=keepalive, cancel=job.cancel)
        except TokenPulled as exc:
            logger.info("%s", exc)
            with self._lock:
                self._pull()
                self._job = None
            return
        except Exception:
            logger.exception("sim:%s failed on a CBOR request", self.store.name)
            response = bytes([_ERR.OTHER])
        with self._lock:
            if not job.abandoned:
                self._send(job.cid, CTAPHID.CBOR, response)
            if self._job is job:
                self._job = None


def _descriptor(name: str) -> HidDescriptor:
    return HidDescriptor(
        path=PATH_PREFIX + name,
        vid=VENDOR_ID,
        pid=PRODUCT_ID,
        report_size_in=PACKET_SIZE,
        report_size_out=PACKET_SIZE,
        product_name=PRODUCT_NAME,
        serial_number=name,
    )


def open_sim_hid_device(home: Path, name: str, *, touch: TouchProvider | None = None) -> CtapHidDevice:
    """Plug-and-open ``sim:NAME`` as python-fido2's own ``CtapHidDevice`` (a fresh power-up).

    :param touch: who touches the token; default: ``KMS_AGENT_SIM_TOUCH`` (see :mod:`.touch`).
    :raises TokenNotFound: no such simulated token, or it is unplugged.
    :raises UsageError: invalid name.
    :raises StateError: its state file is corrupt.
    """
    store = SimStateFile(home, name)
    if not store.read().plugged:
        raise TokenNotFound(f"simulated token sim:{name} is unplugged", hint=f"plug it in: kms-agent sim plug {name}")
    connection = SimHidConnection(SimAuthenticator(store, touch=touch))
    try:
        return CtapHidDevice(_descriptor(name), connection)
    except OSError:
        raise TokenNotFound(f"simulated token sim:{name} was unplugged while opening it") from None


def list_sim_hid_devices(home: Path, *, touch: TouchProvider | None = None) -> list[CtapHidDevice]:
    """Open every plugged-in simulated token under ``home``, as a HID enumeration would."""
    devices = []
    for name in sim_token_names(home):
        try:
            devices.append(open_sim_hid_device(home, name, touch=touch))
        except (TokenNotFound, StateError) as exc:
            logger.debug("Skipping sim:%s: %s", name, exc)
    return devices
