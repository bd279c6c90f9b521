"""The graph of a program as plain JSON data for the page: modules, nodes, edges, weights.

:func:`graph_data` reads the program JSON (no torch, no weight bytes) and returns a dict the
page's script draws. Every node of every graph is one entry of ``nodes``, in execution order,
each graph's inputs first and its outputs last:

* ``k`` (kind): ``input`` (a user input, or a subgraph's own input), ``param``, ``buffer``,
  ``const`` (tensor constants, script objects, constant inputs), ``token``, ``op``, ``hop``
  (a higher-order op such as ``cond``, whose subgraphs are listed in ``sub``), ``output``
  and ``mutation`` (a buffer or input the program writes back);
* ``n`` its name, ``op`` its short target (``aten.addmm``), ``g`` the graph it belongs to (0:
  the program's own), ``m`` its module (an index into ``modules``; -1 inside a subgraph);
* ``in``: the indices of the nodes whose values it reads (its edges); ``out``: its values as
  ``[name, dtype, shape]``, symbolic sizes with their ranges (``s77∈2..1024``);
* ``a``: its arguments as ``[name, text, [value names]]``; ``st``: an index into ``traces``,
  the stack trace as ``[file, line, function, code]`` frames, with ``src`` the frame of the
  user's own code; weights carry ``w`` = ``{shape, dtype, bytes, tied_to, persistent}``.

>>> import importlib.resources as r
>>> data = graph_data(r.files("pt2interp.examples") / "tiny_mlp.pt2")
>>> [m["path"] for m in data["modules"]]
['', 'fc1', 'fc2', 'fc3']
>>> [(n["k"], n["n"]) for n in data["nodes"]][:3]
[('param', 'fc1.weight'), ('param', 'fc1.bias'), ('param', 'fc2.weight')]
>>> relu = next(n for n in data["nodes"] if n.get("op") == "aten.relu")
>>> relu["out"], data["nodes"][relu["in"][0]]["op"]
([['relu', 'float32', '[2, 32]']], 'aten.linear')
"""

from __future__ import annotations

import os
import re
from typing import Any, BinaryIO

from pt2interp.archive import Archive
from pt2interp.introspect import ProgramSchema, describe_program, symbolic_dim
from pt2interp.kinds import ArgKind, InputKind, OutputKind
from pt2interp.program import Program, collector_paused, read_program
from pt2interp.schema import (
    Argument,
    CustomObjRef,
    Graph,
    GraphArgument,
    Node,
    Ref,
    SymExpr,
    TensorMeta,
)

__all__ = ["FORMAT_VERSION", "graph_data"]

FORMAT_VERSION = 1

# Argument and trace text comes from the file: a list of a million ints or a megabyte of
# stack trace would bloat the page without telling anyone more.
_MAX_ARG_TEXT = 400
_MAX_TRACE_FRAMES = 64
_MAX_CODE_TEXT = 300
_MAX_MODULE_DEPTH = 64  # as introspect's module tree

_INPUT_KIND_NAMES = {
    InputKind.USER_INPUT: "input",
    InputKind.PARAMETER: "param",
    InputKind.BUFFER: "buffer",
    InputKind.TENSOR_CONSTANT: "const",
    InputKind.CUSTOM_OBJ: "const",
    InputKind.CONSTANT_INPUT: "const",
    InputKind.TOKEN: "token",
}

_FRAME = re.compile(r'\s*File "([^"]*)", line (\d+), in (.*)')


def graph_data(
    source: str | os.PathLike | BinaryIO | Archive | Program, *, model: str | None = None
) -> dict[str, Any]:
    """The view's data for one model of a ``.pt2`` (see the module docstring)."""
    with collector_paused():
        program = source if isinstance(source, Program) else read_program(source, model=model)
        return _Builder(program).build()


