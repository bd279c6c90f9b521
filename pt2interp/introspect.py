"""Describe a ``.pt2`` without running it, without torch and without reading weight bytes.

:func:`read_schema` returns a :class:`ProgramSchema`: the archive layout, schema and torch
versions, the user inputs and outputs by the names :mod:`pt2interp.signature` gives them
(``x``, ``xs.0``, ``out.sum``, ``out.pair.1``) with dtypes and shapes whose symbolic dims carry
their ranges (``[s77∈1..1024, 16]``), every parameter, buffer and constant with shape, dtype
and byte size, totals, an op histogram (subgraphs included), the module tree recovered from
the nodes' ``nn_module_stack``, and which ops the running torch lacks.

Everything comes from the program JSON (and, for torch 2.9+ archives, the small
``<model>_weights_config.json`` that says which names share a storage record); the zip's
central directory gives sizes. Weight bytes are never read, so a 1 GB archive is described in
milliseconds.

>>> import pt2interp, importlib.resources as r
>>> schema = pt2interp.read_schema(r.files("pt2interp.examples") / "tiny_mlp.pt2")
>>> schema.layout, schema.inputs[0].name, schema.inputs[0].tensor.shape_str
('pt2', 'x', '[2, 8]')
>>> schema.totals.parameter_count
1872
>>> schema.parameters[0].name, schema.parameters[0].tensor.shape_str, schema.parameters[0].module
('fc1.weight', '[32, 8]', 'fc1')
>>> schema.to_dict()["totals"]["bytes_by_dtype"]
{'float32': 7488}

``missing_ops`` is ``None`` ("not checked") unless torch is already imported in the process or
``check_ops=True`` asks for the check (which imports torch); then it lists the node targets the
running torch does not have (``[]`` when it has them all).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, BinaryIO

from pt2interp.archive import Archive
from pt2interp.errors import Pt2Error, SchemaError
from pt2interp.kinds import STATE_INPUT_KINDS, ArgKind, InputKind
from pt2interp.payload import declared_views
from pt2interp.program import Program, collector_paused, read_payload_config, read_program
from pt2interp.schema import (
    Argument,
    Graph,
    RangeConstraint,
    SymExpr,
    TensorMeta,
    static_nbytes,
    static_numel,
)
from pt2interp.signature import CallSignature
from pt2interp.symexpr import EvaluationError, Expr

__all__ = [
    "ArchiveLayout",
    "IOValue",
    "ModuleNode",
    "ProgramSchema",
    "SymbolicDim",
    "TensorInfo",
    "Totals",
    "WeightInfo",
    "describe_program",
    "read_payload_config",
    "read_schema",
    "symbolic_dim",
]

_TORCH_OPS = "torch.ops."
_INT64_MAX = (1 << 63) - 1


# ----------------------------------------------------------------------------------------------
# The description
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SymbolicDim:
    """A size the program leaves open: its expression (``s77``, ``2*s0``) and range.

    ``min``/``max`` are None when unbounded or unknown; ``hint`` is the size seen at export.
    """

    expr: str
    min: int | None = None
    max: int | None = None
    hint: int | None = None

    def __str__(self) -> str:
        if self.min is None and self.max is None:
            return self.expr
        lo = "-∞" if self.min is None else str(self.min)
        hi = "∞" if self.max is None else str(self.max)
        return f"{self.expr}∈{lo}..{hi}"


@dataclass(frozen=True)
class TensorInfo:
    """dtype, shape (ints and :class:`SymbolicDim`), element count and bytes (None if dynamic)."""

    dtype: str
    shape: tuple[int | SymbolicDim, ...]
    device: str = "cpu"

    @property
    def is_static(self) -> bool:
        return all(isinstance(s, int) for s in self.shape)

    @property
    def numel(self) -> int | None:
        return static_numel(self.shape)

    @property
    def nbytes(self) -> int | None:
        return static_nbytes(self.shape, self.dtype)

    @property
    def shape_str(self) -> str:
        return "[" + ", ".join(str(s) for s in self.shape) + "]"

    def to_dict(self) -> dict:
        return {
            "dtype": self.dtype,
            "shape": [_jsonable(s) for s in self.shape],
            "shape_str": self.shape_str,
            "numel": self.numel,
            "nbytes": self.nbytes,
            "device": self.device,
        }


@dataclass(frozen=True)
class IOValue:
    """One user input or output, named by where it sits in the call.

    ``name``: ``x``, ``scale`` (keyword), ``x[0]``, ``out``, ``out[1]``, ``out['sum']``;
    ``graph_name``: the graph value; ``kind``: ``tensor``, ``int``, ``sym_int``, ``float``,
    ``bool``, ``none``, ``constant`` (an input specialised at export), ...; ``tensor`` for
    tensors; ``value`` for constants and symbolic ints.
    """

    name: str
    kind: str
    graph_name: str | None = None
    tensor: TensorInfo | None = None
    value: Any = None
    keyword: bool = False


@dataclass(frozen=True)
class WeightInfo:
    """A parameter, buffer or constant. ``module`` is the owning module's FQN; ``storage``
    the stored record where the layout says (names with equal ``storage`` and ``tied_to`` are
    the same tensor); ``persistent`` for buffers (False: not in ``state_dict()``)."""

    name: str
    kind: str  # parameter, buffer, tensor_constant, custom_obj
    tensor: TensorInfo | None
    module: str
    persistent: bool | None = None
    storage: str | None = None
    tied_to: str | None = None  # the first name of the same tensor, if this one is an alias
    class_fqn: str | None = None  # custom objects

    @property
    def nbytes(self) -> int | None:
        return self.tensor.nbytes if self.tensor else None


@dataclass
class ModuleNode:
    """A submodule: FQN (``""`` for the root), class, the parameters and buffers it owns
    directly (full names), and its children in order of first use."""

    fqn: str
    class_name: str | None = None
    type_name: str | None = None
    parameters: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    children: list[ModuleNode] = field(default_factory=list)
    parameter_count: int = 0  # elements of the parameters here and below (names, not storages)

    @property
    def name(self) -> str:
        return self.fqn.rsplit(".", 1)[-1]

    def walk(self):
        """This node and every node below, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class Totals:
    """Counts over parameters, buffers and constants; a tensor reachable under several names
    (tied weights) counts once where the archive records the sharing (torch 2.9+ layout)."""

    parameter_count: int
    parameter_bytes: int
    buffer_count: int
    buffer_bytes: int
    constant_bytes: int
    bytes_by_dtype: dict[str, int]
    tied: list[list[str]]

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())


