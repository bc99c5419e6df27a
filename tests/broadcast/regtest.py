"""A regtest Bitcoin chain whose blocks are judged by Bitcoin Core's own consensus code (py-bitcoinkernel).

No bitcoind can be installed here, so the tests mine blocks in Python and hand them to
libbitcoinkernel's ``ChainstateManager.process_block`` (REGTEST parameters, in-memory block index and
UTXO set). Whether a block extends the chain is decided by Core: scripts and signatures, amounts,
coinbase maturity, double spends, the witness commitment.

Mempool model: **automine**. ``submit(raw)`` builds a block with the one transaction on the tip and
lets the kernel judge it, like anvil's default automine: an accepted transaction is confirmed at depth
1 at once, and a rejected one leaves the chain unchanged. What this does not model, on purpose:
Core's mempool *policy* (standardness, the minimum relay fee, RBF rules). A zero-fee transaction that
Core's mempool would refuse is accepted here; every consensus rule is Core's.

The kernel does not return the reason of an invalid block through its C API (only a mode and a result
code), but it logs its ``BlockValidationState`` verbatim (``BlockChecked: block hash=... state=...``);
:class:`_KernelLog` captures that line, so a rejection carries Core's own reason string, e.g.
``bad-txns-inputs-missingorspent, CheckTxInputs: inputs missing/spent in transaction <txid>``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

#: Regtest's proof-of-work limit: about every second nonce solves a block.
_BITS = 0x207FFFFF
_TARGET = 0x7FFFFF << (8 * (0x20 - 3))
_SUBSIDY = 50 * 10**8
#: Regtest halves the subsidy every 150 blocks (Core's chainparams).
_HALVING = 150
_VERSION = 0x20000000
#: Coinbase outputs can be spent 100 blocks later (COINBASE_MATURITY).
MATURITY = 100
#: ``OP_TRUE``: anyone can spend. The default payee of blocks whose coinbase nobody needs.
OP_TRUE = b"\x51"


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _merkle_root(hashes: list[bytes]) -> bytes:
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _script_num(n: int) -> bytes:
    """``CScript() << n`` as Core writes it (OP_1..OP_16 for small numbers): what BIP34 compares against."""
    if 1 <= n <= 16:
        return bytes([0x50 + n])
    body = n.to_bytes((n.bit_length() + 8) // 8, "little")
    return bytes([len(body)]) + body


def _varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def txid_of(raw: bytes) -> str:
    """The txid (display order) of a serialized transaction."""
    from embit.transaction import Transaction

    return bytes(Transaction.parse(raw).txid()).hex()


class _KernelLog:
    """Every kernel log line, process-wide: libbitcoinkernel's logging is global, so one connection serves all."""

    _lock = threading.Lock()
    _instance: _KernelLog | None = None

    def __init__(self) -> None:
        import pbk

        self.lines: list[str] = []
        self._dropped = 0
        self._append_lock = threading.Lock()
        pbk.enable_log_category(pbk.LogCategory.VALIDATION)
        pbk.set_log_level_category(pbk.LogCategory.VALIDATION, pbk.LogLevel.DEBUG)
        self._connection = pbk.LoggingConnection(self._on_line)

    def _on_line(self, line: str) -> None:
        with self._append_lock:
            self.lines.append(line)
            if len(self.lines) > 4000:  # keep memory bounded; marks count every line ever seen
                self._dropped += 2000
                del self.lines[:2000]

    def mark(self) -> int:
        with self._append_lock:
            return self._dropped + len(self.lines)

    def since(self, mark: int) -> list[str]:
        with self._append_lock:
            return self.lines[max(mark - self._dropped, 0) :]

    @classmethod
    def get(cls) -> _KernelLog:
        with cls._lock:
            if cls._instance is None:
                cls._instance = _KernelLog()
            return cls._instance


#: Every Regtest in the process validates under this lock: the kernel log is shared, and the reason
#: of one block must not be read from another's lines.
_VALIDATE = threading.Lock()


@dataclass(frozen=True)
class Mined:
    """One block this chain mined: its coinbase pays ``amount`` to the ``pay_to`` script at output 0."""

    height: int
    block_hash: str
    coinbase_txid: str
    coinbase_raw: bytes
    amount: int


@dataclass(frozen=True)
class Location:
    """Where a confirmed transaction is."""

    block_hash: str
    height: int
    block_time: int


