"""Backups of wallet.dat: verified, still-encrypted copies with a manifest, rotated; and restoring one.

A backup is the file's exact bytes (nothing is decrypted: the copy opens only for a quorum of
tokens, like the original) written next to a manifest, both through :func:`agent.files.replacing`
(temp file 0600, fsync, rename, fsync the directory; directories 0700). Every copy is read back
from its destination and checked: same SHA-256 as the bytes read from wallet.dat, the format
parses and the header signature verifies (token-free, as ``vault verify``), against the pinned
signing key when a pin is given. ``keep`` copies per vault are kept, the oldest generations go.

:func:`before_save` is the hook of :meth:`agent.vault.vault.UnlockedVault.save`: every change to
the vault first backs up the file it replaces to the configured directory (docs/operations.md),
and a failure (full or read-only disk) refuses the change before wallet.dat is touched.

Off-host copies go through rclone (:func:`rclone_copy`), a well-kept tool, not code of ours.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import KmsAgentError, StateError, VaultIntegrityError, VaultRollback, VaultUntrusted
from agent.files import ensure_private_dir, replacing, write_all
from agent.locks import writer_lock
from agent.vault import format as fmt
from agent.vault import primitives as p
from agent.vault.index import IndexReader
from agent.vault.pin import VaultPin, load_pin, save_pin
from agent.vault.records import VaultHeader
from agent.vault.sealed import check_file_signature
from agent.vault.store import FileBuffer

#: Where every change's backup goes (default: ``backups/`` in the data directory, next to wallet.dat).
BACKUP_DIR_ENV = "KMS_AGENT_BACKUP_DIR"
#: How many copies of one vault a backup directory keeps (default :data:`DEFAULT_KEEP`).
BACKUP_KEEP_ENV = "KMS_AGENT_BACKUP_KEEP"
DEFAULT_KEEP = 10
MANIFEST_FORMAT = "kms-agent-backup/1"
_CHUNK = 1 << 22


class BackupError(StateError):
    """A backup could not be written or checked (exit 9): full or read-only disk, rclone failure."""


@dataclass(frozen=True)
class Manifest:
    """What a backup is, written next to it as ``<copy>.json``."""

    format: str
    file: str
    vault_id: str
    generation: int
    fingerprint: str
    time: str
    created_at: int
    sha256: str
    size: int
    version: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            raw = json.loads(path.read_text())
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__})
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise VaultIntegrityError(f"the backup manifest {path} is corrupt ({type(exc).__name__})") from None


@dataclass(frozen=True)
class Backup:
    path: Path
    manifest: Manifest
    reused: bool = False

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "manifest": str(self.manifest_path),
            "reused": self.reused,
            **self.manifest.to_json(),
        }


@dataclass
class Checked:
    """A copy read and checked without a token."""

    path: Path
    file: fmt.VaultFile | fmt.V1File
    sha256: str
    size: int
    manifest: Manifest | None
    checks: list[str] = field(default_factory=list)

    @property
    def header(self) -> VaultHeader:
        return self.file.header

    @property
    def fingerprint(self) -> str:
        return p.fingerprint(self.header.signing_key)

    def close(self) -> None:
        """Close the copy's descriptor (a v2 file is read by offset through it)."""
        if isinstance(self.file, fmt.VaultFile) and isinstance(self.file.buf, FileBuffer):
            self.file.buf.close()


def manifest_path(copy: Path) -> Path:
    return copy.with_name(copy.name + ".json")


def backup_dir(vault_path: Path) -> Path:
    """The configured backup directory: ``$KMS_AGENT_BACKUP_DIR``, else ``backups/`` next to wallet.dat."""
    configured = os.environ.get(BACKUP_DIR_ENV)
    return Path(configured).expanduser().absolute() if configured else vault_path.parent / "backups"


def keep_count() -> int:
    raw = os.environ.get(BACKUP_KEEP_ENV, "")
    try:
        return max(1, int(raw)) if raw else DEFAULT_KEEP
    except ValueError:
        raise BackupError(f"{BACKUP_KEEP_ENV}={raw!r} is not a number of copies") from None


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """Turn an OS failure while writing into one clear error that names the directory."""
    try:
        yield
    except OSError as exc:
        raise BackupError(
            f"cannot write a backup to {dest}: {exc.strerror or exc}",
            hint=f"free space or make {dest} writable, or point {BACKUP_DIR_ENV} at another directory",
        ) from None


