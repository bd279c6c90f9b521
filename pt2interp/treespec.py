"""Pytree specs as archives store them, decoded without torch.

``torch.export`` records how a module's call arguments and results nest (tuples, lists,
dicts, namedtuples, ``None``) as ``treespec_dumps`` JSON: ``[1, {"type": ..., "context":
..., "children_spec": [...]}]``. :class:`TreeSpec` flattens Python values along such a
spec and builds them back from leaves. No type named in a file is ever imported: namedtuples
come back as fresh ``collections.namedtuple`` classes with the recorded field names.

>>> spec = parse_treespec('[1, {"type": "builtins.dict", "context": "[\\\\"a\\\\", \\\\"b\\\\"]", '
...     '"children_spec": [{"type": null, "context": null, "children_spec": []}, '
...     '{"type": null, "context": null, "children_spec": []}]}]')
>>> spec.num_leaves, spec.unflatten([1, 2])
(2, {'a': 1, 'b': 2})
>>> spec.flatten({"b": 20, "a": 10})
[10, 20]
"""

from __future__ import annotations

import collections
import keyword
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from pt2interp import jsontext
from pt2interp.errors import InputMismatchError, SchemaError

# Real specs nest a handful of levels (a tuple of tuples of tensors). Everything that walks a
# spec takes a few stack frames per level (here, the interpreter, introspect, codegen and its
# printer): this bound keeps all of them far from the recursion limit.
_MAX_DEPTH = 64

_TUPLE = "builtins.tuple"
_LIST = "builtins.list"
_DICT = "builtins.dict"
_NONE = "builtins.NoneType"
_ORDERED_DICT = "collections.OrderedDict"
_DEFAULT_DICT = "collections.defaultdict"
_NAMEDTUPLE = "collections.namedtuple"
_DEQUE = "collections.deque"
_IMMUTABLE_LIST = "torch.fx.immutable_collections.immutable_list"
_IMMUTABLE_DICT = "torch.fx.immutable_collections.immutable_dict"

KNOWN_TYPES = frozenset(
    {
        _TUPLE,
        _LIST,
        _DICT,
        _NONE,
        _ORDERED_DICT,
        _DEFAULT_DICT,
        _NAMEDTUPLE,
        _DEQUE,
        _IMMUTABLE_LIST,
        _IMMUTABLE_DICT,
    }
)


@dataclass(frozen=True)
class TreeSpec:
    """One node of a pytree spec. ``type`` is None for a leaf."""

    type: str | None
    context: Any = None
    children: tuple[TreeSpec, ...] = ()
    namedtuple_fields: tuple[str, ...] | None = field(default=None, compare=False)

    @property
    def is_leaf(self) -> bool:
        return self.type is None

    @property
    def num_leaves(self) -> int:
        if self.is_leaf:
            return 1
        return sum(c.num_leaves for c in self.children)

    def flatten(self, value: Any, _where: str = "input") -> list[Any]:
        """Leaves of ``value`` in spec order; raises :class:`InputMismatchError` on a mismatch."""
        out: list[Any] = []
        self._flatten_into(value, out, _where)
        return out

    def _flatten_into(self, value: Any, out: list, where: str) -> None:
        t = self.type
        if t is None:
            out.append(value)
            return
        if t == _NONE:
            if value is not None:
                raise InputMismatchError(f"{where}: expected None, got {type(value).__name__}")
            return
        if t in (_DICT, _ORDERED_DICT, _DEFAULT_DICT, _IMMUTABLE_DICT):
            keys = self.dict_keys
            if not isinstance(value, dict):
                raise InputMismatchError(
                    f"{where}: expected a dict with keys {keys}, got {type(value).__name__}"
                )
            missing = [k for k in keys if k not in value]
            extra = [k for k in value if k not in keys]
            if missing or extra:
                raise InputMismatchError(
                    f"{where}: dict keys differ from the exported ones"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; unexpected {extra}" if extra else "")
                )
            for k, child in zip(keys, self.children):
                child._flatten_into(value[k], out, f"{where}[{k!r}]")
            return
        if not isinstance(value, (tuple, list, collections.deque)):
            raise InputMismatchError(
                f"{where}: expected a {self.type_label} of {len(self.children)}, "
                f"got {type(value).__name__}"
            )
        if len(value) != len(self.children):
            raise InputMismatchError(
                f"{where}: expected {len(self.children)} items, got {len(value)}"
            )
        for i, (v, child) in enumerate(zip(value, self.children)):
            child._flatten_into(v, out, f"{where}[{i}]")

    def unflatten(self, leaves: list[Any]) -> Any:
        """Build the structured value from ``leaves`` (in spec order)."""
        it = iter(leaves)
        value = self._build(it)
        if next(it, _SENTINEL) is not _SENTINEL:
            raise ValueError("more leaves than the spec holds")
        return value

    def _build(self, it) -> Any:
        t = self.type
        if t is None:
            return next(it)
        if t == _NONE:
            return None
        kids = [c._build(it) for c in self.children]
        if t in (_TUPLE,):
            return tuple(kids)
        if t in (_LIST, _IMMUTABLE_LIST):
            return kids
        if t == _DEQUE:
            return collections.deque(kids)
        if t in (_DICT, _IMMUTABLE_DICT, _DEFAULT_DICT):
            return dict(zip(self.dict_keys, kids))
        if t == _ORDERED_DICT:
            return collections.OrderedDict(zip(self.dict_keys, kids))
        if t == _NAMEDTUPLE:
            return _namedtuple_class(self.context, self.namedtuple_fields or ())(*kids)
        raise AssertionError(t)

    @property
    def dict_keys(self) -> list:
        if self.type == _DEFAULT_DICT:
            return list(self.context.get("dict_context") or [])
        if self.type in (_DICT, _ORDERED_DICT, _IMMUTABLE_DICT):
            return list(self.context or [])
        return []

    @property
    def type_label(self) -> str:
        return {_TUPLE: "tuple", _LIST: "list", _NAMEDTUPLE: f"namedtuple {self.context}"}.get(
            self.type, self.type or "leaf"
        )

    def describe(self) -> Any:
        """A JSON-friendly picture of the structure, leaves shown as ``"*"``."""
        if self.is_leaf:
            return "*"
        if self.type == _NONE:
            return None
        kids = [c.describe() for c in self.children]
        if self.type in (_DICT, _ORDERED_DICT, _DEFAULT_DICT, _IMMUTABLE_DICT):
            return {str(k): v for k, v in zip(self.dict_keys, kids)}
        return kids