class Regtest:
    """A regtest chain in memory (block files in a temporary directory, removed by :meth:`close`).

    Thread-safe: the Esplora test server calls it from its request threads.
    """

    def __init__(self) -> None:
        import pbk

        self._log = _KernelLog.get()
        self._dir = tempfile.mkdtemp(prefix="kms-regtest-")
        self._lock = threading.RLock()
        self._checked: list[tuple[Any, Any]] = []
        callbacks = pbk.ValidationInterfaceCallbacks(block_checked=self._on_checked)
        self._context = pbk.make_context(pbk.ChainType.REGTEST, validation_callbacks=callbacks)
        opts = pbk.ChainstateManagerOptions(self._context, self._dir, f"{self._dir}/blocks")
        opts.update_block_tree_db_in_memory(True)
        opts.update_chainstate_db_in_memory(True)
        self._chainman = pbk.ChainstateManager(opts)
        self._chain = self._chainman.get_active_chain()
        self._txs: dict[str, Location] = {}
        self._times: dict[str, int] = {}
        #: Two hours back, one second per block: timestamps rise (above the median time past) and stay
        #: below Core's two-hours-in-the-future limit for 14,400 blocks.
        self._time = int(time.time()) - 7200
        self._extra = 0

    # -- the chain -------------------------------------------------------------------------------

    def tip_height(self) -> int:
        with self._lock:
            return int(self._chain.height)

    def tip_hash(self) -> str:
        with self._lock:
            return self._hash_at(self._chain.height)

    def _hash_at(self, height: int) -> str:
        return bytes(self._chain.block_tree_entries[height].block_hash)[::-1].hex()

    def tx_status(self, txid: str) -> Location | None:
        """Where ``txid`` was mined, or None if no block of the active chain holds it."""
        with self._lock:
            return self._txs.get(txid.lower())

    def depth(self, txid: str) -> int | None:
        with self._lock:
            loc = self._txs.get(txid.lower())
            return None if loc is None else self.tip_height() - loc.height + 1

    # -- mining ------------------------------------------------------------------------------------

    def mine(self, n: int = 1, pay_to: bytes = OP_TRUE) -> list[Mined]:
        """Mine ``n`` empty blocks whose coinbases pay ``pay_to`` (a scriptPubKey): spendable after MATURITY more."""
        out = []
        with self._lock:
            for _ in range(n):
                mined, reason = self._extend([], pay_to)
                if mined is None:
                    raise RuntimeError(f"the kernel refused an empty block: {reason}")
                out.append(mined)
        return out

    def submit(self, raw: bytes) -> tuple[bool, str]:
        """Mine ``raw`` in a block on the tip (automine); (True, txid) or (False, the kernel's reason)."""
        from embit.transaction import Transaction

        try:
            tx = Transaction.parse(raw)
        except Exception as exc:  # embit raises many types for bad bytes
            return False, f"TX decode failed: {exc}"
        with self._lock:
            mined, reason = self._extend([tx], OP_TRUE)
        if mined is None:
            return False, reason
        return True, bytes(tx.txid()).hex()

    def _extend(self, txs: list[Any], pay_to: bytes) -> tuple[Mined | None, str]:
        import pbk
        from embit.script import Script, Witness
        from embit.transaction import Transaction, TransactionInput, TransactionOutput

        height = self._chain.height + 1
        prev = bytes(self._chain.block_tree_entries[self._chain.height].block_hash)
        self._time += 1
        self._extra += 1
        # The coinbase commits to the witness merkle root (BIP141); the coinbase's own wtxid counts as zero.
        wtxids = [b"\x00" * 32] + [sha256d(bytes(tx.serialize())) for tx in txs]
        reserved = b"\x00" * 32
        commitment = sha256d(_merkle_root(wtxids) + reserved)
        amount = _SUBSIDY >> (height // _HALVING)
        coinbase = Transaction(
            version=2,
            vin=[
                TransactionInput(
                    b"\x00" * 32,
                    0xFFFFFFFF,
                    # BIP34 height first; then an extra nonce, so that no two attempts build the same block.
                    script_sig=Script(_script_num(height) + _script_num(self._extra + 16) + b"\x00"),
                    sequence=0xFFFFFFFF,
                    witness=Witness([reserved]),
                )
            ],
            vout=[
                TransactionOutput(amount, Script(pay_to)),
                TransactionOutput(0, Script(b"\x6a\x24\xaa\x21\xa9\xed" + commitment)),
            ],
            locktime=0,
        )
        block_txs = [coinbase, *txs]
        root = _merkle_root([bytes(tx.txid())[::-1] for tx in block_txs])
        nonce = 0
        while True:
            header = struct.pack("<I", _VERSION) + prev + root + struct.pack("<III", self._time, _BITS, nonce)
            if int.from_bytes(sha256d(header), "little") < _TARGET:
                break
            nonce += 1
        raw = header + _varint(len(block_txs)) + b"".join(bytes(tx.serialize()) for tx in block_txs)
        block_hash = sha256d(header)[::-1].hex()
        with _VALIDATE:
            mark = self._log.mark()
            self._checked.clear()
            error = ""
            try:
                self._chainman.process_block(pbk.Block(raw))
            except pbk.ProcessBlockException as exc:
                error = f"process_block failed ({exc})"
            lines = self._log.since(mark)
            checked = list(self._checked)
        if self._chain.height == height and self._hash_at(height) == block_hash:
            for tx in block_txs:
                self._txs[bytes(tx.txid()).hex()] = Location(block_hash, height, self._time)
            cb = bytes(coinbase.serialize())
            return Mined(height, block_hash, bytes(coinbase.txid()).hex(), cb, amount), ""
        return None, _reason(block_hash, lines, checked, error)

    def _on_checked(self, _user_data: Any, _block: Any, state: Any) -> None:
        self._checked.append((state.validation_mode, state.block_validation_result))

    def close(self) -> None:
        with self._lock:
            del self._chain
            del self._chainman
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Regtest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(block_hash: str, lines: list[str], checked: list[tuple[Any, Any]], error: str) -> str:
    """Core's validation state for the block, as the kernel logged it; its result codes when it logged none."""
    for pattern in (
        rf"BlockChecked: block hash={block_hash} state=(.+)",
        rf"ConnectBlock {block_hash} failed, (.+)",
        r"Block validation error: (.+)",
    ):
        for line in lines:
            found = re.search(pattern, line)
            if found:
                return found.group(1).strip()
    if checked:
        mode, result = checked[-1]
        return f"block {mode.name}/{result.name}"
    return error or "block not connected (the kernel logged no reason)"
