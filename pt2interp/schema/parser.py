"""The checked parser: the program JSON, in its newest form (see :mod:`pt2interp.versions`),
into the typed model of :mod:`pt2interp.schema.model`.

Anything that cannot be understood raises :class:`~pt2interp.errors.SchemaError` naming the
member, the JSON path and the field. Plain nodes, arguments and tensor metadata (nearly all of
a real file) go through :mod:`pt2interp.schema.fastpath` first, which builds equal values
without building JSON paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pt2interp import limits, versions
from pt2interp.errors import LimitError, SchemaError
from pt2interp.kinds import ArgKind, InputKind, OutputKind
from pt2interp.schema.fastpath import (
    _INT64_MAX,
    _meta_from_key,
    _plain_argument,
    _plain_meta_key,
    _plain_node,
    _plain_payload_meta,
)
from pt2interp.schema.model import (
    Argument,
    CustomObjRef,
    Device,
    ExportedProgramModel,
    Graph,
    GraphArgument,
    GraphSignature,
    InputSpec,
    ModuleCallEntry,
    ModuleCallSignature,
    NamedArgument,
    Node,
    OutputSpec,
    PayloadMeta,
    RangeConstraint,
    Ref,
    SymExpr,
    SymInt,
    TensorMeta,
    _contiguous_strides,
)
from pt2interp.symexpr import parse_expr
from pt2interp.treespec import parse_treespec

# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------


class _Parser:
    """Walks the JSON with a path for every error. One instance per archive member."""

    def __init__(self, member: str, *, outline: bool = False):
        self.member = member
        self.outline = outline
        # Graphs repeat the same static metadata (same shape, dtype, device) many times; the
        # dataclasses are frozen, so equal JSON can share one parsed value.
        self._meta_cache: dict[tuple, TensorMeta] = {}
        self._nodes_left = limits.current().max_graph_nodes

    def fail(self, path: str, message: str) -> SchemaError:
        return SchemaError(message, member=self.member, path=path)

    # -- primitives ------------------------------------------------------------------
    def obj(self, v: Any, path: str) -> dict:
        if not isinstance(v, dict):
            raise self.fail(path, f"expected an object, got {_type_name(v)}")
        return v

    def lst(self, v: Any, path: str) -> list:
        if not isinstance(v, list):
            raise self.fail(path, f"expected a list, got {_type_name(v)}")
        return v

    def req(self, d: dict, key: str, path: str) -> Any:
        if key not in d:
            raise self.fail(f"{path}.{key}", f"missing required field '{key}'")
        return d[key]

    def str_(self, v: Any, path: str) -> str:
        if not isinstance(v, str):
            raise self.fail(path, f"expected a string, got {_type_name(v)}")
        return v

    def int_(self, v: Any, path: str) -> int:
        if type(v) is not int:
            raise self.fail(path, f"expected an integer, got {_type_name(v)}")
        return v

    def bool_(self, v: Any, path: str) -> bool:
        if type(v) is not bool:
            raise self.fail(path, f"expected a boolean, got {_type_name(v)}")
        return v

    def float_(self, v: Any, path: str) -> float:
        if isinstance(v, str) and v in versions.SPECIAL_FLOATS:
            return versions.SPECIAL_FLOATS[v]
        if type(v) in (int, float):
            try:
                return float(v)
            except OverflowError:  # an integer beyond the float range (JSON's 1e400 is inf already)
                raise self.fail(
                    path, f"an integer of {v.bit_length()} bits does not fit in a float"
                ) from None
        raise self.fail(path, f"expected a number, got {_type_name(v)}")

    def union(self, v: Any, path: str) -> tuple[str, Any]:
        """(tag, value) of a union: a one-key object."""
        d = self.obj(v, path)
        if len(d) != 1:
            raise self.fail(path, f"expected exactly one field of a union, found {sorted(d)}")
        ((tag, val),) = d.items()
        return tag, val

    # -- leaf types ------------------------------------------------------------------
    def dtype(self, v: Any, path: str) -> str:
        n = self.int_(v, path)
        try:
            return versions.SCALAR_TYPES[n]
        except KeyError:
            raise self.fail(path, f"unknown ScalarType {n}") from None

    def device(self, v: Any, path: str) -> Device:
        d = self.obj(v, path)
        t = self.str_(self.req(d, "type", path), path + ".type")
        idx = d.get("index")
        if idx is not None:
            idx = self.int_(idx, path + ".index")
        return Device(t, idx)

    def sym_expr(self, v: Any, path: str) -> SymExpr:
        d = self.obj(v, path)
        text = self.str_(self.req(d, "expr_str", path), path + ".expr_str")
        expr = parse_expr(text, member=self.member, path=path + ".expr_str")
        hint = d.get("hint")
        if isinstance(hint, dict):
            _, hint = self.union(hint, path + ".hint")
        return SymExpr(expr, hint if type(hint) in (int, float, bool) else None)

    def sym_int(self, v: Any, path: str) -> SymInt:
        if v.__class__ is dict and len(v) == 1:
            n = v.get("as_int")
            if n.__class__ is int:  # the common case, parsed without the general union walk
                return n
        tag, val = self.union(v, path)
        if tag == "as_int":
            return self.int_(val, f"{path}.as_int")
        if tag == "as_expr":
            return self.sym_expr(val, f"{path}.as_expr")
        raise self.fail(path, f"unknown SymInt kind '{tag}'")

    def sym_value(self, v: Any, path: str, scalar: str) -> Any:
        tag, val = self.union(v, path)
        if tag == "as_expr":
            return self.sym_expr(val, f"{path}.as_expr")
        if tag == f"as_{scalar}":
            return val
        raise self.fail(path, f"unknown Sym{scalar.capitalize()} kind '{tag}'")

    def tensor_meta(self, v: Any, path: str) -> TensorMeta:
        key = _plain_meta_key(v)
        if key is not None:
            return self.plain_meta(key)
        return self._tensor_meta(self.obj(v, path), path)

    def plain_meta(self, key: tuple) -> TensorMeta:
        """The meta of a :func:`_plain_meta_key`, parsed once per distinct key."""
        cached = self._meta_cache.get(key)
        if cached is None:
            cached = self._meta_cache[key] = _meta_from_key(key)
        return cached

    def _tensor_meta(self, d: dict, path: str) -> TensorMeta:
        sizes = tuple(
            self.sym_int(s, f"{path}.sizes[{i}]")
            for i, s in enumerate(self.lst(self.req(d, "sizes", path), path + ".sizes"))
        )
        strides = tuple(
            self.sym_int(s, f"{path}.strides[{i}]")
            for i, s in enumerate(self.lst(d.get("strides", []), path + ".strides"))
        )
        for i, s in enumerate(sizes):
            if isinstance(s, int) and s < 0:
                raise self.fail(f"{path}.sizes[{i}]", f"negative size {s}")
            if isinstance(s, int) and s > _INT64_MAX:
                raise self.fail(f"{path}.sizes[{i}]", f"size {s} does not fit in int64")
        for i, s in enumerate(strides):
            if isinstance(s, int) and s < 0:
                raise self.fail(f"{path}.strides[{i}]", f"negative stride {s}")
            if isinstance(s, int) and s > _INT64_MAX:
                raise self.fail(f"{path}.strides[{i}]", f"stride {s} does not fit in int64")
        if strides and len(strides) != len(sizes):
            raise self.fail(path + ".strides", f"{len(strides)} strides for {len(sizes)} sizes")
        off = d.get("storage_offset", 0)
        off = off if type(off) is int else self.sym_int(off, path + ".storage_offset")
        if isinstance(off, int) and not 0 <= off <= _INT64_MAX:
            raise self.fail(path + ".storage_offset", f"storage offset {off} is not in 0..2**63-1")
        layout = self.int_(d.get("layout", 7), path + ".layout")
        return TensorMeta(
            dtype=self.dtype(self.req(d, "dtype", path), path + ".dtype"),
            sizes=sizes,
            strides=strides or _contiguous_strides(sizes),
            storage_offset=off,
            device=self.device(d.get("device", {"type": "cpu"}), path + ".device"),
            layout=versions.LAYOUTS.get(layout, f"layout{layout}"),
            requires_grad=bool(d.get("requires_grad", False)),
        )

    # -- arguments -------------------------------------------------------------------
    def ref(self, v: Any, path: str) -> Ref:
        d = self.obj(v, path)
        return Ref(self.str_(self.req(d, "name", path), path + ".name"))

    def sym_arg(self, v: Any, path: str, scalar: str) -> Ref | int | float | bool:
        tag, val = self.union(v, path)
        if tag == "as_name":
            return Ref(self.str_(val, path + ".as_name"))
        if tag == f"as_{scalar}":
            return val
        raise self.fail(path, f"unknown Sym{scalar.capitalize()}Argument kind '{tag}'")

    def optional_tensor(self, v: Any, path: str) -> Ref | None:
        tag, val = self.union(v, path)
        if tag == "as_none":
            return None
        if tag == "as_tensor":
            return self.ref(val, path + ".as_tensor")
        raise self.fail(path, f"unknown OptionalTensorArgument kind '{tag}'")

    def argument(self, v: Any, path: str, depth: int = 0) -> Argument:
        return _plain_argument(v) or self.checked_argument(v, path, depth)

    def checked_argument(self, v: Any, path: str, depth: int = 0) -> Argument:
        if depth > 32:
            raise self.fail(path, "arguments nested too deeply")
        tag, val = self.union(v, path)
        p = f"{path}.{tag}"
        kind = ArgKind.of_tag(tag)
        if kind is not None:
            return Argument(kind, self.argument_value(kind, val, p, depth))
        raise self.fail(path, f"unknown argument kind '{tag}'")

    def argument_value(self, kind: ArgKind, v: Any, path: str, depth: int) -> Any:
        """The value of an argument of ``kind``; a list kind's elements each at ``path[i]``."""
        element = kind.element
        if element is None:
            return _VALUE_PARSERS[kind](self, v, path, depth)
        return tuple(
            self.argument_value(element, x, f"{path}[{i}]", depth)
            for i, x in enumerate(self.lst(v, path))
        )

    def complex_(self, v: Any, path: str) -> complex:
        d = self.obj(v, path)
        return complex(
            self.float_(d.get("real", 0.0), path + ".real"),
            self.float_(d.get("imag", 0.0), path + ".imag"),
        )

    def memory_format(self, v: Any, path: str) -> str:
        n = self.int_(v, path)
        if n not in versions.MEMORY_FORMATS:
            raise self.fail(path, f"unknown MemoryFormat {n}")
        return versions.MEMORY_FORMATS[n]

    def layout(self, v: Any, path: str) -> str:
        n = self.int_(v, path)
        if n not in versions.LAYOUTS:
            raise self.fail(path, f"unknown Layout {n}")
        return versions.LAYOUTS[n]

    def graph_argument(self, v: Any, path: str, depth: int) -> GraphArgument:
        d = self.obj(v, path)
        name = self.str_(self.req(d, "name", path), path + ".name")
        return GraphArgument(
            name, self.graph(self.req(d, "graph", path), path + ".graph", depth + 1)
        )

    def custom_obj(self, v: Any, path: str) -> CustomObjRef:
        d = self.obj(v, path)
        return CustomObjRef(
            self.str_(self.req(d, "name", path), path + ".name"), str(d.get("class_fqn", ""))
        )

    def arguments_by_name(self, v: Any, path: str, depth: int) -> dict[str, Argument]:
        d = self.obj(v, path)
        return {k: self.argument(x, f"{path}.{k}", depth + 1) for k, x in d.items()}

    # -- graph -----------------------------------------------------------------------
    def node(self, v: Any, path: str, depth: int) -> Node:
        if self.outline:
            return self.outline_node(v, path, depth)
        return _plain_node(v) or self.checked_node(v, path, depth)

    def outline_node(self, v: Any, path: str, depth: int) -> Node:
        """Target, metadata, name and the subgraph arguments only; the rest is not read."""
        d = self.obj(v, path)
        target = self.str_(self.req(d, "target", path), path + ".target")
        inputs = []
        for i, x in enumerate(self.lst(self.req(d, "inputs", path), path + ".inputs")):
            arg = x.get("arg") if x.__class__ is dict else None
            if arg.__class__ is dict and "as_graph" in arg:
                ip = f"{path}.inputs[{i}]"
                inputs.append(
                    NamedArgument(
                        self.str_(x.get("name", ""), ip + ".name"),
                        self.checked_argument(arg, ip + ".arg", depth),
                    )
                )
        meta = d.get("metadata") or {}
        meta = {k: v for k, v in self.obj(meta, path + ".metadata").items() if isinstance(v, str)}
        name = d.get("name")
        return Node(target, inputs, [], meta, name if isinstance(name, str) else None)

    def checked_node(self, v: Any, path: str, depth: int) -> Node:
        d = self.obj(v, path)
        target = self.str_(self.req(d, "target", path), path + ".target")
        inputs = []
        for i, x in enumerate(self.lst(self.req(d, "inputs", path), path + ".inputs")):
            ip = f"{path}.inputs[{i}]"
            xd = self.obj(x, ip)
            name = xd.get("name", "")
            kind = xd.get("kind")
            name = self.str_(name, ip + ".name")
            inputs.append(
                NamedArgument(
                    name,
                    self.argument(self.req(xd, "arg", ip), ip + ".arg", depth),
                    kind if type(kind) is int else None,
                )
            )
        outputs = [
            self.argument(x, f"{path}.outputs[{i}]", depth)
            for i, x in enumerate(self.lst(d.get("outputs", []), path + ".outputs"))
        ]
        meta = d.get("metadata") or {}
        meta = {k: v for k, v in self.obj(meta, path + ".metadata").items() if isinstance(v, str)}
        name = d.get("name")
        single = d.get("is_hop_single_tensor_return")
        return Node(
            target,
            inputs,
            outputs,
            meta,
            name if isinstance(name, str) else None,
            single if isinstance(single, bool) else None,
        )

    def graph(self, v: Any, path: str, depth: int = 0) -> Graph:
        if depth > 16:
            raise self.fail(path, "subgraphs nested too deeply")
        d = self.obj(v, path)
        raw_nodes = self.lst(self.req(d, "nodes", path), path + ".nodes")
        self._nodes_left -= len(raw_nodes)
        if self._nodes_left < 0:  # counted before anything of this graph is built
            raise LimitError(
                f"{self.member} at {path}: the program holds more than "
                f"{limits.current().max_graph_nodes} nodes",
                limit="max_graph_nodes",
            )
        tv = self.obj(d.get("tensor_values", {}), path + ".tensor_values")
        if self.outline:
            tensor_values = _MetasOnDemand(tv, self, path + ".tensor_values")
        else:
            tensor_values = {
                k: self.tensor_meta(m, f"{path}.tensor_values.{k}") for k, m in tv.items()
            }
        unreadable: dict[str, str] = {}
        sym_ints = self._symbolic(d, "sym_int_values", path, unreadable, self.sym_int)
        sym_bools = self._symbolic(
            d, "sym_bool_values", path, unreadable, lambda m, p: self.sym_value(m, p, "bool")
        )
        sym_floats = self._symbolic(
            d, "sym_float_values", path, unreadable, lambda m, p: self.sym_value(m, p, "float")
        )
        return Graph(
            inputs=[
                self.argument(x, f"{path}.inputs[{i}]", depth)
                for i, x in enumerate(self.lst(self.req(d, "inputs", path), path + ".inputs"))
            ],
            outputs=[
                self.argument(x, f"{path}.outputs[{i}]", depth)
                for i, x in enumerate(self.lst(self.req(d, "outputs", path), path + ".outputs"))
            ],
            nodes=[self.node(x, f"{path}.nodes[{i}]", depth) for i, x in enumerate(raw_nodes)],
            tensor_values=tensor_values,
            sym_int_values=sym_ints,
            sym_bool_values=sym_bools,
            sym_float_values=sym_floats,
            custom_obj_values={
                k: CustomObjRef(
                    k, str(self.obj(m, f"{path}.custom_obj_values.{k}").get("class_fqn", ""))
                )
                for k, m in self.obj(
                    d.get("custom_obj_values") or {}, path + ".custom_obj_values"
                ).items()
            },
            is_single_tensor_return=bool(d.get("is_single_tensor_return", False)),
            outline=self.outline,
            unreadable=unreadable,
        )

    def _symbolic(self, d: dict, key: str, path: str, unreadable: dict[str, str], parse) -> dict:
        """One table of symbolic values; in an outline an entry that cannot be read is recorded
        in ``unreadable`` instead of failing the whole program."""
        out = {}
        for k, m in self.obj(d.get(key) or {}, f"{path}.{key}").items():
            where = f"{path}.{key}.{k}"
            if not self.outline:
                out[k] = parse(m, where)
                continue
            try:
                out[k] = parse(m, where)
            except SchemaError as exc:
                unreadable[where] = str(exc)
        return out

    # -- signature -------------------------------------------------------------------
    def input_spec(self, v: Any, path: str) -> InputSpec:
        tag, val = self.union(v, path)
        p = f"{path}.{tag}"
        kind = _INPUT_KINDS.get(tag)
        if kind is None:
            raise self.fail(path, f"unknown input spec kind '{tag}'")
        d = self.obj(val, p)
        if kind is InputKind.CONSTANT_INPUT:
            cv = d.get("value")
            value = None
            if cv is not None:
                ctag, value = self.union(cv, p + ".value")
                value = None if ctag == ArgKind.NONE.tag else value
            name = self.str_(self.req(d, "name", p), p + ".name")
            return InputSpec(kind, Argument(ArgKind.NONE), None, None, value, name)
        raw_arg = self.req(d, "arg", p)
        if kind is InputKind.USER_INPUT:
            arg = self.argument(raw_arg, p + ".arg")
        elif kind is InputKind.CUSTOM_OBJ:
            arg = Argument(ArgKind.CUSTOM_OBJ, self.custom_obj(raw_arg, p + ".arg"))
        else:
            arg = Argument(ArgKind.TENSOR, self.ref(raw_arg, p + ".arg"))
        target = self.target(d, kind.target_field, p)
        persistent = d.get("persistent") if kind is InputKind.BUFFER else None
        return InputSpec(
            kind,
            arg,
            target,
            persistent
            if isinstance(persistent, bool)
            else (True if kind is InputKind.BUFFER else None),
        )

    def output_spec(self, v: Any, path: str) -> OutputSpec:
        tag, val = self.union(v, path)
        p = f"{path}.{tag}"
        kind = _OUTPUT_KINDS.get(tag)
        if kind is None:
            raise self.fail(path, f"unknown output spec kind '{tag}'")
        d = self.obj(val, p)
        raw_arg = self.req(d, "arg", p)
        arg = (
            self.argument(raw_arg, p + ".arg")
            if kind is OutputKind.USER_OUTPUT
            else Argument(ArgKind.TENSOR, self.ref(raw_arg, p + ".arg"))
        )
        return OutputSpec(kind, arg, self.target(d, kind.target_field, p))

    def target(self, d: dict, field_name: str | None, path: str) -> str | None:
        """A spec's state-dict name (or the user input it writes), if its kind has one."""
        if field_name is None:
            return None
        return self.str_(self.req(d, field_name, path), f"{path}.{field_name}")

    def signature(self, v: Any, path: str) -> GraphSignature:
        d = self.obj(v, path)
        if "input_specs" not in d:
            raise self.fail(
                path, "signature has no input_specs (schema 1 signatures are not supported)"
            )
        return GraphSignature(
            [
                self.input_spec(x, f"{path}.input_specs[{i}]")
                for i, x in enumerate(self.lst(d["input_specs"], path + ".input_specs"))
            ],
            [
                self.output_spec(x, f"{path}.output_specs[{i}]")
                for i, x in enumerate(
                    self.lst(self.req(d, "output_specs", path), path + ".output_specs")
                )
            ],
        )

    def bound(self, v: Any, path: str) -> int | None:
        if v is None:
            return None
        if isinstance(v, float):  # unbounded ones are null after versions.normalize
            return int(v)
        if type(v) is int:
            return v
        raise self.fail(path, f"expected an integer bound, got {_type_name(v)}")

    def module_call_graph(self, v: Any, path: str, nt_fields: dict) -> list[ModuleCallEntry]:
        out = []
        for i, e in enumerate(self.lst(v, path)):
            p = f"{path}[{i}]"
            d = self.obj(e, p)
            fqn = self.str_(self.req(d, "fqn", p), p + ".fqn")
            sig = d.get("signature")
            msig = None
            if sig is not None:
                sp = p + ".signature"
                sd = self.obj(sig, sp)
                msig = ModuleCallSignature(
                    inputs=[
                        self.argument(x, f"{sp}.inputs[{j}]")
                        for j, x in enumerate(self.lst(sd.get("inputs", []), sp + ".inputs"))
                    ],
                    outputs=[
                        self.argument(x, f"{sp}.outputs[{j}]")
                        for j, x in enumerate(self.lst(sd.get("outputs", []), sp + ".outputs"))
                    ],
                    in_spec=parse_treespec(
                        self.str_(self.req(sd, "in_spec", sp), sp + ".in_spec"),
                        namedtuple_fields=nt_fields,
                        member=self.member,
                        path=sp + ".in_spec",
                    ),
                    out_spec=parse_treespec(
                        self.str_(self.req(sd, "out_spec", sp), sp + ".out_spec"),
                        namedtuple_fields=nt_fields,
                        member=self.member,
                        path=sp + ".out_spec",
                    ),
                    forward_arg_names=_names_or_none(sd.get("forward_arg_names")),
                )
            out.append(ModuleCallEntry(fqn, msig))
        return out


