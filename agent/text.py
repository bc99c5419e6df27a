"""Text that reaches a person: free text made inert, and amounts in human units beside base units.

Anything that is not a number and did not come from our own code (a request's initiator, an
operator's reason, a token label, a warning quoting decoded data) can carry terminal control
sequences: an ANSI escape that moves the cursor can hide a line and draw a fake one, and a bidi
override can make an address read backwards. :func:`escape_text` turns every such character into a
visible escape before the text reaches a terminal, a CSV cell or a report, so the approver sees
``\\x1b[2K`` instead of an erased line.

Amounts are integers in base units (satoshi, wei, a token's smallest unit); :func:`format_units`
writes them in the coin's units with exact decimal arithmetic (never a float).
"""

from __future__ import annotations

import unicodedata

__all__ = ["escape_text", "format_units", "percent_text"]

#: Unicode categories made visible: controls (C0, DEL, C1), format characters (bidi embeddings,
#: overrides and isolates U+202A-U+202E and U+2066-U+2069, marks, zero-width joiners), surrogates
#: (lone halves from undecodable bytes), and the line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _visible(ch: str) -> str:
    code = ord(ch)
    if ch == "\\":
        return "\\\\"
    if code < 0x80 and not (code < 0x20 or code == 0x7F):
        return ch
    if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_text(value: object) -> str:
    """``str(value)`` with every control, format and separator character written as a visible escape.

    C0 controls (including tab, CR and LF), DEL and C1 controls become ``\\xNN``; other invisible
    characters (bidi overrides and isolates, zero-width characters, U+2028/U+2029, lone surrogates)
    become ``\\uNNNN``. A backslash becomes ``\\\\``, so an escape in the output always means the
    character was there, never that someone typed the four characters ``\\x1b``. The result is one
    line of printable text; everything else (letters in any script, punctuation, emoji) is kept.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case, without a per-character walk
    return "".join(_visible(ch) for ch in text)


def format_units(amount: int, decimals: int) -> str:
    """``amount`` base units written in units of ``10**decimals``, exactly, without trailing zeros.

    ``format_units(100000000000000000, 18) == "0.1"``, ``format_units(150000000, 8) == "1.5"``,
    ``format_units(7, 0) == "7"``.

    :raises ValueError: ``decimals`` is negative.
    """
    if decimals < 0:
        raise ValueError("decimals must not be negative")
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**decimals)
    if decimals == 0 or frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"


def percent_text(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole``, rounded down to two decimals (``"99.01 %"``).

    A ``whole`` of zero gives ``"all"`` when ``part`` is positive (nothing else moves) and ``"0 %"``
    otherwise.
    """
    if whole <= 0:
        return "all" if part > 0 else "0 %"
    hundredths = part * 10_000 // whole
    units, cents = divmod(hundredths, 100)
    return f"{units} %" if cents == 0 else f"{units}.{cents:02d}".rstrip("0") + " %"
