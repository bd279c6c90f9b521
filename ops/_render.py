"""Helpers shared by the family modules: schema-aware call rendering and sample makers.

Renderers see argument *source text* only (``Call.args`` maps schema names to text), so the
helpers here decide from text alone: an argument is left out when its text is the schema
default (or the default of the Python function being written), and arguments after a gap go
by keyword so no value lands in the wrong parameter.

Parameter specs are ``"name"`` (schema and Python names agree) or ``"schema:python"``
(``"self:input"`` for ``torch.sum(input, ...)``).
"""

from __future__ import annotations

import functools
import json
import re

from pt2interp.ops.registry import Call, _wrap, infix

# Integer enum defaults in schemas, as the Python objects they stand for.
_MEMORY_FORMAT_DEFAULTS = {0: "torch.contiguous_format", 1: "torch.preserve_format"}

# `9223372036854775807` is what export writes for an open-ended slice (`x[1:]`).
INT64_MAX = 2**63 - 1

_INT_LITERAL = re.compile(r"-?[0-9]+")


@functools.cache
def overload(target: str):
    """The ``torch.ops`` overload of a registry key this package registered.

    Keys here come from the family modules' own tables, so the namespaces are walked directly.
    """
    import torch

    namespace, name, overload_name = target.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), name), overload_name)


@functools.cache
def schema_arguments(target: str) -> tuple:
    return tuple(overload(target)._schema.arguments)


@functools.cache
def schema_defaults(target: str) -> dict[str, frozenset[str]]:
    """Schema name → source texts meaning "the default" (no entry: no default)."""
    out = {}
    for a in schema_arguments(target):
        if not a.has_default_value():
            continue
        value = a.default_value
        texts = {repr(value)}
        if isinstance(value, str):  # codegen writes strings double-quoted, as ruff does
            texts.add(json.dumps(value))
        enum_type = str(getattr(a, "real_type", a.type))  # `.type` says int for enums
        if "MemoryFormat" in enum_type and value in _MEMORY_FORMAT_DEFAULTS:
            texts.add(_MEMORY_FORMAT_DEFAULTS[value])
        out[a.name] = frozenset(texts)
    return out


def _split_spec(spec: str) -> tuple[str, str]:
    schema_name, _, py_name = spec.partition(":")
    return schema_name, py_name or schema_name


def is_default(c: Call, name: str, defaults: dict[str, tuple[str, ...]] | None = None) -> bool:
    """True when ``name`` is absent or its text is the schema (or given Python) default."""
    if name not in c.args:
        return True
    text = c.args[name].strip()
    if defaults is not None and name in defaults:
        return text in defaults[name]
    return text in schema_defaults(c.target).get(name, ())


def pycall(c: Call, func: str, pos=(), kw=(), defaults=None) -> str:
    """``func(p1, p2, k=v)`` from schema arguments.

    ``pos`` go positionally while each is present and not at its default; once one is left
    out, the rest go by keyword. ``kw`` always go by keyword. ``defaults`` overrides the
    schema default texts where the Python function's defaults differ.
    """
    parts: list[str] = []
    positional = True
    for spec in pos:
        schema_name, py_name = _split_spec(spec)
        if is_default(c, schema_name, defaults):
            positional = False
            continue
        parts.append(c[schema_name] if positional else f"{py_name}={c[schema_name]}")
    for spec in kw:
        schema_name, py_name = _split_spec(spec)
        if not is_default(c, schema_name, defaults):
            parts.append(f"{py_name}={c[schema_name]}")
    return f"{func}({', '.join(parts)})"


def method(c: Call, name: str, pos=(), kw=(), receiver: str = "self", defaults=None) -> str:
    """``x.name(...)`` with ``x`` the ``receiver`` argument (see :func:`pycall`)."""
    return pycall(c, f"{_wrap(c[receiver])}.{name}", pos, kw, defaults)


def with_kw(call_src: str, *items: str) -> str:
    """Append fixed keyword arguments (``"mode='bilinear'"``) to a rendered ``f(...)``."""
    inner = call_src[:-1]
    sep = "" if inner.endswith("(") else ", "
    return f"{inner}{sep}{', '.join(items)})"


def raw(c: Call) -> str:
    """``torch.ops.<target>(...)``: the overload itself, for ops with no faithful Python
    spelling (multi-output internals) or argument values a readable form cannot express."""
    pos, kw = [], []
    for a in schema_arguments(c.target):
        (kw if a.kwarg_only else pos).append(a.name)
    return pycall(c, f"torch.ops.{c.target}", pos, kw)