class _Builder:
    def __init__(self, program: Program):
        self.program = program
        self.model = program.model
        self.schema: ProgramSchema = describe_program(program)
        self.ranges = self.model.range_constraints
        self.nodes: list[dict] = []
        self.graphs: list[dict] = []
        self.traces: list[dict] = []
        self._trace_index: dict[str, int] = {}
        self._shape_text: dict[tuple, str] = {}
        self.modules: list[dict] = []
        self._module_index: dict[str, int] = {}
        self._module_by_stack: dict[str, int] = {}

    def build(self) -> dict[str, Any]:
        self._add_modules()
        self._add_graph(self.model.graph, None, "", main=True)
        s = self.schema
        return {
            "format": FORMAT_VERSION,
            "program": {
                "file": os.path.basename(s.source) if s.source else None,
                "model": s.model,
                "layout": s.layout,
                "schema_version": ".".join(map(str, s.schema_version)),
                "torch_version": s.torch_version,
                "dialect": s.dialect,
                "inputs": [[v.name, _io_text(v)] for v in s.inputs],
                "outputs": [[v.name, _io_text(v)] for v in s.outputs],
                "ranges": {k: [lo, hi] for k, (lo, hi) in s.range_constraints.items()},
                "parameter_count": s.totals.parameter_count,
                "total_bytes": s.totals.total_bytes,
                "bytes_by_dtype": s.totals.bytes_by_dtype,
                "op_count": sum(s.op_histogram.values()),
                "ops": s.op_histogram,
            },
            "modules": self.modules,
            "graphs": self.graphs,
            "nodes": self.nodes,
            "traces": self.traces,
        }

    # -- modules -----------------------------------------------------------------------------
    def _add_modules(self) -> None:
        def add(module, parent: int) -> None:
            index = len(self.modules)
            self._module_index[module.fqn] = index
            self.modules.append(
                {
                    "path": module.fqn,
                    "name": module.name,
                    "cls": module.class_name,
                    "type": module.type_name,
                    "parent": parent,
                    "params": module.parameter_count,
                }
            )
            if not module.fqn:  # the whole program: a tied weight once, as in the totals
                self.modules[-1]["params"] = self.schema.totals.parameter_count
            # iterative would be no clearer: the tree is at most _MAX_MODULE_DEPTH deep
            for child in module.children:
                add(child, index)

        add(self.schema.module_tree, -1)

    def _module_of_node(self, node: Node) -> int:
        # Consecutive nodes of a module share one stack string: each is parsed once per build
        # (the parser's own cache is bounded, and a big model has more distinct stacks).
        text = node.metadata.get("nn_module_stack") or ""
        index = self._module_by_stack.get(text)
        if index is None:
            index = self._module_by_stack[text] = self._module_of(_innermost_module(node))
        return index

    def _module_of(self, fqn: str) -> int:
        """The index of the module ``fqn``, or of its nearest ancestor the tree holds."""
        index = self._module_index.get(fqn)
        if index is not None:
            return index
        parts = fqn.split(".")[:_MAX_MODULE_DEPTH]
        while parts:
            index = self._module_index.get(".".join(parts))
            if index is not None:
                return index
            parts.pop()
        return 0

    # -- graphs ------------------------------------------------------------------------------
    def _add_graph(self, graph: Graph, owner: int | None, name: str, *, main: bool) -> int:
        g = len(self.graphs)
        self.graphs.append({"name": name, "owner": owner, "first": len(self.nodes)})
        producers: dict[str, int] = {}
        if main:
            self._add_signature_inputs(graph, g, producers)
        else:
            for i, arg in enumerate(graph.inputs):
                self._add_value_node("input", _first_ref(arg) or f"arg{i}", arg, graph, g, -1, {})
                for ref in arg.refs():
                    producers[ref] = len(self.nodes) - 1
        for node in graph.nodes:
            self._add_op(node, graph, g, producers, main)
        if main:
            self._add_signature_outputs(graph, g, producers)
        else:
            for i, arg in enumerate(graph.outputs):
                name = f"out{i}" if len(graph.outputs) > 1 else "out"
                self._add_output("output", name, arg, graph, g, -1)
                self._link_last(arg.refs(), producers)
        self.graphs[g]["end"] = len(self.nodes)
        return g

    def _add_signature_inputs(self, graph: Graph, g: int, producers: dict[str, int]) -> None:
        signature = self.model.signature
        user_names = {v.graph_name: v.name for v in self.schema.inputs if v.graph_name is not None}
        weights = {w.name: w for w in self.schema.weights()}
        for spec in signature.input_specs:
            kind = _INPUT_KIND_NAMES.get(spec.kind, "input")
            ref = _first_ref(spec.arg)
            module = 0
            extra: dict[str, Any] = {}
            if spec.kind is InputKind.USER_INPUT:
                name = user_names.get(ref, ref or "input")
            elif spec.kind is InputKind.CONSTANT_INPUT:
                name = spec.name or ref or "constant"
                extra["value"] = _clip(repr(spec.constant_value))
            elif spec.target:
                name = spec.target
                module = self._module_of(spec.target.rpartition(".")[0])
                w = weights.get(spec.target)
                if w is not None:
                    extra["w"] = {
                        "shape": w.tensor.shape_str if w.tensor else None,
                        "dtype": w.tensor.dtype if w.tensor else None,
                        "bytes": w.nbytes,
                        "tied_to": w.tied_to,
                        "persistent": w.persistent,
                        "class": w.class_fqn,
                    }
            else:
                name = ref or spec.kind.value
            self._add_value_node(kind, name, spec.arg, graph, g, module, extra)
            for r in spec.arg.refs():
                producers.setdefault(r, len(self.nodes) - 1)

    def _add_signature_outputs(self, graph: Graph, g: int, producers: dict[str, int]) -> None:
        user = iter(self.schema.outputs)
        for spec in self.model.signature.output_specs:
            if spec.kind is OutputKind.TOKEN:
                continue
            if spec.kind is OutputKind.USER_OUTPUT:
                shown = next(user, None)
                name, kind = (shown.name if shown else _first_ref(spec.arg) or "out"), "output"
            elif spec.kind.mutates:
                name, kind = spec.target or _first_ref(spec.arg) or "mutation", "mutation"
            else:
                name, kind = f"{spec.kind.value}: {spec.target or ''}".rstrip(": "), "output"
            self._add_output(kind, name, spec.arg, graph, g, 0, spec_kind=spec.kind.value)
            self._link_last(spec.arg.refs(), producers)

    def _add_output(
        self,
        kind: str,
        name: str,
        arg: Argument,
        graph: Graph,
        g: int,
        module: int,
        spec_kind: str | None = None,
    ) -> None:
        entry = {"k": kind, "n": name, "g": g, "m": module, "in": []}
        out = self._values_of([arg], graph)
        if out:
            entry["out"] = out
        if spec_kind:
            entry["spec"] = spec_kind
        entry["a"] = [["value", _arg_text(arg), arg.refs()]]
        self.nodes.append(entry)

    def _link_last(self, refs: list[str], producers: dict[str, int]) -> None:
        entry = self.nodes[-1]
        for r in refs:
            p = producers.get(r)
            if p is not None and p not in entry["in"]:
                entry["in"].append(p)

    def _add_value_node(
        self, kind: str, name: str, arg: Argument, graph: Graph, g: int, module: int, extra: dict
    ) -> None:
        entry = {"k": kind, "n": name, "g": g, "m": module, "in": []}
        ref = _first_ref(arg)
        if ref is not None and ref != name:
            entry["v"] = ref
        out = self._values_of([arg], graph)
        if out:
            entry["out"] = out
        entry.update(extra)
        self.nodes.append(entry)

    def _add_op(
        self, node: Node, graph: Graph, g: int, producers: dict[str, int], main: bool
    ) -> None:
        index = len(self.nodes)
        inputs: list[int] = []
        args = []
        subgraphs: list[GraphArgument] = []
        for i, na in enumerate(node.inputs):
            if na.arg.kind is ArgKind.GRAPH:
                subgraphs.append(na.arg.value)
            refs = na.arg.refs()
            for r in refs:
                p = producers.get(r)
                if p is not None and p not in inputs:
                    inputs.append(p)
            args.append([na.name or str(i), _arg_text(na.arg), refs])
        entry: dict[str, Any] = {
            "k": "hop" if subgraphs else "op",
            "n": node.label,
            "op": _short_target(node.target),
            "t": node.target,
            "g": g,
            "m": self._module_of_node(node) if main else -1,
            "in": inputs,
            "a": args,
        }
        out = self._values_of(node.outputs, graph)
        if out:
            entry["out"] = out
        trace = node.stack_trace
        if trace:
            entry["st"] = self._trace(trace)
        self.nodes.append(entry)
        for o in node.outputs:
            for r in o.refs():
                producers[r] = index
        if subgraphs:
            entry["sub"] = [self._add_graph(s.graph, index, s.name, main=False) for s in subgraphs]

    # -- values ------------------------------------------------------------------------------
    def _values_of(self, args: list[Argument], graph: Graph) -> list[list]:
        out = []
        for arg in args:
            for ref in arg.refs():
                meta = graph.tensor_values.get(ref)
                if meta is not None:
                    out.append([ref, meta.dtype, self._shape(meta)])
                elif ref in graph.sym_int_values:
                    out.append([ref, "sym_int", str(self._dim(graph.sym_int_values[ref]))])
                elif ref in graph.sym_bool_values:
                    out.append([ref, "sym_bool", ""])
                elif ref in graph.sym_float_values:
                    out.append([ref, "sym_float", ""])
                elif ref in graph.custom_obj_values:
                    out.append([ref, "object", graph.custom_obj_values[ref].class_fqn])
        return out

    def _shape(self, meta: TensorMeta) -> str:
        key = tuple(str(s) for s in meta.sizes)
        text = self._shape_text.get(key)
        if text is None:
            text = "[" + ", ".join(str(self._dim(s)) for s in meta.sizes) + "]"
            self._shape_text[key] = text
        return text

    def _dim(self, size) -> Any:
        return symbolic_dim(size, self.ranges) if isinstance(size, (int, SymExpr)) else size

    def _trace(self, text: str) -> int:
        index = self._trace_index.get(text)
        if index is None:
            index = self._trace_index[text] = len(self.traces)
            self.traces.append(_parse_trace(text))
        return index