@dataclass(frozen=True)
class ArchiveLayout:
    """The container: ``kind`` (``pt2`` or ``legacy``), top folder, models, members, file size."""

    kind: str
    top: str
    models: list[str]
    members: int
    file_bytes: int | None


@dataclass
class ProgramSchema:
    """What :func:`read_schema` returns. ``to_dict()`` / ``to_json()`` give plain JSON."""

    source: str
    model: str
    archive: ArchiveLayout
    schema_version: tuple[int, int]
    torch_version: str | None
    dialect: str
    inputs: list[IOValue]
    outputs: list[IOValue]
    parameters: list[WeightInfo]
    buffers: list[WeightInfo]
    constants: list[WeightInfo]
    range_constraints: dict[str, tuple[int | None, int | None]]
    totals: Totals
    op_histogram: dict[str, int]
    subgraph_ops: dict[str, dict[str, int]]
    module_tree: ModuleNode
    missing_ops: list[str] | None
    # symbolic values of the graph that could not be read ({JSON path: why}): reported, since
    # describing a program does not need them
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def layout(self) -> str:
        return self.archive.kind

    def weights(self) -> list[WeightInfo]:
        return [*self.parameters, *self.buffers, *self.constants]

    def to_dict(self) -> dict:
        d = _jsonable(self)
        d["schema_version"] = ".".join(map(str, self.schema_version))
        d["layout"] = self.layout
        d["totals"]["total_bytes"] = self.totals.total_bytes
        d["range_constraints"] = {
            k: {"min": lo, "max": hi} for k, (lo, hi) in self.range_constraints.items()
        }
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    # Constants are file content nested up to jsontext.MAX_DEPTH levels: loops, not
    # comprehensions (a frame of their own on Python 3.11), keep this at one frame per level,
    # as json.loads and json.dumps need.
    if isinstance(value, TensorInfo):
        return value.to_dict()
    if isinstance(value, SymbolicDim):
        return {"expr": value.expr, "min": value.min, "max": value.max, "hint": value.hint}
    if is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in fields(value):
            out[f.name] = _jsonable(getattr(value, f.name))
        return out
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out[str(k)] = _jsonable(v)
        return out
    if isinstance(value, (list, tuple)):
        items = []
        for v in value:
            items.append(_jsonable(v))
        return items
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def read_schema(
    source: str | os.PathLike | BinaryIO | Archive,
    model: str | None = None,
    *,
    check_ops: bool | None = None,
) -> ProgramSchema:
    """Describe one model of a ``.pt2`` (see the module docstring). Never imports torch unless
    ``check_ops=True``; with ``check_ops=None`` the op check runs only when torch is already
    imported, with ``False`` never (``missing_ops`` is then ``None``)."""
    # The parsed program is dropped before the collector resumes, so its objects are freed
    # by reference counting without ever being scanned.
    with collector_paused():
        schema = describe_program(
            read_program(source, model=model, outline=True), check_ops=check_ops
        )
    return schema


