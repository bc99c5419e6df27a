"""BIP-39 seeds and BIP-32 derivation over embit (libsecp256k1 through ctypes), shared by every family.

embit is used rather than bip-utils on purpose: it imports in ~20 ms against ~300 ms, which is most
of the CLI's budget for "address N of wallet X". Extended keys whose version bytes embit does not
know (Litecoin's ``Ltub``/``ttub``) are handled by swapping the 4 version bytes around embit, which
only ever sees Bitcoin versions.

embit keeps private keys in immutable ``bytes``; those copies cannot be wiped and live until the
garbage collector frees them. What we hand back to callers is always a fresh ``bytearray``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from agent.errors import ChainError, UsageError

if TYPE_CHECKING:
    from embit.bip32 import HDKey

HARDENED = 0x80000000
#: Bitcoin mainnet / testnet public and private BIP-32 versions: what embit is always given.
XPUB = bytes.fromhex("0488b21e")
XPRV = bytes.fromhex("0488ade4")
TPUB = bytes.fromhex("043587cf")
TPRV = bytes.fromhex("04358394")
PRIVATE_FOR = {XPUB: XPRV, TPUB: TPRV}


def parse_path(path: str) -> list[int]:
    """``m/44'/0'/0'/0`` -> child numbers."""
    parts = path.split("/")
    if parts[0] != "m":
        raise ValueError(f"bad derivation path {path!r}")
    out = []
    for p in parts[1:]:
        hardened = p.endswith(("'", "h"))
        n = int(p.rstrip("'h"))
        out.append(n + HARDENED if hardened else n)
    return out


def require_native_secp256k1() -> None:
    """Refuse to sign unless embit loaded its bundled libsecp256k1.

    embit silently falls back to a pure-Python EC implementation (not constant-time) when its ctypes
    library cannot be loaded; a signer must not run on that.

    :raises ChainError: the native library is not in use.
    """
    from embit.util import secp256k1

    if not secp256k1.ecdsa_sign.__module__.endswith("ctypes_secp256k1"):
        raise ChainError(
            "embit is not using its native libsecp256k1 (pure-Python fallback); refusing to sign",
            hint="reinstall embit so that its bundled libsecp256k1 loads",
        )


def seed_from_mnemonic(mnemonic: str, passphrase: str = "") -> bytes:
    """BIP-39 seed from an English mnemonic; whitespace and case are normalised.

    Tatum uses no passphrase; the parameter exists for the published BIP-39 vectors ("TREZOR").

    :raises UsageError: bad word or checksum; the message never quotes the mnemonic.
    """
    import unicodedata

    from embit import bip39

    words = " ".join(mnemonic.split()).lower()
    if not bip39.mnemonic_is_valid(words):
        raise UsageError("that is not a valid BIP-39 English mnemonic (bad word or checksum)")
    seed: bytes = bip39.mnemonic_to_seed(words, unicodedata.normalize("NFKD", passphrase))
    return seed


def mnemonic_from_entropy(entropy: bytes | bytearray) -> str:
    """English BIP-39 mnemonic for 16..32 bytes of entropy (a multiple of 4)."""
    from embit import bip39

    if len(entropy) not in (16, 20, 24, 28, 32):
        raise UsageError("BIP-39 entropy must be 16, 20, 24, 28 or 32 bytes")
    words: str = bip39.mnemonic_from_bytes(bytes(entropy))
    return words


def node_from_seed(seed: bytes) -> HDKey:
    from embit.bip32 import HDKey

    return HDKey.from_seed(seed)


def root_from_mnemonic(mnemonic: str) -> HDKey:
    from embit.bip32 import HDKey

    return HDKey.from_seed(seed_from_mnemonic(mnemonic))


def derive_private(mnemonic: str, path: str) -> HDKey:
    return root_from_mnemonic(mnemonic).derive(parse_path(path))


def private_key_at(mnemonic: str, path: str) -> bytearray:
    """32-byte private key at ``path``; the caller wipes it."""
    node = derive_private(mnemonic, path)
    return bytearray(node.key.secret)


