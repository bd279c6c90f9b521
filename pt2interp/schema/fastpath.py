"""The plain-shape fast path of the parser."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pt2interp import versions
from pt2interp.kinds import ArgKind
from pt2interp.schema.model import (
    Argument,
    Device,
    NamedArgument,
    Node,
    PayloadMeta,
    Ref,
    TensorMeta,
)

if TYPE_CHECKING:
    from pt2interp.schema.parser import _Parser

_INT64_MAX = (1 << 63) - 1

# ---------------------------------------------------------------------------------------
# The plain-shape fast path
# ---------------------------------------------------------------------------------------
# Nearly every node, argument and tensor meta in real files comes in one of a few plain
# shapes. These functions parse just those shapes, with inline type checks and no JSON paths
# built, and return None for anything else, which the checked parser then reads (naming the
# path of any error). They accept a subset of what the checked parser accepts and build
# equal values: tests/test_schema_fastpath.py holds them to that. Building a path string for
# every field the checked way costs more than all the checks.

_NONE_TAG = ArgKind.NONE.tag
_NONE_ARGUMENT = Argument(ArgKind.NONE)


def _plain_ref(v: Any) -> Ref | None:
    if v.__class__ is dict and len(v) == 1:
        name = v.get("name")
        if name.__class__ is str:
            return Ref(name)
    return None


def _plain_refs(v: Any) -> tuple | None:
    if v.__class__ is not list:
        return None
    refs = tuple(map(_plain_ref, v))
    return None if None in refs else refs


def _plain_sym_int(v: Any) -> Ref | int | None:
    if v.__class__ is dict and len(v) == 1:
        n = v.get("as_int")
        if n.__class__ is int:
            return n
        name = v.get("as_name")
        if name.__class__ is str:
            return Ref(name)
    return None


def _plain_optional_tensor(v: Any) -> Ref | None | bool:
    """A Ref, None for as_none, False when not plain."""
    if v.__class__ is dict and len(v) == 1:
        if "as_none" in v:
            return None
        r = _plain_ref(v.get("as_tensor"))
        if r is not None:
            return r
    return False


def _plain_ints_value(v: Any) -> tuple | None:
    if v.__class__ is list and all(x.__class__ is int for x in v):
        return tuple(v)
    return None


def _plain_float_value(v: Any) -> float | None:
    cls = v.__class__
    return float(v) if cls is float or (cls is int and v.bit_length() < 1024) else None


def _plain_sym_ints(v: Any) -> tuple | None:
    if v.__class__ is not list:
        return None
    items = tuple(map(_plain_sym_int, v))
    return None if None in items else items


def _plain_optional_tensors(v: Any) -> tuple | None:
    if v.__class__ is not list:
        return None
    items = tuple(map(_plain_optional_tensor, v))
    return None if False in items else items


# The kinds the fast path reads, by union tag: how to read a plain value (None: not plain).
# Every value here is not None, so None can say "not plain".
_PLAIN_VALUES: dict[str, tuple[ArgKind, Callable[[Any], Any]]] = {
    kind.tag: (kind, plain)
    for kind, plain in {
        ArgKind.TENSOR: _plain_ref,
        ArgKind.TENSORS: _plain_refs,
        ArgKind.INT: lambda v: v if v.__class__ is int else None,
        ArgKind.INTS: _plain_ints_value,
        ArgKind.FLOAT: _plain_float_value,
        ArgKind.BOOL: lambda v: v if v.__class__ is bool else None,
        ArgKind.STRING: lambda v: v if v.__class__ is str else None,
        ArgKind.SCALAR_TYPE: lambda v: versions.SCALAR_TYPES.get(v) if v.__class__ is int else None,
        ArgKind.SYM_INT: _plain_sym_int,
        ArgKind.SYM_INTS: _plain_sym_ints,
        ArgKind.OPTIONAL_TENSORS: _plain_optional_tensors,
    }.items()
}


def _plain_argument(v: Any) -> Argument | None:
    if v.__class__ is not dict or len(v) != 1:
        return None
    ((tag, val),) = v.items()
    plain = _PLAIN_VALUES.get(tag)
    if plain is None:
        return _NONE_ARGUMENT if tag == _NONE_TAG else None
    kind, read = plain
    value = read(val)
    return None if value is None else Argument(kind, value)


def _plain_node(d: Any) -> Node | None:
    if d.__class__ is not dict:
        return None
    target, raw_inputs, raw_outputs = d.get("target"), d.get("inputs"), d.get("outputs", [])
    meta = d.get("metadata") or {}
    if (
        target.__class__ is not str
        or raw_inputs.__class__ is not list
        or raw_outputs.__class__ is not list
        or meta.__class__ is not dict
    ):
        return None
    inputs = []
    for x in raw_inputs:
        if x.__class__ is not dict:
            return None
        name = x.get("name", "")
        arg = _plain_argument(x.get("arg"))
        if arg is None or name.__class__ is not str:
            return None
        kind = x.get("kind")
        inputs.append(
            NamedArgument(
                name,
                arg,
                kind if kind.__class__ is int else None,
            )
        )
    outputs = list(map(_plain_argument, raw_outputs))
    if None in outputs:
        return None
    name = d.get("name")
    single = d.get("is_hop_single_tensor_return")
    return Node(
        target,
        inputs,
        outputs,
        {k: v for k, v in meta.items() if v.__class__ is str},
        name if isinstance(name, str) else None,
        single if isinstance(single, bool) else None,
    )


def _plain_ints(v: Any) -> tuple[int, ...] | None:
    """``[{"as_int": n}, ...]`` with every n in 0..2**63-1."""
    if v.__class__ is not list:
        return None
    out = []
    for x in v:
        if x.__class__ is not dict or len(x) != 1:
            return None
        n = x.get("as_int")
        if n.__class__ is not int or not 0 <= n <= _INT64_MAX:
            return None
        out.append(n)
    return tuple(out)


_CPU_JSON = {"type": "cpu"}


def _plain_meta_key(d: Any) -> tuple | None:
    """The fields of a fully static tensor meta in plain shape, as a hashable key, or None.

    Equal keys parse to equal metas, so one parsed :class:`TensorMeta` serves them all."""
    if d.__class__ is not dict:
        return None
    sizes = _plain_ints(d.get("sizes"))
    strides = _plain_ints(d.get("strides"))
    if sizes is None or strides is None or len(strides) != len(sizes):
        return None
    off = d.get("storage_offset", 0)
    if off.__class__ is dict and len(off) == 1:
        off = off.get("as_int")
    dtype, layout, dev = d.get("dtype"), d.get("layout", 7), d.get("device", _CPU_JSON)
    if (
        off.__class__ is not int
        or not 0 <= off <= _INT64_MAX
        or dtype.__class__ is not int
        or dtype not in versions.SCALAR_TYPES
        or layout.__class__ is not int
        or dev.__class__ is not dict
    ):
        return None
    dev_type, dev_index = dev.get("type"), dev.get("index")
    if dev_type.__class__ is not str or (dev_index is not None and dev_index.__class__ is not int):
        return None
    return (
        dtype,
        sizes,
        strides,
        off,
        dev_type,
        dev_index,
        layout,
        bool(d.get("requires_grad", False)),
    )


def _meta_from_key(key: tuple) -> TensorMeta:
    dtype, sizes, strides, off, dev_type, dev_index, layout, requires_grad = key
    return TensorMeta(
        versions.SCALAR_TYPES[dtype],
        sizes,
        strides,
        off,
        Device(dev_type, dev_index),
        versions.LAYOUTS.get(layout, f"layout{layout}"),
        requires_grad,
    )


def _plain_payload_meta(md: Any, parser: _Parser) -> PayloadMeta | None:
    if md.__class__ is not dict:
        return None
    path_name, tm = md.get("path_name"), md.get("tensor_meta")
    if path_name.__class__ is not str:
        return None
    if tm is not None:
        key = _plain_meta_key(tm)
        if key is None:
            return None
        tm = parser.plain_meta(key)
    return PayloadMeta(
        path_name, bool(md.get("is_param", False)), bool(md.get("use_pickle", False)), tm
    )