def _parse(buf: FileBuffer) -> fmt.VaultFile | fmt.V1File:
    vf: fmt.VaultFile | fmt.V1File
    vf = fmt.parse(buf) if fmt.version_of(buf) == fmt.VERSION else fmt.parse_v1(buf.read_all())
    check_file_signature(vf)
    return vf


class FileView(FileBuffer):
    """A :class:`FileBuffer` over a descriptor someone else closes (the temp file being written)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def close(self) -> None:
        self.fd = -1


def _hash(buf: FileBuffer) -> str:
    digest = hashlib.sha256()
    for at in range(0, buf.size, _CHUNK):
        digest.update(buf[at : at + _CHUNK])
    return digest.hexdigest()


def check_pinned(header: VaultHeader, pin: VaultPin | None, *, what: str) -> None:
    """The copy belongs to the pinned vault and is signed by the pinned key (generation not compared)."""
    if pin is not None and (header.vault_id != pin.vault_id or header.signing_key != pin.signing_key):
        raise VaultUntrusted(
            f"{what} is not signed by the vault this agent trusts "
            f"(its key {p.fingerprint(header.signing_key)}, pinned {p.fingerprint(pin.signing_key)})"
        )


def check_copy(path: Path, *, pin_path: Path | None = None, full: bool = True) -> Checked:
    """Read a copy back and check it without a token: manifest (if any), format, signature, pin, index.

    :param full: also check every index node against the signed root (O(n), as ``vault verify``).
    :raises VaultIntegrityError: the bytes differ from the manifest, or a signature or node fails.
    :raises VaultUntrusted: the copy is signed by another key than the pinned one.
    """
    buf = FileBuffer.open_private(path, what="backup")
    try:
        sha = _hash(buf)
        checks = ["sha256"]
        manifest = None
        with contextlib.suppress(FileNotFoundError):
            manifest = Manifest.read(manifest_path(path))
        if manifest is not None and (manifest.sha256 != sha or manifest.size != buf.size):
            raise VaultIntegrityError(
                f"backup {path} does not match its manifest (sha256 {sha[:16]}..., manifest {manifest.sha256[:16]}...)"
            )
        vf = _parse(buf)
        checks += ["structure", "signature"]
        if manifest is not None and (
            manifest.vault_id != vf.header.vault_id.hex() or manifest.generation != vf.header.generation
        ):
            raise VaultIntegrityError(f"backup {path} is not the vault and generation its manifest names")
        if pin_path is not None:
            check_pinned(vf.header, load_pin(pin_path), what=f"backup {path}")
            checks.append("pinned-key")
        if full and isinstance(vf, fmt.VaultFile):
            IndexReader(vf).verify()
            checks.append("index")
        return Checked(path, vf, sha, buf.size, manifest, checks)
    except BaseException:
        buf.close()
        raise


def _copy(src: FileBuffer, fd: int) -> None:
    """Every byte of ``src`` to ``fd``: in the kernel where it can (the copy is hashed when read back)."""
    offset = 0
    while offset < src.size:
        try:
            done = os.copy_file_range(src.fd, fd, min(src.size - offset, 1 << 24), offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            done = 0
        if done <= 0:  # another file system, or not supported: plain reads and writes
            chunk = src[offset : min(src.size, offset + _CHUNK)]
            write_all(fd, chunk)
            done = len(chunk)
        offset += done


def write_backup(
    vault_path: Path,
    dest: Path,
    *,
    pin_path: Path | None = None,
    keep: int | None = None,
    full: bool = True,
    now: float | None = None,
) -> Backup:
    """Copy ``vault_path`` into ``dest`` with its manifest, check the copy, then rotate ``dest``.

    The source is read through one descriptor, so a writer renaming a new wallet.dat meanwhile does
    not mix two files. A copy of the same bytes already in ``dest`` is checked and reused.

    :raises BackupError: ``dest`` cannot be written (full, read-only): nothing else was changed.
    :raises VaultIntegrityError: the copy read back differs, or the source does not verify.
    """
    src = FileBuffer.open_private(vault_path)
    try:
        vf = _parse(src)
        h = vf.header
        check_pinned(h, load_pin(pin_path) if pin_path is not None else None, what=str(vault_path))
        with _writing(dest):
            if not dest.is_dir():
                ensure_private_dir(dest)
                os.chmod(dest, 0o700)
            sha = _hash(src)
            name = f"wallet-{h.vault_id.hex()[:8]}-g{h.generation:010d}-{sha[:12]}.dat"
            target = dest / name
            if target.exists() and manifest_path(target).exists():
                with contextlib.suppress(KmsAgentError):  # a damaged copy there is written again
                    checked = check_copy(target, pin_path=pin_path, full=full)
                    checked.close()
                    if checked.sha256 == sha and checked.manifest is not None:
                        return Backup(target, checked.manifest, reused=True)
            with replacing(target) as fd:
                _copy(src, fd)
            ts = time.time() if now is None else now
            manifest = Manifest(
                format=MANIFEST_FORMAT,
                file=name,
                vault_id=h.vault_id.hex(),
                generation=h.generation,
                fingerprint=p.fingerprint(h.signing_key),
                time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)),
                created_at=int(ts),
                sha256=sha,
                size=src.size,
                version=fmt.VERSION if isinstance(vf, fmt.VaultFile) else fmt.VERSION_V1,
            )
            try:
                with replacing(manifest_path(target)) as fd:
                    write_all(fd, (json.dumps(manifest.to_json(), indent=2) + "\n").encode())
                checked = check_copy(target, pin_path=pin_path, full=full)
            except BaseException:
                for path in (target, manifest_path(target)):
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
            checked.close()
            rotate(dest, keep if keep is not None else keep_count(), h.vault_id.hex())
            return Backup(target, manifest)
    finally:
        src.close()


def backups_in(dest: Path, vault_id: str | None = None) -> list[Backup]:
    """The backups in ``dest`` (of one vault, if given), oldest first: by time, then generation.

    By time rather than generation: after a rollback, new changes reuse lower generation numbers,
    and rotation must not remove them before the copies of the abandoned, newer-numbered ones.
    """
    found: list[Backup] = []
    if not dest.is_dir():
        return found
    for path in dest.glob("wallet-*.dat"):
        try:
            manifest = Manifest.read(manifest_path(path))
        except (FileNotFoundError, VaultIntegrityError):
            continue
        if vault_id is None or manifest.vault_id == vault_id:
            found.append(Backup(path, manifest))
    return sorted(found, key=lambda b: (b.manifest.created_at, b.manifest.generation, b.path.name))


def rotate(dest: Path, keep: int, vault_id: str) -> list[Path]:
    """Remove all but the ``keep`` newest copies of ``vault_id`` in ``dest`` (copy and manifest)."""
    removed = []
    for old in backups_in(dest, vault_id)[:-keep] if keep > 0 else []:
        for path in (old.path, old.manifest_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(old.path)
    return removed


#: The last file this process backed up before a save, by its identity, and the copy made.
_DONE: dict[tuple[object, ...], Backup] = {}


def before_save(vault_path: Path) -> Backup | None:
    """The save hook: back up the wallet.dat about to be replaced (None when there is none yet).

    Called under the writer lock, after the file was loaded and checked, so the pin is not read
    again and the index is not walked: the copy is checked byte for byte (SHA-256 read back),
    parsed and its signature verified.

    :raises BackupError: the copy could not be written; the caller must not change the vault.
    """
    try:
        st = os.stat(vault_path)
    except FileNotFoundError:
        return None
    dest = backup_dir(vault_path)
    # The same file (same inode, size, times) already copied by this process: once is enough (a
    # policy change backs up before its audit rows, then its save would do it again).
    key = (str(vault_path), str(dest), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    done = _DONE.get(key)
    if done is not None and done.path.exists():
        return done
    try:
        backup = write_backup(vault_path, dest, full=False)
        _DONE.clear()
        _DONE[key] = backup
        return backup
    except BackupError as exc:
        raise BackupError(
            f"refusing to change the vault: {exc.message}; wallet.dat was left as it was", hint=exc.hint
        ) from None


# --- off-host copies -------------------------------------------------------------------------------
def _rclone(*args: str, stdout: int | None = None) -> subprocess.Popen[bytes]:
    exe = shutil.which("rclone")
    if exe is None:
        raise BackupError("rclone is not installed", hint="apt-get install rclone (scripts/bootstrap does, as root)")
    return subprocess.Popen([exe, *args], stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes], what: str) -> None:
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        last = (stderr or b"").decode(errors="replace").strip().splitlines()
        raise BackupError(f"rclone could not {what}: {last[-1] if last else f'exit {proc.returncode}'}")


def rclone_join(remote: str, name: str) -> str:
    return remote + name if remote.endswith((":", "/")) else f"{remote}/{name}"


def rclone_copy(backup: Backup, remote: str) -> dict[str, Any]:
    """Copy a checked local backup and its manifest to an rclone remote, then download it and compare.

    :param remote: ``REMOTE:PATH`` as rclone names it (its credentials stay in rclone's own config).
    :raises BackupError: rclone is missing or failed, or the remote copy's SHA-256 differs.
    """
    target = rclone_join(remote, backup.path.name)
    _finish(_rclone("copyto", str(backup.path), target), f"copy {backup.path.name} to {target}")
    _finish(
        _rclone("copyto", str(backup.manifest_path), rclone_join(remote, backup.manifest_path.name)),
        f"copy the manifest to {remote}",
    )
    proc = _rclone("cat", target, stdout=subprocess.PIPE)
    digest, size = hashlib.sha256(), 0
    assert proc.stdout is not None
    for chunk in iter(lambda: proc.stdout.read(_CHUNK) if proc.stdout else b"", b""):
        digest.update(chunk)
        size += len(chunk)
    _finish(proc, f"read {target} back")
    if digest.hexdigest() != backup.manifest.sha256 or size != backup.manifest.size:
        raise BackupError(f"the copy at {target} does not match the local backup (sha256 {digest.hexdigest()[:16]}...)")
    return {"remote": target, "sha256": digest.hexdigest(), "size": size, "checked": "downloaded, sha256 matches"}


# --- restoring ---------------------------------------------------------------------------------------
def revived(backup: VaultHeader, current: VaultHeader | None) -> dict[str, Any]:
    """What putting ``backup`` in place of ``current`` would bring back, or lose."""
    if current is None:
        return {}
    out: dict[str, Any] = {}
    now_slots = {s.slot_id for s in current.slots}
    names = {op.operator_id: op.name for op in backup.operators}
    slots = [f"{s.label} ({names.get(s.operator_id, '?')})" for s in backup.slots if s.slot_id not in now_slots]
    if slots:
        out["token_slots_removed_since"] = slots
    now_ops = {op.operator_id for op in current.operators}
    ops = [op.name for op in backup.operators if op.operator_id not in now_ops]
    if ops:
        out["operators_removed_since"] = ops
    new_ops = [op.name for op in current.operators if op.operator_id not in names]
    if new_ops:
        out["operators_added_since"] = new_ops
    if backup.quorum != current.quorum:
        out["quorum"] = {"backup": backup.quorum, "current": current.quorum}
    old_policy, new_policy = backup.policy.get("generation"), current.policy.get("generation")
    if backup.policy != current.policy:
        out["policy"] = {"backup_generation": old_policy, "current_generation": new_policy}
    if (backup.recovery.nonce, backup.recovery.wrapped) != (current.recovery.nonce, current.recovery.wrapped):
        out["recovery_shares_replaced_since"] = True
    if backup.signing_key != current.signing_key:
        out["data_key_rotated_since"] = True
    if backup.wallet_count != current.wallet_count:
        out["wallets"] = {"backup": backup.wallet_count, "current": current.wallet_count}
    return out


def describe(diff: dict[str, Any]) -> list[str]:
    """One line per revived item, for an operator."""
    lines = []
    if "token_slots_removed_since" in diff:
        lines.append("token slots removed since: " + ", ".join(diff["token_slots_removed_since"]))
    if "operators_removed_since" in diff:
        lines.append("operators removed since: " + ", ".join(diff["operators_removed_since"]))
    if "operators_added_since" in diff:
        lines.append("operators added since would be dropped: " + ", ".join(diff["operators_added_since"]))
    if "quorum" in diff:
        lines.append(f"quorum {diff['quorum']['backup']} instead of {diff['quorum']['current']}")
    if "policy" in diff:
        pol = diff["policy"]
        lines.append(f"an older policy (generation {pol['backup_generation']}, now {pol['current_generation']})")
    if diff.get("recovery_shares_replaced_since"):
        lines.append("recovery shares replaced since would work again")
    if diff.get("data_key_rotated_since"):
        lines.append("the data key from before a rotation (tokens removed since open it)")
    if "wallets" in diff:
        w = diff["wallets"]
        lines.append(f"{w['backup']} wallets instead of {w['current']} (wallets added since are lost)")
    return lines


@dataclass
class Restored:
    path: Path
    sha256: str
    generation: int
    previous_generation: int | None
    rollback: bool
    revived: dict[str, Any]
    pin: VaultPin
    safety_backup: Backup | None


def _bare(fingerprint: str) -> str:
    return "".join(c for c in fingerprint.lower() if c not in ": ")


def _current_header(vault_path: Path) -> VaultHeader | None:
    """The live file's header, if there is a readable one (a damaged one is what a restore replaces)."""
    try:
        buf = FileBuffer.open_private(vault_path)
    except Exception:
        return None
    try:
        return _parse(buf).header
    except Exception:
        return None
    finally:
        buf.close()


def restore(
    backup_path: Path,
    vault_path: Path,
    pin_path: Path,
    *,
    allow_rollback: bool = False,
    trust: str | None = None,
    record: Callable[[Checked, dict[str, Any], bool, int | None], None] | None = None,
) -> Restored:
    """Replace ``vault_path`` with a checked backup, atomically, under the writer lock; move the pin.

    :param trust: the fingerprint printed at init, required when nothing is pinned yet (a fresh
        machine: ``vault trust`` semantics) or when the backup is signed by another key than the pin.
    :param record: called after every check passed, just before wallet.dat is replaced, with
        (the checked copy, what it revives, whether it is a rollback, the pinned generation): the
        caller audits there, so a failed audit leaves the vault as it was.
    :raises VaultRollback: an older generation (or a fork) without ``allow_rollback``; the message
        names what it would revive.
    :raises VaultUntrusted: no pin and no matching ``trust``; another key than the pinned one.
    """
    with writer_lock(pin_path.parent):
        checked = check_copy(backup_path, full=True)
        try:
            h = checked.header
            pin = load_pin(pin_path)
            fp = checked.fingerprint
            trusted = trust is not None and _bare(trust) == _bare(fp)
            if trust is not None and not trusted:
                raise VaultUntrusted(f"the backup is signed by {fp}, not {trust}: refusing to restore it")
            if pin is None and not trusted:
                raise VaultUntrusted(
                    "this agent has not pinned a vault yet, so it cannot tell this backup from an impostor",
                    hint=f"if {fp} is the fingerprint printed at init, restore with --trust '{fp}'",
                )
            if pin is not None and h.vault_id != pin.vault_id and not trusted:
                check_pinned(h, pin, what=f"backup {backup_path}")  # another vault altogether
            current = _current_header(vault_path)
            diff = revived(h, current)
            other_key = pin is not None and h.signing_key != pin.signing_key
            rollback = pin is not None and (
                other_key
                or h.generation < pin.generation
                or (h.generation == pin.generation and checked.file.header_mac != pin.header_mac)
            )
            if pin is not None and rollback and (not allow_rollback or (other_key and not trusted)):
                older = (
                    f"generation {h.generation}, older than the pinned generation {pin.generation}"
                    if h.generation < pin.generation
                    else f"generation {h.generation}, which is not the copy this agent pinned"
                )
                if other_key:
                    older += f", signed by another data key ({fp}; pinned {p.fingerprint(pin.signing_key)})"
                what = describe(diff) or ["no header change (wallet secrets as they were then)"]
                raise VaultRollback(
                    f"refusing to restore {backup_path}: it is {older}. It would revive: " + "; ".join(what),
                    hint=(
                        f"restore a newer backup; or, if reviving these is intended and {fp} is the fingerprint "
                        f"printed when that key was made, pass --allow-rollback --trust '{fp}'"
                        if other_key
                        else "restore a newer backup, or pass --allow-rollback if reviving these is intended"
                    ),
                )
            # The file about to be replaced is backed up first (a damaged one cannot be, and is not
            # needed); then the audit row, so a failure of either leaves wallet.dat as it was.
            safety = before_save(vault_path) if current is not None else None
            if record is not None:
                record(checked, diff, rollback, pin.generation if pin is not None else None)
            buf = FileBuffer.open_private(backup_path, what="backup")
            try:
                with replacing(vault_path) as fd:
                    _copy(buf, fd)
                    if _hash(FileView(fd, buf.size)) != checked.sha256:  # read back: the bytes checked
                        raise VaultIntegrityError(f"backup {backup_path} changed while it was restored")
            finally:
                buf.close()
            new_pin = VaultPin(h.vault_id, h.signing_key, h.generation, checked.file.header_mac)
            save_pin(pin_path, new_pin)
            return Restored(
                vault_path,
                checked.sha256,
                h.generation,
                pin.generation if pin is not None else None,
                rollback,
                diff,
                new_pin,
                safety,
            )
        finally:
            checked.close()


def verify_digest(sha256_hex: str) -> bytes:
    """What each token signs when ``backup verify`` proves a copy unlocks: bound to the copy's bytes."""
    return p.sha256(p.DOMAIN + b"backup-verify\0" + bytes.fromhex(sha256_hex))