def describe_program(program: Program, *, check_ops: bool | None = False) -> ProgramSchema:
    """:func:`read_schema` for a program already read (outline or whole), so a caller that
    needs the nodes' arguments too parses the program once."""
    return _SchemaBuilder(program).build(_want_op_check(check_ops))


def _want_op_check(check_ops: bool | None) -> bool:
    return "torch" in sys.modules if check_ops is None else bool(check_ops)


class _SchemaBuilder:
    def __init__(self, program: Program):
        self.program = program
        self.model = program.model
        self.graph: Graph = program.model.graph
        self.ranges: dict[str, RangeConstraint] = program.model.range_constraints

    def build(self, check_ops: bool) -> ProgramSchema:
        p, m = self.program, self.model
        params, buffers, constants = self._weights()
        histogram, subgraphs = _op_histograms(self.graph)
        used = self._symbols_used()
        return ProgramSchema(
            source=p.source,
            model=p.model_name,
            archive=_archive_layout(p.archive),
            schema_version=m.schema_version,
            torch_version=m.torch_version,
            dialect=m.dialect,
            inputs=self._inputs(),
            outputs=self._outputs(),
            parameters=params,
            buffers=buffers,
            constants=constants,
            range_constraints={
                k: (r.min_val, r.max_val) for k, r in self.ranges.items() if k in used
            },
            totals=_totals(params, buffers, constants),
            op_histogram=histogram,
            subgraph_ops=subgraphs,
            module_tree=_module_tree(self.graph, params, buffers),
            missing_ops=_missing_ops(histogram) if check_ops else None,
            unreadable=_unreadable(self.graph),
        )

    def _symbols_used(self) -> set[str]:
        """The range constraints' symbols that some value of the graph (or a subgraph) uses:
        export can leave a constraint for a symbol nothing refers to (a loop's own count), and
        torch's loader drops those too. Stops looking once every symbol is found."""
        wanted = set(self.ranges)
        found: set[str] = set()

        def sizes(value):
            if isinstance(value, SymExpr):
                found.update(value.expr.symbols() & wanted)

        def graphs(graph: Graph):
            yield graph
            for node in graph.nodes:
                for na in node.inputs:
                    if na.arg.kind == "graph":
                        yield from graphs(na.arg.value.graph)

        if not wanted:
            return found
        try:
            # dynamic input dims: found without a scan
            for spec in self.model.signature.input_specs:
                meta = self.meta_of(spec.arg) if spec.kind is InputKind.USER_INPUT else None
                for d in meta.sizes if meta is not None else ():
                    sizes(d)
            if found == wanted:
                return found
            for graph in graphs(self.graph):
                for sym in graph.sym_int_values.values():
                    sizes(sym)
                for meta in graph.tensor_values.values():
                    for d in meta.sizes:
                        sizes(d)
                    if found == wanted:
                        return found
        except Pt2Error:  # a value describing does not need could not be read: keep every range
            return wanted
        return found

    # -- tensors and dims --------------------------------------------------------------------
    def tensor_info(self, meta: TensorMeta, name: str) -> TensorInfo:
        if not _countable(meta.sizes):
            # no tensor holds that many elements; its counts would not even print (4300 digits)
            raise SchemaError(
                f"{self.program.source}: tensor {name!r} has sizes whose product exceeds "
                f"2**63-1 elements ({len(meta.sizes)} sizes)"
            )
        return TensorInfo(meta.dtype, tuple(self.dim(s) for s in meta.sizes), str(meta.device))

    def dim(self, size: int | SymExpr) -> int | SymbolicDim:
        return symbolic_dim(size, self.ranges)

    def meta_of(self, arg: Argument) -> TensorMeta | None:
        if arg.kind == "tensor":
            return self.graph.tensor_values.get(arg.value.name)
        return None

    # -- inputs and outputs ------------------------------------------------------------------
    # names and order are the call signature's: the server and `run` use the same
    def _inputs(self) -> list[IOValue]:
        out = []
        for leaf in self.call.inputs:
            if leaf.kind == "constant":
                out.append(
                    IOValue(
                        leaf.name,
                        "constant",
                        leaf.spec.name,
                        None,
                        _jsonable(leaf.constant),
                        leaf.keyword,
                    )
                )
            else:
                out.append(self._value(leaf.name, leaf.spec.arg, leaf.keyword))
        return out

    def _outputs(self) -> list[IOValue]:
        return [self._value(leaf.name, leaf.spec.arg, False) for leaf in self.call.outputs]

    @functools.cached_property
    def call(self) -> CallSignature:
        return CallSignature.from_model(self.model)

    def _value(self, name: str, arg: Argument, keyword: bool) -> IOValue:
        meta = self.meta_of(arg)
        if meta is not None:
            return IOValue(
                name,
                "tensor",
                arg.value.name,
                self.tensor_info(meta, arg.value.name),
                None,
                keyword,
            )
        graph_name = _arg_name(arg)
        value = arg.value
        if arg.kind == "sym_int" and graph_name is not None:
            sym = self.graph.sym_int_values.get(graph_name)
            value = str(self.dim(sym)) if sym is not None else None
        elif arg.kind in ("sym_float", "sym_bool") and graph_name is not None:
            table = (
                self.graph.sym_float_values
                if arg.kind == "sym_float"
                else self.graph.sym_bool_values
            )
            value = table.get(graph_name)
        return IOValue(name, arg.kind, graph_name, None, _jsonable(value), keyword)

    # -- weights -----------------------------------------------------------------------------
    def _weights(self) -> tuple[list[WeightInfo], list[WeightInfo], list[WeightInfo]]:
        storages = _storage_records(self.program)
        groups: dict[InputKind, list[WeightInfo]] = {k: [] for k in STATE_INPUT_KINDS}
        first_of_view: dict[tuple, str] = {}
        seen: set[str] = set()
        for spec in self.model.signature.input_specs:
            if spec.kind not in groups or spec.target in seen:
                continue  # some torch versions list one tied parameter twice
            seen.add(spec.target)
            meta = self.meta_of(spec.arg)
            record = storages.get(spec.target)
            if meta is None and record is not None:
                meta = record[1]
            storage, tied_to = None, None
            if record is not None:
                storage = record[0]
                key = _view_key(storage, record[1])
                tied_to = first_of_view.setdefault(key, spec.target)
                tied_to = None if tied_to == spec.target else tied_to
            class_fqn = spec.arg.value.class_fqn if spec.arg.kind is ArgKind.CUSTOM_OBJ else None
            groups[spec.kind].append(
                WeightInfo(
                    spec.target,
                    spec.kind,
                    self.tensor_info(meta, spec.target) if meta is not None else None,
                    spec.target.rpartition(".")[0],
                    spec.persistent,
                    storage,
                    tied_to,
                    class_fqn,
                )
            )
        return (
            groups[InputKind.PARAMETER],
            groups[InputKind.BUFFER],
            groups[InputKind.TENSOR_CONSTANT] + groups[InputKind.CUSTOM_OBJ],
        )


