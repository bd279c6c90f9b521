"""One graph node as one Python statement, through the op registry's renderers.

A node's arguments become source text (:func:`argument_source`: value names through the
caller's ``source`` function, literals through :mod:`pt2interp.codegen.names`-safe
spellings), the registry entry renders the call (``F.relu(x)``, ``x + y``,
``torch.cat([a, b], dim=1)``), and :func:`node_statement` binds the outputs.

>>> from pt2interp.schema import Argument, NamedArgument, Node, Ref
>>> node = Node("torch.ops.aten.view.default",
...             [NamedArgument("self", Argument("tensor", Ref("x"))),
...              NamedArgument("size", Argument("ints", (2, -1)))],
...             [Argument("tensor", Ref("view"))], {})
>>> node_statement(node, source=lambda v: v, target=lambda v: v, used=lambda v: True)
'view = x.view(2, -1)'
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pt2interp.ops  # noqa: F401  (registers every op family)
from pt2interp.codegen.facts import output_refs
from pt2interp.codegen.printer import constant_text
from pt2interp.errors import GraphError, UnsupportedOpError
from pt2interp.kinds import ArgKind
from pt2interp.ops.registry import Call, _wrap, lookup, registry_key, resolve_torch_op, schema_of
from pt2interp.schema import Argument, Node
from pt2interp.versions import LAYOUTS, MEMORY_FORMATS, SCALAR_TYPES

Source = Callable[[str], str]

_TORCH_OPS = re.compile(
    r"^torch\.ops\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)(\.[A-Za-z_][A-Za-z0-9_]*)?$"
)
_DTYPES = frozenset(SCALAR_TYPES.values())
_MEMORY_FORMATS = frozenset(MEMORY_FORMATS.values()) - {"unknown"}
_LAYOUTS = frozenset(LAYOUTS.values()) - {"unknown"}

# Ops whose size/dims list reads better spread out: `x.view(b, -1)`, `x.permute(0, 2, 1)`.
_SPREAD_METHODS = {
    "aten.view.default": ("view", "size"),
    "aten._unsafe_view.default": ("view", "size"),
    "aten.reshape.default": ("reshape", "shape"),
    "aten.permute.default": ("permute", "dims"),
    "aten.repeat.default": ("repeat", "repeats"),
}


def argument_source(arg: Argument, source: Source, device: str | None = None) -> str:
    """Python source for one argument value; ``device``, if given, replaces recorded devices."""
    kind, v = arg.kind, arg.value
    if kind.leaf.holds_ref or kind.leaf.is_literal:
        return _value_source(kind, v, source)
    if kind is ArgKind.SCALAR_TYPE and v in _DTYPES:
        return f"torch.{v}"
    if kind is ArgKind.MEMORY_FORMAT and v in _MEMORY_FORMATS:
        return f"torch.{v}"
    if kind is ArgKind.LAYOUT and v in _LAYOUTS:
        return f"torch.{v}"
    if kind is ArgKind.DEVICE:
        if device is not None:
            return device
        text = v.type if v.index is None else f"{v.type}:{v.index}"
        return constant_text(text)
    if kind is ArgKind.OPERATOR:
        return op_reference(v if str(v).startswith("torch.ops.") else "torch.ops." + str(v))
    raise UnsupportedOpError(
        f"cannot write an argument of kind {kind.value!r} ({str(v)[:40]!r}) as Python"
    )


def _value_source(kind: ArgKind, value, source: Source) -> str:
    """A graph value's name, a constant, or a (nested) list of those."""
    if kind.is_list:
        return "[" + ", ".join(_value_source(kind.element, x, source) for x in value) + "]"
    if kind.holds_ref and hasattr(value, "name"):
        return source(value.name)
    return constant_text(value)


def op_reference(target: str) -> str:
    """``torch.ops.aten.foo.default`` for a target string, after checking it is only names;
    a dunder name (``aten.__and__.Scalar``) only where torch's op registry has that op."""
    m = _TORCH_OPS.match(target)
    if not m:
        raise UnsupportedOpError(f"target {target[:80]!r} is not a torch.ops.<namespace>.<op> name")
    if any(part.startswith((".__", "__")) for part in m.groups() if part):
        try:
            resolve_torch_op(target)  # the registry's names, not a spelling rule, decide
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(
                f"target {target[:80]!r} is not an op torch has: {exc}"
            ) from None
    return target