_INPUT_KINDS = {kind.value: kind for kind in InputKind}
_OUTPUT_KINDS = {kind.value: kind for kind in OutputKind}

# How the checked parser reads the value of each kind that is not a list (a list kind's
# elements are read as its element kind): (parser, JSON value, path, nesting depth) → value.
_VALUE_PARSERS: dict[ArgKind, Callable[[_Parser, Any, str, int], Any]] = {
    ArgKind.NONE: lambda parser, v, path, depth: None,
    ArgKind.TENSOR: lambda parser, v, path, depth: parser.ref(v, path),
    ArgKind.OPTIONAL_TENSOR: lambda parser, v, path, depth: parser.optional_tensor(v, path),
    ArgKind.INT: lambda parser, v, path, depth: parser.int_(v, path),
    ArgKind.FLOAT: lambda parser, v, path, depth: parser.float_(v, path),
    ArgKind.BOOL: lambda parser, v, path, depth: parser.bool_(v, path),
    ArgKind.STRING: lambda parser, v, path, depth: parser.str_(v, path),
    ArgKind.COMPLEX: lambda parser, v, path, depth: parser.complex_(v, path),
    ArgKind.SYM_INT: lambda parser, v, path, depth: parser.sym_arg(v, path, "int"),
    ArgKind.SYM_FLOAT: lambda parser, v, path, depth: parser.sym_arg(v, path, "float"),
    ArgKind.SYM_BOOL: lambda parser, v, path, depth: parser.sym_arg(v, path, "bool"),
    ArgKind.SCALAR_TYPE: lambda parser, v, path, depth: parser.dtype(v, path),
    ArgKind.MEMORY_FORMAT: lambda parser, v, path, depth: parser.memory_format(v, path),
    ArgKind.LAYOUT: lambda parser, v, path, depth: parser.layout(v, path),
    ArgKind.DEVICE: lambda parser, v, path, depth: parser.device(v, path),
    ArgKind.GRAPH: lambda parser, v, path, depth: parser.graph_argument(v, path, depth),
    ArgKind.CUSTOM_OBJ: lambda parser, v, path, depth: parser.custom_obj(v, path),
    ArgKind.OPERATOR: lambda parser, v, path, depth: parser.str_(v, path),
    ArgKind.STRING_TO_ARGUMENT: lambda parser, v, path, depth: parser.arguments_by_name(
        v, path, depth
    ),
}


