"""Archive text made safe to write to a terminal.

Strings from a ``.pt2`` can hold terminal control sequences (an ESC that recolours, clears or
retitles the terminal), bidirectional overrides that make text read other than it is, and
lone surrogates that cannot be encoded at all. :func:`printable` shows every such character
as a Python escape and leaves the rest alone.

>>> printable("layer\\x1b[2Jname")
'layer\\\\x1b[2Jname'
>>> printable("ok\\u202eevil")
'ok\\\\u202eevil'
>>> printable("lone \\ud800 surrogate")
'lone \\\\ud800 surrogate'
>>> printable("two\\nlines", keep_newlines=True)
'two\\nlines'
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 and C1 controls, DEL, bidirectional controls and marks, zero-width and other invisible
# format characters, the line and paragraph separators, tag characters, and surrogates
# (which only occur lone in a str decoded from JSON escapes).
_INVISIBLE = "\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff\U000e0000-\U000e007f"
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_INVISIBLE}]")
_UNSAFE_KEEPING_NEWLINES = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_INVISIBLE}]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control, bidi and surrogate characters shown as escapes (``\\x1b``)."""
    pattern = _UNSAFE_KEEPING_NEWLINES if keep_newlines else _UNSAFE
    return pattern.sub(_escape, text)