def call_of(node: Node, source: Source, device: str | None = None) -> Call:
    args: dict[str, str] = {}
    positional: list[str] = []
    keywords = set()
    keyword_at: list[str | None] = []
    for na in node.inputs:
        text = argument_source(na.arg, source, device)
        positional.append(text)
        keyword_at.append(na.name if na.name and na.is_keyword else None)
        if na.name:
            args[na.name] = text
            if na.is_keyword:
                keywords.add(na.name)
    return Call(registry_key(node.target), args, positional, frozenset(keywords), tuple(keyword_at))


def expression(node: Node, source: Source, device: str | None = None) -> str:
    """The node's call as a Python expression."""
    call = call_of(node, source, device)
    spread = _SPREAD_METHODS.get(call.target)
    if spread is not None:
        method, arg = spread
        items = _list_items(node, arg, source)
        if items and "self" in call.args and set(call.args) <= {"self", arg}:
            return f"{_wrap(call['self'])}.{method}({', '.join(items)})"
    entry = lookup(node.target)
    if entry is not None and entry.render is not None:
        try:
            return entry.render(call)
        except KeyError as exc:  # renderers read the op's arguments by their schema names
            raise GraphError(
                f"node {node.label} ({node.target}) lacks argument {exc.args[0]!r}, "
                f"which its op needs (it passes {sorted(call.args)})"
            ) from None
    op = op_reference(node.target)
    parts = list(call.positional)
    if call.keyword_names:
        parts = [p for na, p in zip(node.inputs, call.positional) if not na.is_keyword]
        parts += [f"{na.name}={p}" for na, p in zip(node.inputs, call.positional) if na.is_keyword]
    return f"{op}({', '.join(parts)})"


def _list_items(node: Node, name: str, source: Source) -> list[str] | None:
    for na in node.inputs:
        if na.name == name and na.arg.kind in (ArgKind.INTS, ArgKind.SYM_INTS) and na.arg.value:
            return [
                source(x.name) if hasattr(x, "name") else constant_text(x) for x in na.arg.value
            ]
    return None


def output_pattern(node: Node):
    """What a node returns, as value names: a name, a list (``tensors``), a tuple of those,
    or None for nothing."""
    outs = node.outputs
    if not outs or (len(outs) == 1 and outs[0].kind is ArgKind.NONE):
        return None
    if len(outs) == 1:
        return _one(outs[0])
    return tuple(_one(a) for a in outs)


def _one(arg: Argument):
    if arg.kind is ArgKind.TENSORS:
        return [r.name for r in arg.value]
    refs = output_refs(arg)
    return refs[0] if refs else None


def is_pure(node: Node) -> bool:
    """True when dropping the node changes nothing but its (unused) outputs."""
    target = node.target
    if target.startswith("torch.ops.higher_order."):
        return False
    if not target.startswith("torch.ops."):
        return lookup(target) is not None  # Python operators and math functions
    schema = schema_of(target)
    if schema is None or schema.is_mutable:
        return False
    import torch

    try:
        op = resolve_torch_op(target)
    except UnsupportedOpError:
        return False
    return torch.Tag.nondeterministic_seeded not in getattr(op, "tags", ())


def bind_target(pattern, target: Callable[[str], str], used: Callable[[str], bool]) -> str | None:
    """Assignment target text for ``pattern`` (unused values as ``_``), or None if nothing
    in it is used."""
    if pattern is None:
        return None
    if isinstance(pattern, str):
        return target(pattern) if used(pattern) else None
    parts = [bind_target(p, target, used) for p in pattern]
    if all(p is None for p in parts):
        return None
    texts = [
        "_" if p is None else (f"({p})" if isinstance(q, (list, tuple)) and len(q) > 1 else p)
        for p, q in zip(parts, pattern)
    ]
    if len(texts) == 1:
        return f"({texts[0]},)"
    return ", ".join(texts)


def node_statement(
    node: Node,
    *,
    source: Source,
    target: Callable[[str], str],
    used: Callable[[str], bool],
    device: str | None = None,
) -> str | None:
    """``a = f(x)`` / ``a, _ = f(x)`` / ``f(x)``; None for a pure node nothing reads.
    ``device``: source text for the device of factory ops (``x.device``)."""
    expr = expression(node, source, device)
    pattern = output_pattern(node)
    if (
        node.target.startswith("torch.ops.higher_order.")
        and isinstance(pattern, str)
        and not node.hop_returns_one_tensor
    ):
        expr = f"{expr}[0]"
    lhs = bind_target(pattern, target, used)
    if lhs is None:
        if pattern is not None and is_pure(node):
            return None
        return expr
    if (
        isinstance(pattern, list)
        and expr.startswith("list(")
        and expr.endswith(")")
        and _balanced(expr[5:-1])
    ):
        expr = expr[5:-1]  # unpacking needs no list: `a, b = torch.split(x, 2)`
    return f"{lhs} = {expr}"


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0
