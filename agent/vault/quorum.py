"""k-of-n splitting of the data key across operators, and of the recovery secret across officers.

SLIP-39 (``shamir-mnemonic``, the reference implementation) rather than our own GF(256) code: it
is reviewed, its shares carry an RS1024 checksum (a corrupted share is detected, not silently
combined into a wrong key), and the recovery officers get words they can write down.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.errors import QuorumNotMet, UsageError

# Operator shares are wrapped by token keys, so SLIP-39's passphrase stretching protects nothing
# there; exponent 0 keeps unlock fast. Recovery words are handled by people: use the default (1).
_OPERATOR_ITERATION_EXPONENT = 0
_RECOVERY_ITERATION_EXPONENT = 1


def split(secret: bytes | bytearray, threshold: int, count: int, *, for_people: bool = False) -> list[str]:
    """Return ``count`` share mnemonics, any ``threshold`` of which rebuild ``secret``."""
    from shamir_mnemonic import generate_mnemonics  # only when splitting: commands that read no secret skip it

    if not 1 <= threshold <= count <= 16:
        raise UsageError(f"cannot split {threshold}-of-{count}: need 1 <= quorum <= shares <= 16")
    exponent = _RECOVERY_ITERATION_EXPONENT if for_people else _OPERATOR_ITERATION_EXPONENT
    if threshold == 1:
        # SLIP-39 forbids 1-of-n member shares; n single-member groups with group threshold 1 is
        # the same access structure.
        groups = generate_mnemonics(1, [(1, 1)] * count, bytes(secret), iteration_exponent=exponent)
        return [group[0] for group in groups]
    shares: list[str] = generate_mnemonics(1, [(threshold, count)], bytes(secret), iteration_exponent=exponent)[0]
    return shares


def combine(shares: Sequence[str], threshold: int) -> bytearray:
    """Rebuild the secret from at least ``threshold`` distinct shares."""
    from shamir_mnemonic import MnemonicError, combine_mnemonics

    distinct = list(dict.fromkeys(" ".join(s.split()).lower() for s in shares))
    if len(distinct) < threshold:
        raise QuorumNotMet(f"{len(distinct)} of the {threshold} shares needed")
    chosen = distinct[:1] if threshold == 1 else distinct[:threshold]
    try:
        return bytearray(combine_mnemonics(chosen))
    except MnemonicError as exc:
        raise UsageError(f"the shares do not combine: {exc}") from None