_SENTINEL = object()
_NAMEDTUPLE_CACHE: dict[tuple[str, tuple[str, ...]], type] = {}


def _namedtuple_class(type_name: str, fields: tuple[str, ...]) -> type:
    key = (type_name, fields)
    cls = _NAMEDTUPLE_CACHE.get(key)
    if cls is None:
        short = str(type_name).rsplit(".", 1)[-1]
        # namedtuple compiles the field names into a function, where names equal under NFKC
        # ("ａ" and "a") collide and a keyword is a syntax error: such names become positional
        names = tuple(f if _plain_name(f) else f"_{i}" for i, f in enumerate(fields))
        cls = collections.namedtuple(short if _plain_name(short) else "Result", names, rename=True)
        _NAMEDTUPLE_CACHE[key] = cls
    return cls


def _plain_name(name: str) -> bool:
    return (
        name.isidentifier()
        and not keyword.iskeyword(name)
        and unicodedata.normalize("NFKC", name) == name
    )


def parse_treespec(
    text: str,
    *,
    namedtuple_fields: dict[str, list[str]] | None = None,
    member: str | None = None,
    path: str | None = None,
) -> TreeSpec:
    """Decode ``treespec_dumps`` JSON (protocol 1). Errors name ``member`` and ``path``."""
    try:
        data = jsontext.loads(text) if isinstance(text, str) else text
    except jsontext.NestingError:
        raise SchemaError("tree spec nested too deeply", member=member, path=path) from None
    except ValueError as exc:
        raise SchemaError(f"tree spec is not valid JSON: {exc}", member=member, path=path) from None
    if not (isinstance(data, list) and len(data) == 2):
        raise SchemaError("tree spec must be [protocol, spec]", member=member, path=path)
    if data[0] != 1:
        raise SchemaError(
            f"unknown tree spec protocol {data[0]!r} (only 1 is known)", member=member, path=path
        )
    return _parse_node(data[1], namedtuple_fields or {}, member, path or "spec", 0)