# -- text ----------------------------------------------------------------------------------


def _first_ref(arg: Argument) -> str | None:
    refs = arg.refs()
    if refs:
        return refs[0]
    return arg.value.name if arg.kind is ArgKind.CUSTOM_OBJ else None


def _short_target(target: str) -> str:
    """``torch.ops.aten.addmm.default`` → ``aten.addmm``; other overloads stay
    (``aten.add.Tensor``); Python operators keep their function (``operator.getitem``)."""
    t = target.removeprefix("torch.ops.")
    if t.endswith(".default"):
        t = t[: -len(".default")]
    return t.removeprefix("_")


def _innermost_module(node: Node) -> str:
    stack = node.nn_module_stack
    return stack[-1].fqn if stack else ""


def _clip(text: str, limit: int = _MAX_ARG_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _arg_text(arg: Argument) -> str:
    return _clip(_value_text(arg.kind, arg.value))


def _value_text(kind: ArgKind, value: Any) -> str:
    if kind is ArgKind.GRAPH:
        return f"<graph {value.name}>"
    if kind is ArgKind.SCALAR_TYPE:
        return f"torch.{value}"
    if kind is ArgKind.STRING_TO_ARGUMENT:
        items = ", ".join(f"{k!r}: {_value_text(v.kind, v.value)}" for k, v in value.items())
        return "{" + items + "}"
    return _plain_text(value)


def _plain_text(value: Any, depth: int = 0) -> str:
    if isinstance(value, (Ref, CustomObjRef)):
        return value.name
    if isinstance(value, (tuple, list)):
        if depth > 8:
            return "[…]"
        parts, length = [], 0
        for v in value:
            parts.append(_plain_text(v, depth + 1))
            length += len(parts[-1]) + 2
            if length > _MAX_ARG_TEXT:
                parts.append("…")
                break
        return "[" + ", ".join(parts) + "]"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, SymExpr):
        return str(value.expr)
    return str(value)


