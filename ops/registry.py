"""The op table shared by the interpreter and codegen.

Each :class:`OpEntry` says how a node target runs (its kernel) and how it reads as Python
(its renderer). Entries are registered per family, one module each (``elementwise``,
``shape``, ``nn``, ...), with :func:`register`::

    @register("aten.add.Tensor", "aten.add_.Tensor", sample=binary_sample)
    def _add(c: Call) -> str:
        return infix(c, "+") if not c.has("alpha") else c.fn("torch.add", "self", "other", "alpha")

Targets are the archive's strings without the ``torch.ops.`` prefix (``aten.add.Tensor``,
``higher_order.cond``, ``_operator.getitem``). A target with no entry still runs when it
names an existing ``torch.ops`` overload (the generic fallback); :func:`resolve` never imports
or evaluates a target string, it only walks ``torch.ops`` namespaces.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pt2interp.errors import UnsupportedOpError
from pt2interp.ops import policy

_SEGMENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DUNDER_OP = re.compile(r"__[a-z]+__")
_TORCH_OPS_TARGET = re.compile(rf"^torch\.ops\.({_SEGMENT})\.({_SEGMENT})(?:\.({_SEGMENT}))?$")


@dataclass
class Call:
    """A node's arguments rendered as Python source, for an entry's renderer.

    ``args`` maps the op schema's argument names to source text (only arguments the node
    passes); ``positional`` lists sources in node order (higher-order ops have unnamed
    inputs); ``target`` is the registry key.
    """

    target: str
    args: dict[str, str]
    positional: list[str] = field(default_factory=list)
    keyword_names: frozenset[str] = frozenset()
    keyword_at: tuple[str | None, ...] = ()  # per entry of ``positional``: its keyword, or None

    @property
    def by_position(self) -> list[str]:
        """The sources of the arguments the node passes by position, in node order."""
        return [
            p
            for p, k in zip(self.positional, self.keyword_at or (None,) * len(self.positional))
            if k is None
        ]

    @property
    def keywords(self) -> list[tuple[str, str]]:
        """(name, source) of the arguments the node passes by keyword, in node order."""
        return [(k, p) for p, k in zip(self.positional, self.keyword_at) if k is not None]

    def __getitem__(self, name: str) -> str:
        return self.args[name]

    def has(self, name: str) -> bool:
        return name in self.args

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.args.get(name, default)

    def fn(self, func: str, *names: str, **renamed: str) -> str:
        """``func(a, b, key=c)``: ``names`` positional in order (missing ones stop the list),
        ``renamed`` maps a Python keyword to a schema name, emitted when present."""
        parts = []
        for n in names:
            if n not in self.args:
                break
            parts.append(self.args[n])
        for kw, n in renamed.items():
            if n in self.args:
                parts.append(f"{kw}={self.args[n]}")
        return f"{func}({', '.join(parts)})"

    def method(self, name: str, *names: str, receiver: str = "self", **renamed: str) -> str:
        """``x.name(a, b, key=c)`` with ``x`` the ``receiver`` argument."""
        return self.fn(f"{self.args[receiver]}.{name}", *names, **renamed)


Renderer = Callable[[Call], str]


@dataclass(frozen=True)
class OpEntry:
    """How one target runs and reads.

    ``kernel``: a callable taking the node's arguments as the op schema orders them, or None
    to call the ``torch.ops`` overload itself (the exact kernel the exporting program ran).
    ``render``: source text of a call. ``sample``: ``(args, kwargs)`` maker for tests
    (gets a ``torch.Generator``). ``family``: the module that registered it.
    """

    target: str
    family: str
    render: Renderer | None = None
    kernel: Callable | None = None
    sample: Callable | None = None


REGISTRY: dict[str, OpEntry] = {}


def register(
    *targets: str,
    kernel: Callable | None = None,
    sample: Callable | None = None,
    family: str | None = None,
):
    """Decorator registering a renderer for ``targets`` (see the module docstring)."""

    def wrap(render: Renderer | None):
        fam = family or (render.__module__.rsplit(".", 1)[-1] if render else "misc")
        for t in targets:
            if t in REGISTRY:
                raise ValueError(f"op {t} registered twice ({REGISTRY[t].family} and {fam})")
            REGISTRY[t] = OpEntry(t, fam, render, kernel, sample)
        return render

    return wrap


def registry_key(target: str) -> str:
    """``torch.ops.aten.add.Tensor`` → ``aten.add.Tensor``; other targets unchanged."""
    return target.removeprefix("torch.ops.")


def lookup(target: str) -> OpEntry | None:
    return REGISTRY.get(registry_key(target))


_RESOLVED: dict[str, object] = {}


def resolve_torch_op(target: str):
    """The ``torch.ops`` object a target string names, found only by walking namespaces.

    Raises :class:`UnsupportedOpError` for malformed targets, names outside ``torch.ops``
    namespaces, and ops this torch does not have.
    """
    op = _RESOLVED.get(target)
    if op is None:
        op = _RESOLVED[target] = _resolve_torch_op(target)
    return op


def _resolve_torch_op(target: str):
    import torch

    m = _TORCH_OPS_TARGET.match(target)
    # Dunder op names are real ATen ops (aten.__and__.Tensor); namespaces and overloads never are.
    # Whatever a name finds, only an OpOverloadPacket / OpOverload / HigherOrderOperator passes.
    if (
        not m
        or m.group(1).startswith("__")
        or (m.group(3) or "").startswith("__")
        or (m.group(2).startswith("__") and not _DUNDER_OP.fullmatch(m.group(2)))
    ):
        raise UnsupportedOpError(
            f"target {target!r} is not a torch.ops.<namespace>.<op>[.<overload>] name"
        )
    ns_name, op_name, overload = m.groups()
    denied = policy.refusal(ns_name, op_name)
    if denied:
        raise UnsupportedOpError(f"op {target!r} {denied}: pt2interp never runs it")
    ns = getattr(torch.ops, ns_name, None) if ns_name not in _NOT_NAMESPACES else None
    if not isinstance(ns, _namespace_types()):
        raise UnsupportedOpError(
            f"target {target!r}: {ns_name!r} is not an op namespace in torch {torch.__version__}"
        )
    try:
        packet = getattr(ns, op_name)
    except (AttributeError, RuntimeError):
        packet = None
    if isinstance(packet, torch._ops.HigherOrderOperator) and overload is None:
        return packet
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        raise UnsupportedOpError(f"op {target!r} does not exist in torch {torch.__version__}")
    try:
        op = getattr(packet, overload or "default")
    except (AttributeError, RuntimeError):
        op = None
    if not isinstance(op, torch._ops.OpOverload):
        raise UnsupportedOpError(
            f"op {target!r}: overload {overload!r} does not exist in torch {torch.__version__}"
        )
    denied = policy.refusal(ns_name, op_name, op)  # rules that depend on the overload's schema
    if denied:
        raise UnsupportedOpError(f"op {target!r} {denied}: pt2interp never runs it")
    return op


@functools.cache
def _namespace_types() -> tuple[type, ...]:
    """The classes of ``torch.ops.<namespace>``: ``torch.ops.higher_order`` is a
    ``_HigherOrderNamespace`` from torch 2.6 on and a ``_PyOpNamespace`` before."""
    import torch

    names = ("_OpNamespace", "_HigherOrderNamespace", "_PyOpNamespace")
    return tuple(t for t in (getattr(torch._ops, n, None) for n in names) if isinstance(t, type))


# Attributes of torch.ops that are functions, not namespaces (import_module, load_library).
_NOT_NAMESPACES = frozenset({"import_module", "load_library", "loaded_libraries"})


def schema_of(target: str):
    """The ``torch._C.FunctionSchema`` of a ``torch.ops`` target, or None for other targets."""
    import torch

    if not target.startswith("torch.ops."):
        return None
    try:
        op = resolve_torch_op(target)
    except UnsupportedOpError:
        return None
    return op._schema if isinstance(op, torch._ops.OpOverload) else None


# -- small rendering helpers used across families ---------------------------------------------


def infix(c: Call, symbol: str, left: str = "self", right: str = "other") -> str:
    return f"{_wrap(c[left])} {symbol} {_wrap(c[right])}"


def prefix(c: Call, symbol: str, operand: str = "self") -> str:
    return f"{symbol}{_wrap(c[operand])}"


def _wrap(src: str) -> str:
    """Parenthesize ``src`` unless it is a name, attribute, call, literal or subscript."""
    s = src.strip()
    if re.fullmatch(
        r"[A-Za-z_][A-Za-z0-9_.]*(\[[^\[\]]*\]|\([^()]*\))?|-?[0-9.eE+-]+|'[^']*'|\"[^\"]*\"", s
    ):
        return s
    return f"({s})"