def _countable(sizes) -> bool:
    """Whether the static sizes (zeros aside) multiply to at most 2**63-1, found without ever
    multiplying past it: a file may list thousands of sizes of 2**62."""
    n = 1
    for s in sizes:
        if isinstance(s, int) and s:
            n *= s
            if n > _INT64_MAX:
                return False
    return True


def _unreadable(graph: Graph) -> dict[str, str]:
    out = dict(graph.unreadable)
    for node in graph.nodes:
        for na in node.inputs:
            if na.arg.kind == "graph":
                out.update(_unreadable(na.arg.value.graph))
    return out


def _arg_name(arg: Argument) -> str | None:
    refs = arg.refs()
    return refs[0] if refs else None


# -- symbolic ranges ----------------------------------------------------------------------------

# Operations under which an expression grows with each of its symbols (for non-negative
# constants): its range is then its value at the symbols' minima and at their maxima.
_MONOTONE_OPS = frozenset({"sym", "int", "add", "mul", "floordiv", "max", "min"})


def _expr_range(expr: Expr, ranges: dict[str, RangeConstraint]) -> tuple[int | None, int | None]:
    sym = expr.as_symbol()
    if sym is not None:
        r = ranges.get(sym)
        return (r.min_val, r.max_val) if r is not None else (None, None)
    if not _is_monotone(expr) or any(s not in ranges for s in expr.symbols()):
        return None, None
    lows = {s: ranges[s].min_val for s in expr.symbols()}
    highs = {s: ranges[s].max_val for s in expr.symbols()}
    try:
        lo = expr.evaluate(lows) if None not in lows.values() else None
        hi = expr.evaluate(highs) if None not in highs.values() else None
    except EvaluationError:  # a range too wide to evaluate (hostile or absurd): show it unbounded
        return None, None
    return lo, hi