def _io_text(value) -> str:
    if value.tensor is not None:
        return f"{value.tensor.dtype}{value.tensor.shape_str}"
    if value.value is not None:
        return f"{value.kind} = {_clip(str(value.value))}"
    return value.kind


def _parse_trace(text: str) -> dict:
    """Frames ``[file, line, function, code]`` of a stack trace, and ``src``: the innermost
    frame outside torch (the line of the user's model that made the node)."""
    frames: list[list] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines) and len(frames) < _MAX_TRACE_FRAMES:
        m = _FRAME.match(lines[i])
        if m:
            code = ""
            if i + 1 < len(lines) and not _FRAME.match(lines[i + 1]):
                code = lines[i + 1].strip()
                i += 1
            frames.append([m.group(1), int(m.group(2)), m.group(3), _clip(code, _MAX_CODE_TEXT)])
        i += 1
    if not frames:  # not the usual layout: keep the text, bounded
        return {"frames": [], "src": -1, "text": _clip(text, 4000)}
    return {"frames": frames, "src": _users_frame(frames)}


def _users_frame(frames: list[list]) -> int:
    """The innermost frame outside torch; where the paths were cut to file names (as
    reproducible exports do), the innermost frame of the outermost frame's file, which is the
    user's model code."""
    paths = [f[0].replace("\\", "/") for f in frames]
    if any("/" in p for p in paths):
        for j in range(len(paths) - 1, -1, -1):
            if "/torch/" not in paths[j] and not paths[j].startswith("torch/"):
                return j
        return len(paths) - 1
    return max(j for j, p in enumerate(paths) if p == paths[0])