def schema_version_of(doc: Any, member: str) -> tuple[int, int]:
    """The (major, minor) a program JSON declares; raises for unknown majors."""
    if not isinstance(doc, dict):
        raise SchemaError(
            f"expected a JSON object at the top, got {_type_name(doc)}", member=member, path="$"
        )
    sv = doc.get("schema_version")
    if sv is None:
        major, minor = versions.VERSION_WHEN_UNRECORDED
    elif isinstance(sv, dict) and type(sv.get("major")) is int:
        major, minor = sv["major"], sv.get("minor", 0)
        if type(minor) is not int:
            raise SchemaError(
                "schema_version.minor is not an integer", member=member, path="schema_version.minor"
            )
    else:
        raise SchemaError(
            "schema_version must be {major, minor}", member=member, path="schema_version"
        )
    if major not in versions.SUPPORTED_MAJORS:
        raise SchemaError(
            f"unknown schema major {major} (this pt2interp reads majors "
            f"{min(versions.SUPPORTED_MAJORS)} to {max(versions.SUPPORTED_MAJORS)}: "
            "torch 2.3 and later)",
            member=member,
            path="schema_version.major",
        )
    return major, minor


def parse_exported_program(doc: Any, member: str, *, outline: bool = False) -> ExportedProgramModel:
    """Parse the program JSON (already decoded) into :class:`ExportedProgramModel`.

    ``outline=True`` reads of each node only what describing a program needs (target,
    metadata, name, subgraphs) and skips its arguments; such a graph says so
    (``graph.outline``) and cannot be run or turned into source.
    """
    version = schema_version_of(doc, member)
    versions.normalize(doc, version)
    p = _Parser(member, outline=outline)
    gm = p.obj(p.req(doc, "graph_module", "$"), "graph_module")
    nt_raw = p.obj(
        gm.get("treespec_namedtuple_fields") or {}, "graph_module.treespec_namedtuple_fields"
    )
    nt_fields = {k: (v.get("field_names") if isinstance(v, dict) else v) for k, v in nt_raw.items()}
    rc = {}
    for k, r in p.obj(doc.get("range_constraints") or {}, "range_constraints").items():
        rp = f"range_constraints.{k}"
        rd = p.obj(r, rp)
        rc[k] = RangeConstraint(
            p.bound(rd.get("min_val"), rp + ".min_val"), p.bound(rd.get("max_val"), rp + ".max_val")
        )
    verifiers = doc.get("verifiers")
    verifiers = verifiers if isinstance(verifiers, list) else []
    tv = doc.get("torch_version")
    return ExportedProgramModel(
        graph=p.graph(p.req(gm, "graph", "graph_module"), "graph_module.graph"),
        signature=p.signature(p.req(gm, "signature", "graph_module"), "graph_module.signature"),
        module_call_graph=p.module_call_graph(
            gm.get("module_call_graph") or [], "graph_module.module_call_graph", nt_fields
        ),
        range_constraints=rc,
        schema_version=version,
        opset_version={
            k: v
            for k, v in p.obj(doc.get("opset_version") or {}, "opset_version").items()
            if type(v) is int
        },
        verifiers=[x for x in verifiers if isinstance(x, str)],
        torch_version=tv if isinstance(tv, str) else None,
        metadata={
            k: v
            for k, v in p.obj(gm.get("metadata") or {}, "graph_module.metadata").items()
            if isinstance(v, str)
        },
        guards_code=[
            g for g in p.lst(doc.get("guards_code") or [], "guards_code") if isinstance(g, str)
        ],
    )