def _parse_node(obj: Any, nt_fields: dict, member, path: str, depth: int) -> TreeSpec:
    if depth > _MAX_DEPTH:
        raise SchemaError("tree spec nested too deeply", member=member, path=path)
    if not isinstance(obj, dict):
        raise SchemaError(
            f"tree spec node must be an object, got {type(obj).__name__}", member=member, path=path
        )
    t = obj.get("type")
    kids_raw = obj.get("children_spec") or []
    if not isinstance(kids_raw, list):
        raise SchemaError(
            "children_spec must be a list", member=member, path=path + ".children_spec"
        )
    if t is None:
        return TreeSpec(None)
    if t == _NONE and kids_raw:
        raise SchemaError(
            "a None tree spec node cannot have children",
            member=member,
            path=path + ".children_spec",
        )
    if t not in KNOWN_TYPES:
        raise SchemaError(
            f"tree spec names type {t!r}, which pt2interp cannot rebuild without importing it "
            f"(known: tuple, list, dict, OrderedDict, defaultdict, namedtuple, None)",
            member=member,
            path=path + ".type",
        )
    ctx_raw = obj.get("context")
    try:
        ctx = jsontext.loads(ctx_raw) if isinstance(ctx_raw, str) else ctx_raw
    except jsontext.NestingError:
        raise SchemaError(
            "tree spec context nested too deeply", member=member, path=path + ".context"
        ) from None
    except ValueError:
        ctx = ctx_raw  # namedtuple contexts are plain type names, not JSON
    children = tuple(
        _parse_node(c, nt_fields, member, f"{path}.children_spec[{i}]", depth + 1)
        for i, c in enumerate(kids_raw)
    )
    fields = None
    if t == _NAMEDTUPLE:
        if not isinstance(ctx, str):
            raise SchemaError(
                f"namedtuple tree spec context must be a type name, got {type(ctx).__name__}",
                member=member,
                path=path + ".context",
            )
        raw_fields = nt_fields.get(ctx)
        if isinstance(raw_fields, dict):
            raw_fields = raw_fields.get("field_names")
        if raw_fields and not (
            isinstance(raw_fields, list) and all(isinstance(f, str) for f in raw_fields)
        ):
            raise SchemaError(
                f"namedtuple {ctx!r}: field names must be a list of strings",
                member=member,
                path=path,
            )
        fields = (
            tuple(raw_fields) if raw_fields else tuple(f"field_{i}" for i in range(len(children)))
        )
        if len(fields) != len(children):
            raise SchemaError(
                f"namedtuple {ctx!r} has {len(fields)} fields but {len(children)} children",
                member=member,
                path=path,
            )
    if t in (_DICT, _ORDERED_DICT, _IMMUTABLE_DICT) and (
        not isinstance(ctx, list) or len(ctx) != len(children)
    ):
        raise SchemaError(
            "dict tree spec context must list one key per child",
            member=member,
            path=path + ".context",
        )
    if t == _DEFAULT_DICT and not (
        isinstance(ctx, dict)
        and isinstance(ctx.get("dict_context"), list)
        and len(ctx["dict_context"]) == len(children)
    ):
        raise SchemaError(
            "defaultdict tree spec context lacks dict_context (one key per child)",
            member=member,
            path=path + ".context",
        )
    if t in (_DICT, _ORDERED_DICT, _IMMUTABLE_DICT, _DEFAULT_DICT):
        keys = ctx["dict_context"] if t == _DEFAULT_DICT else ctx
        if not all(isinstance(k, _KEY_TYPES) for k in keys):
            raise SchemaError(
                "dict tree spec keys must be strings, numbers, booleans or null",
                member=member,
                path=path + ".context",
            )
    return TreeSpec(t, ctx, children, fields)


_KEY_TYPES = (str, int, float, type(None))


# -- leaf names ---------------------------------------------------------------------------------
# One spelling of a program's input and output leaves, shared by `info`, `run`, the server and
# the calling convention: parameter names for inputs, `out` for outputs, nested levels joined
# with dots (`xs.0`, `out.sum`, `out.pair.0`, a namedtuple's field names).


def leaf_paths(spec: TreeSpec, base: str) -> list[str]:
    """``base`` for a leaf; ``base.<key>`` for each leaf below it (dict keys, namedtuple fields,
    list and tuple positions); nothing for ``None``."""
    if spec.is_leaf:
        return [base]
    if spec.type == _NONE:
        return []
    if spec.type in (_DICT, _ORDERED_DICT, _DEFAULT_DICT, _IMMUTABLE_DICT):
        keys = spec.dict_keys
    elif spec.type == _NAMEDTUPLE and spec.namedtuple_fields:
        keys = list(spec.namedtuple_fields)
    else:
        keys = list(range(len(spec.children)))
    return [p for k, c in zip(keys, spec.children) for p in leaf_paths(c, f"{base}.{k}")]


def input_leaf_names(
    in_spec: TreeSpec | None, arg_names: list[str]
) -> list[tuple[str, bool]] | None:
    """``(name, is_keyword)`` of every input leaf of a ``((args...), {kwargs})`` spec: forward's
    parameter names, dotted below them; None where the spec has another shape."""
    if in_spec is None or in_spec.type != _TUPLE or len(in_spec.children) != 2:
        return None
    args, kwargs = in_spec.children
    out = []
    for i, child in enumerate(args.children):
        base = arg_names[i] if i < len(arg_names) else f"input_{i}"
        out += [(p, False) for p in leaf_paths(child, base)]
    for key, child in zip(kwargs.dict_keys, kwargs.children):
        out += [(p, True) for p in leaf_paths(child, str(key))]
    return out
