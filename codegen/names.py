"""Safe Python spellings for the untrusted strings inside a ``.pt2``.

Every name in an archive (graph values, parameters, module paths, class names, dict keys,
stack traces) is file content, not code. Generated source only ever contains:

* identifiers made by :func:`identifier` / :class:`Scope` (``[A-Za-z_][A-Za-z0-9_]*``, never a
  keyword, never a name the generated module needs, never ``l``/``O``/``I``),
* string literals made by :func:`string_literal` (ASCII, every quote and control character
  escaped),
* comments made by :func:`comment` (one printable-ASCII line).

>>> identifier("x; import os")
'x__import_os'
>>> identifier("0"), identifier("class"), identifier("l")
('v_0', 'class_', 'l_')
>>> print(string_literal('say "hi"\\n'))
'say "hi"\\n'
>>> comment("x = 1\\n import os")
'x = 1 import os'
>>> scope = Scope()
>>> scope.claim("relu"), scope.claim("relu"), scope.claim("relu_1")
('relu', 'relu_1', 'relu_1_1')
"""

from __future__ import annotations

import builtins
import keyword
import re

_NOT_IDENTIFIER_CHAR = re.compile(r"[^A-Za-z0-9_]")
_MAX_IDENTIFIER = 60
_MAX_COMMENT = 100
# Enough for whitespace-collapsing to still leave a full comment in any real source line.
COMMENT_SCAN = 8 * _MAX_COMMENT

# Names the generated module itself binds or reads: a sanitized name must never shadow them.
MODULE_NAMES = frozenset(
    {
        "torch",
        "nn",
        "F",
        "math",
        "operator",
        "namedtuple",
        "self",
        "super",
        "from_pt2",
        "load_safetensors",
        "TIED_WEIGHTS",
        "CONSTANTS",
        "multihead_self_attention",
    }
)
# pycodestyle E741: easily confused with 1 and 0.
_AMBIGUOUS = frozenset({"l", "O", "I"})
_RESERVED = (
    MODULE_NAMES
    | _AMBIGUOUS
    | frozenset(keyword.kwlist)
    | frozenset(keyword.softkwlist)
    | frozenset(dir(builtins))
)


def identifier(raw: object, fallback: str = "v") -> str:
    """A valid, non-reserved Python identifier spelled like ``raw`` as far as possible.

    Characters outside ``[A-Za-z0-9_]`` become ``_``; a leading digit gets ``fallback + "_"``
    in front; reserved names (keywords, builtins, the generated module's own names) get a
    trailing ``_``. Never empty, at most 60 characters.
    """
    text = _NOT_IDENTIFIER_CHAR.sub("_", str(raw))[:_MAX_IDENTIFIER]
    if not text.strip("_"):
        text = fallback + text
    if text[0].isdigit():
        text = f"{fallback}_{text}"
    if text.startswith("__"):  # dunder names are Python's own (`__class__`, `__dict__`)
        text = fallback + text
    if text in _RESERVED:
        text += "_"
    return text


def class_identifier(raw: object) -> str:
    """A class name: :func:`identifier`, with a capital first letter where it has none."""
    text = identifier(raw, fallback="Module")
    if text[0] == "_":
        text = "Module" + text
    return text[0].upper() + text[1:]


def list_index(text: str) -> int | None:
    """``text`` as a list index when it spells one the way Python writes ints (``"0"``,
    ``"12"``), else None. ``str.isdigit`` alone also passes ``"²"`` (which ``int`` refuses)
    and 5,000-digit names (which ``int`` refuses past its digit limit)."""
    if text.isascii() and text.isdigit() and len(text) <= 18 and (text == "0" or text[0] != "0"):
        return int(text)
    return None


def is_plain_attribute(name: str) -> bool:
    """True when ``self.<name>`` may be written as is (otherwise use ``getattr``)."""
    # `self.__x` would be name-mangled inside a class body; `self.__x__` is not
    return (
        name.isascii()
        and name.isidentifier()
        and not keyword.iskeyword(name)
        and not (name.startswith("__") and not name.endswith("__"))
    )


class Scope:
    """Unique identifiers within one namespace (a function body, a class, the module).

    ``claim(raw)`` sanitizes ``raw`` and appends ``_1``, ``_2``, ... until the name is free;
    ``reserve(name)`` marks a name as taken without returning a new one.
    """

    def __init__(self, taken: set[str] | frozenset[str] = frozenset()):
        self._taken = set(taken)
        # the last number each stem took: names are never released, so the numbers below it
        # are still taken, and the k-th `relu` costs one look-up instead of k
        self._numbered: dict[str, int] = {}

    def claim(self, raw: object, fallback: str = "v") -> str:
        base = identifier(raw, fallback)
        name = base
        stem = base.rstrip("_") or base  # `sum_` numbers as `sum_1`, not `sum__1`
        n = self._numbered.get(stem, 0)
        while name in self._taken or name in _RESERVED:
            n += 1
            name = f"{stem}_{n}"
        if name != base:
            self._numbered[stem] = n
        self._taken.add(name)
        return name

    def reserve(self, name: str) -> None:
        self._taken.add(name)

    def __contains__(self, name: str) -> bool:
        return name in self._taken


def string_literal(text: object) -> str:
    """A double-quoted ASCII string literal (single-quoted when that needs fewer escapes,
    as ``ruff format`` prefers) that evaluates back to ``str(text)``."""
    s = str(text)
    quote = "'" if s.count('"') > s.count("'") else '"'
    out = [quote]
    for ch in s:
        code = ord(ch)
        if ch == quote or ch == "\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append(quote)
    return "".join(out)


def comment(text: object) -> str:
    """``text`` as the body of a one-line comment: printable ASCII only (control, bidi and
    other non-ASCII characters become ``?``), whitespace collapsed, at most 100 characters.
    Only the first few hundred characters are looked at, however long ``text`` is."""
    raw = str(text)
    head = raw[:COMMENT_SCAN]  # cut before the per-character work: a stack trace may be 500 MB
    s = "".join(ch if 0x20 <= ord(ch) < 0x7F else ("?" if not ch.isspace() else " ") for ch in head)
    s = " ".join(s.split())
    if len(s) > _MAX_COMMENT or len(raw) > len(head):
        s = s[: _MAX_COMMENT - 3].rstrip() + "..."
    return s


def stripped_stem(raw: object) -> str:
    """A graph value name without export's numbering: ``conv2d_5`` → ``conv2d``,
    ``relu__3`` → ``relu``, ``getitem`` → ``getitem``. Class instances then read alike."""
    s = str(raw)
    s = re.sub(r"(_\d+)+$", "", s)
    s = s.rstrip("_")
    return s or str(raw)