def symbolic_dim(size: int | SymExpr, ranges: dict[str, RangeConstraint]) -> int | SymbolicDim:
    """A size as described: an int, or its expression with the range the constraints give."""
    if isinstance(size, int):
        return size
    lo, hi = _expr_range(size.expr, ranges)
    hint = size.hint if isinstance(size.hint, int) and not isinstance(size.hint, bool) else None
    return SymbolicDim(str(size.expr), lo, hi, hint)


def _is_monotone(expr: Expr) -> bool:
    if expr.op not in _MONOTONE_OPS or (expr.op == "int" and expr.value < 0):
        return False
    if expr.op == "floordiv" and not (expr.args[1].op == "int" and expr.args[1].value > 0):
        return False
    return all(_is_monotone(a) for a in expr.args)


# -- storage sharing (torch 2.9+ layout) ---------------------------------------------------------


def _storage_records(program: Program) -> dict[str, tuple[str, TensorMeta | None]]:
    """``{name: (record member, tensor_meta)}`` as the weights/constants configs declare them."""
    return {
        v.name: (v.relative, v.tensor_meta)
        for v in declared_views(program.archive, program.model_name)
    }


def _view_key(storage: str, meta: TensorMeta | None) -> tuple:
    if meta is None:
        return (storage,)
    return (
        storage,
        meta.dtype,
        tuple(map(str, meta.sizes)),
        tuple(map(str, meta.strides)),
        str(meta.storage_offset),
    )


# -- totals --------------------------------------------------------------------------------------