def torch_fn(c: Call, func: str) -> str:
    """``func(...)`` with every schema argument under its own name (``self`` → ``input``):
    for public ``torch.*`` bindings generated from the same schema."""
    pos, kw = [], []
    for a in schema_arguments(c.target):
        spec = "self:input" if a.name == "self" else a.name
        (kw if a.kwarg_only else pos).append(spec)
    return pycall(c, func, pos, kw)


def split_list(text: str | None) -> list[str] | None:
    """Element texts of a list or tuple display (``"[a, b[0], f(c, d)]"``), else None."""
    if text is None:
        return None
    s = text.strip()
    # string literals may hold brackets and commas: such a display is not split
    if len(s) < 2 or (s[0], s[-1]) not in (("[", "]"), ("(", ")")) or "'" in s or '"' in s:
        return None
    items, depth, start = [], 0, 1
    for i, ch in enumerate(s[1:-1], start=1):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return None  # "(a)(b)": not one display
        elif ch == "," and depth == 0:
            items.append(s[start:i].strip())
            start = i + 1
    if depth != 0:
        return None
    last = s[start:-1].strip()
    if last:
        items.append(last)
    return items


def int_literal(text: str | None) -> int | None:
    if text is not None and _INT_LITERAL.fullmatch(text.strip()):
        return int(text)
    return None


def operand(src: str) -> str:
    """``_wrap`` that also parenthesizes negative literals, for the base of ``**``
    (``-2 ** x`` is ``-(2 ** x)``)."""
    s = _wrap(src)
    return f"({s})" if s.startswith("-") else s


# -- sample makers -------------------------------------------------------------------------
# A sample is ``gen -> (args, kwargs)``; these build one from per-argument makers so each
# entry states its sample in one line. A maker is a callable taking the generator, or a
# plain value used as is.


def sample(*makers, **kw_makers):
    def make(gen):
        args = tuple(_make(m, gen) for m in makers)
        kwargs = {k: _make(m, gen) for k, m in kw_makers.items()}
        return args, kwargs

    return make


def _make(maker, gen):
    if callable(maker):
        return maker(gen)
    if isinstance(maker, list):
        return [_make(m, gen) for m in maker]
    return maker


def _torch():
    import torch

    return torch


def randn(*shape, dtype=None):
    """Normal floats (float32 unless ``dtype``)."""
    return lambda gen: _torch().randn(shape, generator=gen, dtype=dtype)


def positive(*shape):
    """Floats in [0.5, 1.5): inputs for log/sqrt/variance-like arguments."""
    return lambda gen: _torch().rand(shape, generator=gen) + 0.5


def uniform(low, high, *shape):
    """Floats in [low, high)."""
    return lambda gen: _torch().rand(shape, generator=gen) * (high - low) + low


def randint(low, high, *shape):
    """int64 in [low, high)."""
    return lambda gen: _torch().randint(low, high, shape, generator=gen)


def randbool(*shape):
    return lambda gen: _torch().rand(shape, generator=gen) > 0.5


def perm(n):
    """A random permutation of ``range(n)`` (int64): indices with no repeats."""
    return lambda gen: _torch().randperm(n, generator=gen)


def torch_attr(name: str):
    """A ``torch`` attribute (``torch_attr("float64")``), looked up when the sample is made:
    importing the op table does not import torch."""
    return lambda gen: getattr(_torch(), name)


def cpu(gen):
    """The CPU device (a maker, like the others)."""
    return _torch().device("cpu")


# -- renderer factories: one entry per table row -------------------------------------------


def call_renderer(func: str, pos=(), kw=(), defaults=None, fixed=()):
    """A renderer writing ``func(...)`` (see :func:`pycall`); ``fixed`` keywords such as
    ``"inplace=True"`` are appended as given."""

    def render(c: Call) -> str:
        src = pycall(c, func, pos, kw, defaults)
        return with_kw(src, *fixed) if fixed else src

    return render


def method_renderer(name: str, pos=(), kw=()):
    """A renderer writing ``x.name(...)`` with ``x`` the ``self`` argument."""
    return lambda c: method(c, name, pos, kw)


def infix_renderer(symbol: str):
    """A renderer writing ``self <symbol> other``."""
    return lambda c: infix(c, symbol)


def binding_renderer(func: str):
    """A renderer writing the public ``torch.<op>`` binding with every schema argument
    (see :func:`torch_fn`)."""
    return lambda c: torch_fn(c, func)
