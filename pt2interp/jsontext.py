"""JSON from untrusted files, with a nesting limit of our own.

``json.loads`` bounds nesting through the interpreter: Python 3.11 raises ``RecursionError``
near the recursion limit (about 1000 levels), while 3.12 and later count C stack frames and
accept documents several thousand levels deep. So the same archive would be refused on one
Python and parsed on another, and whatever walks the parsed document would then hit
Python's limit somewhere else. :func:`loads` measures the depth itself, before parsing, and
refuses anything deeper than :data:`MAX_DEPTH` on every Python.

>>> loads(b'{"a": [1, [2, {"b": null}]]}')
{'a': [1, [2, {'b': None}]]}
>>> loads("[" * 500 + "]" * 500)
Traceback (most recent call last):
    ...
pt2interp.jsontext.NestingError: JSON nested too deeply (over 400 levels)
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "NestingError", "depth_exceeds", "loads"]

# Far above any real document (an exported program nests about 10 levels, 20 with nested
# control flow) and far below where Python 3.11's json.loads gives up.
MAX_DEPTH = 400

# Everything but quotes and brackets, deleted in one C-speed pass before the depth scan.
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')
# Both bracket kinds as one: depth does not depend on the kind, and one pattern is cheaper.
_ONE_BRACKET = bytes.maketrans(b"{}", b"[]")


class NestingError(ValueError):
    """A JSON document nests deeper than the limit (raised before any parsing)."""

    def __init__(self, limit: int):
        super().__init__(f"JSON nested too deeply (over {limit} levels)")
        self.limit = limit


def depth_exceeds(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the brackets of ``data`` outside strings nest deeper than ``limit``.

    Linear passes of bytes methods, no Python loop over characters: escaped backslashes and
    quotes are dropped first (a JSON backslash only ever occurs inside a string and always
    escapes the next character), then every byte but quotes and brackets, then the strings
    (now bare pairs of quotes with brackets between), and what is left is brackets alone.
    Each round then removes the innermost pairs: a document empties in as many rounds as it
    is deep. Malformed input is measured as well as it can be; ``json.loads`` names its fault.
    """
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = data.translate(None, _NOT_STRUCTURE)
    if b'"' in structure:
        structure = b"".join(structure.split(b'"')[0::2])
    brackets = structure.translate(_ONE_BRACKET)
    rounds = 0
    while brackets:
        # a run of openers longer than the depth still allowed is too deep, whatever follows
        if b"[" * (limit - rounds + 1) in brackets:
            return True
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):  # unbalanced: what remains is "]]][[[", all of it counts
            return rounds + inner.count(b"[") > limit
        brackets = inner
        rounds += 1
        if rounds > limit:
            return True
    return False


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` of a document no deeper than ``max_depth``.

    Raises :class:`NestingError` (a ``ValueError``) for a deeper one, and ``json``'s own
    ``ValueError`` for malformed text.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if depth_exceeds(raw, max_depth):
        raise NestingError(max_depth)
    try:
        return json.loads(data)
    except RecursionError:  # only on a nearly exhausted stack: the caller is already deep
        raise NestingError(max_depth) from None