def _totals(
    params: list[WeightInfo], buffers: list[WeightInfo], constants: list[WeightInfo]
) -> Totals:
    def unique(items):
        return [w for w in items if w.tied_to is None and w.tensor is not None]

    by_dtype: Counter = Counter()
    for w in unique(params + buffers + constants):
        by_dtype[w.tensor.dtype] += w.nbytes or 0
    tied: dict[str, list[str]] = {}
    for w in params + buffers + constants:
        if w.tied_to is not None:
            tied.setdefault(w.tied_to, [w.tied_to]).append(w.name)
    return Totals(
        parameter_count=sum(w.tensor.numel or 0 for w in unique(params)),
        parameter_bytes=sum(w.nbytes or 0 for w in unique(params)),
        buffer_count=len(buffers),
        buffer_bytes=sum(w.nbytes or 0 for w in unique(buffers)),
        constant_bytes=sum(w.nbytes or 0 for w in unique(constants)),
        bytes_by_dtype=dict(sorted(by_dtype.items())),
        tied=list(tied.values()),
    )


# -- ops -----------------------------------------------------------------------------------------


def _op_histograms(graph: Graph) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Target → count over every node (subgraphs included), and per subgraph."""
    total: Counter = Counter()
    per_subgraph: dict[str, Counter] = {}

    def visit(g: Graph, into: list[Counter]) -> None:
        for node in g.nodes:
            for c in into:
                c[node.target] += 1
            for na in node.inputs:
                if na.arg.kind == "graph":
                    sub = per_subgraph.setdefault(na.arg.value.name, Counter())
                    visit(na.arg.value.graph, [total, sub])

    visit(graph, [total])
    return (
        dict(total.most_common()),
        {name: dict(c.most_common()) for name, c in per_subgraph.items()},
    )


def _missing_ops(histogram: dict[str, int]) -> list[str]:
    # Imports torch (and the op registry) on purpose: the caller asked for the check.
    from pt2interp.errors import UnsupportedOpError
    from pt2interp.ops.registry import resolve_torch_op

    missing = []
    for target in histogram:
        if not target.startswith(_TORCH_OPS):
            continue  # Python operators (_operator.getitem, ...) need no torch op
        try:
            resolve_torch_op(target)
        except UnsupportedOpError:
            missing.append(target)
    return sorted(missing)


# -- module tree ---------------------------------------------------------------------------------

# Real module trees are a few levels deep; deeper paths (only a doctored file has them) are cut
# here so that building, walking and serializing the tree stay far from the recursion limit.
_MAX_MODULE_DEPTH = 64


def _module_tree(graph: Graph, params: list[WeightInfo], buffers: list[WeightInfo]) -> ModuleNode:
    nodes: dict[str, ModuleNode] = {"": ModuleNode("")}

    def ensure(fqn: str) -> ModuleNode:
        node = nodes.get(fqn)
        if node is not None:
            return node
        parts = fqn.split(".")[:_MAX_MODULE_DEPTH]
        parent = nodes[""]
        for i in range(1, len(parts) + 1):
            path = ".".join(parts[:i])
            node = nodes.get(path)
            if node is None:
                node = nodes[path] = ModuleNode(path)
                parent.children.append(node)
            parent = node
        return parent

    # execution order first, so children list in the order the forward pass meets them
    for node in graph.iter_nodes():
        for frame in node.nn_module_stack:
            m = ensure(frame.fqn)
            if m.type_name is None:
                m.class_name, m.type_name = frame.class_name, frame.type_name
    for w in params:
        ensure(w.module).parameters.append(w.name)
    for w in buffers:
        ensure(w.module).buffers.append(w.name)
    counts = {w.name: (w.tensor.numel or 0) if w.tensor else 0 for w in params}

    def count(node: ModuleNode) -> int:
        node.parameter_count = sum(counts[p] for p in node.parameters) + sum(
            count(c) for c in node.children
        )
        return node.parameter_count

    count(nodes[""])
    return nodes[""]


def _archive_layout(archive: Archive) -> ArchiveLayout:
    size = None
    if archive.source and os.path.isfile(archive.source):
        size = os.path.getsize(archive.source)
    return ArchiveLayout(
        archive.layout, archive.top, list(archive.model_names), len(archive.members), size
    )