def xpub_at(mnemonic: str, path: str, version: bytes) -> str:
    """Serialised extended public key at ``path`` with the given 4 version bytes."""
    node = derive_private(mnemonic, path).to_public(version=XPUB)
    return encode_xkey(node, version)


def encode_xkey(node: HDKey, version: bytes) -> str:
    from embit import base58

    raw: bytes = node.serialize()
    return str(base58.encode_check(version + raw[4:]))


def decode_xpub(text: str, allowed: dict[bytes, Any]) -> tuple[HDKey, Any]:
    """Parse an extended *public* key whose version is one of ``allowed`` (version -> tag).

    Returns the key (re-tagged with a Bitcoin version for embit) and the tag of the version found.
    Parsed keys are cached: a busy agent derives many addresses from few xpubs.

    :raises UsageError: not base58check, a private key, a version not allowed here, or a bad point.
        Messages never quote the text: an ``xprv`` pasted by mistake must not reach a log.
    """
    from embit import base58

    version, node = _parse_xpub(text.strip())
    if version not in allowed:
        raise UsageError(
            "extended key version does not match this chain and network "
            f"(got {base58.encode_check(version + bytes(74))[:4]}…)"
        )
    return node, allowed[version]


@functools.lru_cache(maxsize=256)
def _parse_xpub(text: str) -> tuple[bytes, HDKey]:
    from embit import base58
    from embit.bip32 import HDKey

    try:
        raw = base58.decode_check(text)
    except Exception:
        raise UsageError("not an extended public key (bad base58 or checksum)") from None
    if len(raw) != 78:
        raise UsageError("not an extended public key (wrong length)")
    if raw[45] == 0:
        raise UsageError("that is an extended PRIVATE key; give the xpub")
    try:
        node = HDKey.parse(XPUB + bytes(raw[4:]))
    except Exception:
        raise UsageError("not an extended public key (invalid public key or header)") from None
    return bytes(raw[:4]), node


def child_pubkey(node: HDKey, *path: int) -> bytes:
    """Compressed SEC public key of a non-hardened descendant (BIP-32 CKDpub).

    The same steps as embit's ``HDKey.child`` (HMAC-SHA512, then libsecp256k1 point addition), minus
    building an ``HDKey`` per level, whose constructor base58-encodes itself as a sanity check and
    costs more than the derivation.
    """
    import hmac

    from embit.util import secp256k1

    sec: bytes = node.key.sec()
    chain_code: bytes = node.chain_code
    for i in path:
        if not 0 <= i < HARDENED:
            raise UsageError(f"address index must be 0..{HARDENED - 1}, got {i}")
        raw = hmac.new(chain_code, sec + i.to_bytes(4, "big"), "sha512").digest()
        try:
            point = secp256k1.ec_pubkey_add(secp256k1.ec_pubkey_parse(sec), raw[:32])
        except ValueError:  # probability below 2^-127; BIP-32 says the index is invalid
            raise UsageError(f"BIP-32 index {i} is invalid for this key; use another index") from None
        sec, chain_code = secp256k1.ec_pubkey_serialize(point), raw[32:]
    return sec


def hash160(data: bytes) -> bytes:
    from embit import hashes

    out: bytes = hashes.hash160(data)
    return out


def pubkey_from_private(key: bytes | bytearray, *, compressed: bool = True) -> bytes:
    """SEC public key for a 32-byte secret.

    :raises UsageError: not a valid secp256k1 secret (zero or >= n).
    """
    from embit.util import secp256k1

    if len(key) != 32:
        raise UsageError("a private key must be 32 bytes")
    try:
        pub = secp256k1.ec_pubkey_create(bytes(key))
    except Exception:
        raise UsageError("not a valid secp256k1 private key (out of range)") from None
    flag = secp256k1.EC_COMPRESSED if compressed else secp256k1.EC_UNCOMPRESSED
    out: bytes = secp256k1.ec_pubkey_serialize(pub, flag)
    return out


def uncompress(sec: bytes) -> bytes:
    from embit.util import secp256k1

    out: bytes = secp256k1.ec_pubkey_serialize(secp256k1.ec_pubkey_parse(sec), secp256k1.EC_UNCOMPRESSED)
    return out