def parse_payload_config(doc: Any, member: str) -> dict[str, PayloadMeta]:
    """Parse ``model_weights_config.json`` / ``model_constants_config.json`` (torch 2.9+)."""
    p = _Parser(member)
    cfg = p.obj(p.req(p.obj(doc, "$"), "config", "$"), "config")
    out = {}
    for fqn, meta in cfg.items():
        plain = _plain_payload_meta(meta, p)
        if plain is not None:
            out[fqn] = plain
            continue
        mp = f"config.{fqn}"
        md = p.obj(meta, mp)
        tm = md.get("tensor_meta")
        out[fqn] = PayloadMeta(
            path_name=p.str_(p.req(md, "path_name", mp), mp + ".path_name"),
            is_param=bool(md.get("is_param", False)),
            use_pickle=bool(md.get("use_pickle", False)),
            tensor_meta=p.tensor_meta(tm, mp + ".tensor_meta") if tm is not None else None,
        )
    return out


def _names_or_none(v: Any) -> list[str] | None:
    return v if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


def _type_name(v: Any) -> str:
    return {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


class _MetasOnDemand(Mapping):
    """An outline's ``tensor_values``: each entry parsed (and checked) when first asked for,
    since describing a program needs the metadata of its inputs, outputs and weights only."""

    def __init__(self, raw: dict, parser: _Parser, path: str):
        self._raw, self._parser, self._path = raw, parser, path
        self._parsed: dict[str, TensorMeta] = {}

    def __getitem__(self, name: str) -> TensorMeta:
        meta = self._parsed.get(name)
        if meta is None:
            meta = self._parsed[name] = self._parser.tensor_meta(
                self._raw[name], f"{self._path}.{name}"
            )
        return meta

    def __iter__(self):
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)
