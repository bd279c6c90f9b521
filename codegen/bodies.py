"""Function bodies as templates: one line per statement, graph values as markers.

A body refers to graph values through markers (``_v0``, ``_v1``, ... numbered in order of
appearance), so two calls with the same structure give the same template text whatever
their graph names are; that is how instances of one block are recognised as one class.
Real local names are put in when the representative instance is written out
(:meth:`FunctionCode.local_names`, :func:`render_line`).

What a statement calls comes from the :class:`ChildCalls` (how each child module is called) and
the op registry (inline nodes); ``torch.cond`` becomes an ``if`` on the predicate calling
two helper methods (see :meth:`BodyBuilder.emit_cond`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pt2interp.codegen import printer
from pt2interp.codegen.facts import ProgramFacts, node_defines, node_reads, relative
from pt2interp.codegen.names import (
    COMMENT_SCAN,
    MODULE_NAMES,
    Scope,
    comment,
    identifier,
    stripped_stem,
)
from pt2interp.codegen.statements import (
    argument_source,
    bind_target,
    expression,
    node_statement,
    output_pattern,
)
from pt2interp.codegen.tree import ChildItem, Module, NodeItem, frames_of
from pt2interp.errors import GraphError, UnsupportedOpError
from pt2interp.kinds import ArgKind
from pt2interp.ops.registry import Call, lookup
from pt2interp.schema import Argument, Graph, Node

MARKER = re.compile(r"^_v(\d+)$")


def _grad_header(node: Node, source: Callable) -> str:
    enabled = node.inputs[0].arg
    if enabled.kind is ArgKind.BOOL:
        return "with torch.enable_grad():" if enabled.value else "with torch.no_grad():"
    return f"with torch.set_grad_enabled({source(enabled)}):"


def _autocast_header(node: Node, source: Callable) -> str:
    names = ("device_type", "dtype", "enabled", "cache_enabled")
    args = [f"{k}={source(na.arg)}" for k, na in zip(names, node.inputs[:4])]
    return f"with torch.autocast({', '.join(args)}):"


# torch.func.jvp turns forward-mode AD on inside its level, which export does not record; the
# generated code does it in a ``with`` block between the level's enter and exit, so tangents
# are computed under torch.inference_mode() too (it turns forward-mode AD off)
# Arguments that hand an op tensors (whose device a factory call follows instead of its own).
_TENSOR_KINDS = frozenset(
    {ArgKind.TENSOR, ArgKind.TENSORS, ArgKind.OPTIONAL_TENSOR, ArgKind.OPTIONAL_TENSORS}
)
# Operands a helper method takes as one named parameter each.
_OPERAND_KINDS = frozenset({ArgKind.TENSOR, ArgKind.SYM_INT, ArgKind.SYM_FLOAT, ArgKind.SYM_BOOL})
_JVP_ENTER = "torch._functorch.predispatch._jvp_increment_nesting"
_JVP_EXIT = "torch._functorch.predispatch._jvp_decrement_nesting"
_FORWARD_AD_HEADER = "with torch.autograd.forward_ad._set_fwd_grad_enabled(True):"
_FORWARD_AD_NOTE = "as torch.func.jvp does: forward-mode AD on (inference mode turns it off)"

_HELPER_NAMES = {
    "torch.ops.higher_order.map_impl": "map_body",
    "torch.ops.higher_order.scan": "scan_body",
    "torch.ops.higher_order.associative_scan": "combine",
}


def _items(arg: Argument, node: Node) -> list[Argument]:
    """The values of a list argument (``tensors``, ``sym_ints``, ``ints``), one Argument each."""
    if arg.kind is ArgKind.TENSORS:
        return [Argument(ArgKind.TENSOR, r) for r in arg.value]
    if arg.kind in (ArgKind.SYM_INTS, ArgKind.INTS):
        return [
            Argument(ArgKind.INT if isinstance(v, int) else ArgKind.SYM_INT, v) for v in arg.value
        ]
    raise UnsupportedOpError(
        f"node {node.label}: a {arg.kind} argument where {node.target} takes a list"
    )


# Higher-order ops that run one subgraph on operands: (subgraph input, first operand input,
# ``with`` header or None, helper name). Checkpoint tags, hints and subgraph ids change
# nothing in eager mode, so those call the helper alone.
_REGIONS: dict[str, tuple] = {
    "torch.ops.higher_order.wrap_with_set_grad_enabled": (1, 2, _grad_header, "grad_region"),
    "torch.ops.higher_order.wrap_with_autocast": (4, 5, _autocast_header, "autocast_region"),
    "torch.ops.higher_order.wrap": (0, 1, None, "wrapped"),
    "torch.ops.higher_order.tag_activation_checkpoint": (0, 1, None, "checkpointed"),
    "torch.ops.higher_order.hints_wrapper": (0, 1, None, "hinted"),
    "torch.ops.higher_order.invoke_subgraph": (0, 2, None, "subgraph"),
}


@dataclass
class CodeLine:
    depth: int
    text: str  # a statement template, or an ``if``/``else``/``with``/``while`` header
    kind: str = "stmt"  # stmt | if | else | with | while
    comment: str | None = None  # original source line, written above the statement


@dataclass
class FunctionCode:
    """One method: parameters and lines as templates over markers."""

    name: str
    params: list[str] = field(default_factory=list)  # markers, in order
    lines: list[CodeLine] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # marker → graph value name
    hints: dict[str, str] = field(default_factory=dict)  # marker → preferred local name
    param_names: dict[str, str] = field(default_factory=dict)  # fixed names (root forward)
    kwonly_from: int | None = None  # index of the first keyword-only param

    def signature(self) -> tuple:
        return (
            len(self.params),
            self.kwonly_from,
            tuple((ln.depth, ln.kind, ln.text) for ln in self.lines),
        )

    def local_names(self, reserved: set[str]) -> dict[str, str]:
        """marker → local name: fixed names first, then parameters, then locals by first
        definition; every name sanitized and unique in the function."""
        scope = Scope(reserved | MODULE_NAMES)
        names: dict[str, str] = {}
        for m in self.params:
            if m in self.param_names:
                names[m] = scope.claim(self.param_names[m])
        singles = [m for m in self.params if m not in names]
        for m in singles:
            names[m] = scope.claim(
                "x" if len(singles) == 1 and not self.param_names else self.hints.get(m, "x")
            )
        for m in sorted(self.hints, key=lambda k: int(k[2:])):
            if m not in names:
                names[m] = scope.claim(self.hints[m])
        return names


class ClassContext:
    """Helper methods of the class being built, in the order their names were taken
    (``true_branch``, ``false_branch``, then the branches of a nested cond)."""

    def __init__(self, member_scope: Scope):
        self.scope = member_scope
        self._slots: dict[str, FunctionCode | None] = {}

    def helper_name(self, base: str) -> str:
        name = self.scope.claim(base)
        self._slots[name] = None
        return name

    def add(self, code: FunctionCode) -> None:
        self._slots[code.name] = code

    @property
    def helpers(self) -> list[FunctionCode]:
        return [code for code in self._slots.values() if code is not None]


@dataclass
class ChildCalls:
    """How the bodies call each child module (decided before any body is written)."""

    kind_of: Callable[[Module], str]  # layer | sequential | modulelist | class | inline
    layer_call: Callable[
        [object, Callable[[str], str], str], tuple[str, object]
    ]  # call, source, self expr
    method_of: Callable[[object], str]  # class-kind call → method name
    comments: bool = True


class BodyBuilder:
    """Builds one :class:`FunctionCode` for module ``module`` over graph values."""

    def __init__(
        self,
        facts: ProgramFacts,
        module: Module,
        root: Module,
        child_calls: ChildCalls,
        ctx: ClassContext,
        name: str,
        *,
        last_use: dict[str, int] | None = None,
    ):
        self.facts = facts
        self.module = module
        self.root = root
        self.child_calls = child_calls
        self.ctx = ctx
        self.code = FunctionCode(name)
        self.env: dict[str, str] = {}
        self.last_use = facts.last_use if last_use is None else last_use
        self.tensor_values = facts.program.graph.tensor_values  # a subgraph's own are added
        self._count = 0
        self._last_comment: str | None = None
        self.position = -1  # index of the node being written: values read after it are "used"
        self.depth = 0  # ``with`` blocks open around the lines being written (jvp's forward AD)

    # -- values -----------------------------------------------------------------------------------
    def _marker(self, value: str, hint: str) -> str:
        m = f"_v{self._count}"
        self._count += 1
        self.code.values[m] = value
        self.code.hints[m] = hint
        return m

    def add_param(self, value: str, name: str | None = None) -> str:
        m = self._marker(value, self.hint(value))
        if name is not None:
            self.code.param_names[m] = name
        self.code.params.append(m)
        self.env[value] = m
        return m

    def bind(self, value: str, text: str) -> None:
        """``value`` reads as ``text`` (``self.lin.weight``, ``None``) in this body."""
        self.env[value] = text

    def define(self, value: str, hint: str | None = None) -> str:
        m = self._marker(value, hint or self.hint(value))
        self.env[value] = m
        return m

    def hint(self, value: str) -> str:
        targets = self.facts.value_targets.get(value)
        if targets:
            return identifier(targets[0].rpartition(".")[2])
        return identifier(stripped_stem(value))

    def source(self, value: str) -> str:
        text = self.env.get(value)
        if text is not None:
            return text
        path = self.facts.state_path_in(value, self.module.path)
        if path is not None:
            return self.self_path(path)
        raise GraphError(
            f"value {value!r} is read in {self.module.path or 'the root module'} "
            f"but neither defined there nor passed in"
        )

    def used(self, value: str) -> bool:
        return self.last_use.get(value, -1) > self.position

    def self_path(self, path: str) -> str:
        """``self.a.b[0].weight`` for a dotted path below this module."""
        return self.module.attribute_expr(path, self.child_calls.kind_of)

    # -- lines ------------------------------------------------------------------------------------
    def line(self, text: str, depth: int = 0, kind: str = "stmt", node: Node | None = None) -> None:
        note = None
        if node is not None and self.child_calls.comments:
            src = source_line(node, self.module.path)
            if src is not None and src != self._last_comment:
                note = src
                self._last_comment = src
        self.code.lines.append(CodeLine(self.depth + depth, text, kind, note))

    def emit_items(self, items: list) -> None:
        for item in items:
            if isinstance(item, NodeItem):
                self.position = item.index
                self.emit_node(item.node)
            elif isinstance(item, ChildItem):
                self.emit_call(item.call)

    def emit_node(self, node: Node) -> None:
        try:
            self._emit_node(node)
        except UnsupportedOpError as exc:  # name the node, once
            if f"node {node.label}" in str(exc):
                raise
            raise UnsupportedOpError(f"node {node.label} ({node.target[:80]}): {exc}") from None

    def _emit_node(self, node: Node) -> None:
        if node.target == "torch.ops.higher_order.cond":
            self.emit_cond(node)
            return
        if node.target == "torch.ops.higher_order.while_loop":
            self.emit_while_loop(node)
            return
        region = _REGIONS.get(node.target)
        if region is not None:
            self.emit_region(node, *region)
            return
        if any(na.arg.kind is ArgKind.GRAPH for na in node.inputs):
            self.emit_hop(node)
            return
        if node.target == "torch.ops.higher_order.with_effects":
            self.emit_with_effects(node)
            return
        if self.emit_augmented(node):
            return
        if node.target == _JVP_EXIT and self.depth:
            self.close_block()
        self.emit_statement(node)
        if node.target == _JVP_ENTER:
            self.line(_FORWARD_AD_HEADER, kind="with")
            if self.child_calls.comments:
                self.code.lines[-1].comment = _FORWARD_AD_NOTE
            self.depth += 1

    def close_block(self) -> None:
        if self.code.lines and self.code.lines[-1].kind == "with":
            self.line("pass", 1)  # a block with nothing in it
        self.depth -= 1

    def emit_statement(self, node: Node) -> None:
        text = node_statement(
            node,
            source=self.source,
            target=lambda v: self.define(v, self._hint_for(node, v)),
            used=self.used,
            device=self.factory_device(node),
        )
        if text is not None:
            self.line(text, node=node)

    def factory_device(self, node: Node) -> str | None:
        """``x.device`` for an op that makes a tensor from nothing (``torch.arange(n,
        device=...)``), so the module runs where its input lives, as the original code
        most likely did (``device=idx.device``); None keeps the recorded device."""
        if not any(na.arg.kind is ArgKind.DEVICE for na in node.inputs):
            return None
        if any(na.arg.kind in _TENSOR_KINDS and na.arg.refs() for na in node.inputs):
            return None  # `.to(device)` and friends move a tensor on purpose: keep theirs
        for marker in self.code.params:
            if self.code.values[marker] in self.tensor_values:
                return f"{marker}.device"
        return None

    def emit_augmented(self, node: Node) -> bool:
        """``out += identity`` for in-place arithmetic on a local (what ``aten.add_`` is in
        Python); the node's result is the same tensor, so it keeps the local's name."""
        symbol = _AUGMENTED.get(node.target)
        args = {na.name: na.arg for na in node.inputs}
        if (
            symbol is None
            or set(args) != {"self", "other"}
            or args["self"].kind is not ArgKind.TENSOR
        ):
            return False
        receiver = self.source(args["self"].value.name)
        if not MARKER.match(receiver):
            return False
        other = argument_source(args["other"], self.source)
        self.line(f"{receiver} {symbol}= {other}", node=node)
        for value in node_defines(node):
            self.bind(value, receiver)
        return True

    def _hint_for(self, node: Node, value: str) -> str:
        if node.target == "torch.ops.aten.sym_size.int":
            dims = [na.arg.value for na in node.inputs if na.name == "dim"]
            recv = [
                na.arg.value.name
                for na in node.inputs
                if na.name == "self" and hasattr(na.arg.value, "name")
            ]
            if dims and recv:
                return f"{self.hint(recv[0])}_size{dims[0]}"
        if stripped_stem(value) == "getitem" and node.target.startswith("torch.ops."):
            return _op_stem(node.target)
        return self.hint(value)

    def emit_call(self, call) -> None:
        child = call.module
        kind = self.child_calls.kind_of(child)
        if kind == "inline":
            self.emit_items(call.items)
            return
        self.position = call.nodes[-1][0]
        rel = relative(child.path, self.module.path)
        target = self.self_path(rel)
        hint = identifier(
            rel.replace(".", "_") if not rel.isdigit() else f"{self.module.attr or 'layer'}_{rel}"
        )
        first = call.nodes[0][1]
        if kind == "layer":
            expr, pattern = self.child_calls.layer_call(call, self.source, target)
        else:
            args = ", ".join(self.source(v) for v in call.inputs)
            method = "forward" if kind == "sequential" else self.child_calls.method_of(call)
            expr = f"{target}({args})" if method == "forward" else f"{target}.{method}({args})"
            outs = call.outputs
            pattern = outs[0] if len(outs) == 1 else tuple(outs)
        single = isinstance(pattern, str)

        def name_for(v: str) -> str:
            if single or stripped_stem(v) == "getitem":
                return self.define(v, hint)
            return self.define(v)

        lhs = bind_target(pattern if pattern != () else None, name_for, self.used)
        self.line(expr if lhs is None else f"{lhs} = {expr}", node=first)

    # -- control flow -----------------------------------------------------------------------------
    def emit_cond(self, node: Node) -> None:
        """``if pred:`` calling two helper methods, one per branch.

        A plain ``if`` reads like the code the branches came from and runs exactly what
        ``torch.cond`` runs in eager mode (the interpreter's kernel does the same); it does
        not export again as ``torch.cond``, which needs the branches as callables.
        """
        ins = [na.arg for na in node.inputs]
        if len(ins) < 3 or ins[1].kind is not ArgKind.GRAPH or ins[2].kind is not ArgKind.GRAPH:
            raise UnsupportedOpError(f"cond node {node.label}: unexpected arguments")
        pred = argument_source(ins[0], self.source)
        operands = ins[3].refs() if len(ins) > 3 else []
        outs = [r for a in node.outputs for r in a.refs()]
        here = source_line(node, self.module.path) if self.child_calls.comments else None
        names = [self.ctx.helper_name("true_branch"), self.ctx.helper_name("false_branch")]
        for name, graph_arg in zip(names, ins[1:3]):
            self.helper(name, graph_arg.value.graph, operands, seen_comment=here)
        args = [
            self.source(v)
            for v in operands
            if self.facts.state_path_in(v, self.module.path) is None
        ]
        pattern = outs[0] if len(outs) == 1 else tuple(outs)
        defined: dict[str, str] = {}

        def define_once(v: str) -> str:
            if v not in defined:
                defined[v] = self.define(v, "cond" if stripped_stem(v) == "getitem" else None)
            return defined[v]

        lhs = bind_target(pattern if outs else None, define_once, self.used)
        self.line(f"if {pred}:", 0, "if", node=node)
        for i, name in enumerate(names):
            if i:
                self.line("else:", 0, "else")
            expr = f"self.{name}({', '.join(args)})"
            self.line(expr if lhs is None else f"{lhs} = {expr}", 1)

    def emit_while_loop(self, node: Node) -> None:
        """A Python ``while`` over the loop's carried values, named as the node's outputs, calling
        a condition and a body helper: what eager ``while_loop`` runs, readable and editable.
        (Torch's own ``while_loop`` traces its functions when gradients are on, and cannot trace a
        bound method.)"""
        ins = node.inputs
        if (
            len(ins) < 3
            or ins[0].arg.kind is not ArgKind.GRAPH
            or ins[1].arg.kind is not ArgKind.GRAPH
        ):
            raise UnsupportedOpError(f"while_loop node {node.label}: unexpected arguments")
        carried = _items(ins[2].arg, node)
        additional = _items(ins[3].arg, node) if len(ins) > 3 else []
        outs = [r for a in node.outputs for r in a.refs()]
        if len(outs) != len(carried):
            raise UnsupportedOpError(
                f"while_loop node {node.label}: {len(outs)} outputs for "
                f"{len(carried)} carried values"
            )
        operands = carried + additional
        refs = [a.refs()[0] if a.refs() else None for a in operands]
        here = source_line(node, self.module.path) if self.child_calls.comments else None
        names = [self.ctx.helper_name("loop_condition"), self.ctx.helper_name("loop_body")]
        for name, na in zip(names, ins[:2]):
            self.helper(name, na.arg.value.graph, refs, seen_comment=here)
        # the loop variables are the node's outputs, bound to the initial values first
        variables = [
            self.define(v, "carried" if stripped_stem(v) == "getitem" else None) for v in outs
        ]
        initial = [argument_source(a, self.source) for a in carried]
        rest = [
            argument_source(a, self.source)
            for a, r in zip(additional, refs[len(carried) :])
            if r is None or self.facts.state_path_in(r, self.module.path) is None
        ]
        args = ", ".join(variables + rest)
        lhs = ", ".join(variables) if len(variables) > 1 else variables[0]
        self.line(f"{lhs} = {', '.join(initial)}", node=node)
        self.line(f"while self.{names[0]}({args}):", 0, "while")
        self.line(f"{lhs} = self.{names[1]}({args})", 1)

    def emit_region(
        self, node: Node, graph_at: int, operands_at: int, header: Callable | None, hint: str
    ) -> None:
        """A higher-order op that runs one subgraph on operands, as a call of a helper method
        (under a ``with`` block for the grad and autocast regions): what it does in eager mode."""
        ins = node.inputs
        if len(ins) <= graph_at or ins[graph_at].arg.kind is not ArgKind.GRAPH:
            raise UnsupportedOpError(
                f"node {node.label}: input {graph_at} of {node.target} is not a subgraph"
            )
        operand_args = []
        for na in ins[operands_at:]:
            if na.is_keyword:
                continue  # checkpoint policy, hints: nothing eager code needs
            if na.arg.kind is ArgKind.TENSORS:
                operand_args += [Argument(ArgKind.TENSOR, r) for r in na.arg.value]
            elif na.arg.kind is ArgKind.STRING_TO_ARGUMENT:
                if na.arg.value:
                    raise UnsupportedOpError(
                        f"node {node.label}: keyword operands of {node.target}"
                    )
            else:
                operand_args.append(na.arg)
        graph = ins[graph_at].arg.value.graph
        if not graph.nodes and not graph.outputs:
            return  # an empty region (export leaves one where a block held only a grad switch)
        refs = [
            a.refs()[0] if a.kind in _OPERAND_KINDS and a.refs() else None for a in operand_args
        ]
        here = source_line(node, self.module.path) if self.child_calls.comments else None
        name = self.ctx.helper_name(hint)
        self.helper(name, graph, refs, seen_comment=here)
        args = [
            argument_source(a, self.source)
            for a, r in zip(operand_args, refs)
            if r is None or self.facts.state_path_in(r, self.module.path) is None
        ]
        outs = [r for a in node.outputs for r in a.refs()]
        lhs = bind_target(
            (outs[0] if len(outs) == 1 else tuple(outs)) if outs else None,
            lambda v: self.define(v, hint if stripped_stem(v) == "getitem" else None),
            self.used,
        )
        expr = f"self.{name}({', '.join(args)})"
        depth = 0
        if header is not None:
            self.line(header(node, lambda a: argument_source(a, self.source)), 0, "with", node=node)
            depth = 1
        self.line(expr if lhs is None else f"{lhs} = {expr}", depth, node=None if header else node)

    def helper(
        self,
        name: str,
        graph: Graph,
        operands: list[str],
        *,
        bind_state: bool = True,
        seen_comment: str | None = None,
        as_tuple: bool = False,
    ) -> str:
        """The helper method ``name`` (already claimed) running ``graph``; operands that are
        this module's state are read from ``self`` instead of being passed (``bind_state``)."""
        sub = BodyBuilder(
            self.facts,
            self.module,
            self.root,
            self.child_calls,
            self.ctx,
            name,
            last_use=_local_last_use(graph),
        )
        sub._last_comment = seen_comment
        sub.tensor_values = {**self.tensor_values, **graph.tensor_values}
        for i, arg in enumerate(graph.inputs):
            refs = arg.refs()
            if not refs:
                continue
            outer = operands[i] if i < len(operands) else None
            path = (
                self.facts.state_path_in(outer, self.module.path)
                if (outer and bind_state)
                else None
            )
            if path is not None:
                sub.bind(refs[0], self.self_path(path))
            else:
                sub.add_param(refs[0])
        for i, node in enumerate(graph.nodes):
            sub.position = i
            sub.emit_node(node)
        sub.position = len(graph.nodes)
        sub.emit_return(list(graph.outputs), as_tuple)
        self.ctx.add(sub.code)
        return name

    def emit_hop(self, node: Node) -> None:
        """Other higher-order ops: their subgraphs become helper methods passed by name."""
        positional = []
        operands: list[str] = []
        for na in node.inputs:
            if na.arg.kind is ArgKind.GRAPH:
                positional.append(None)
            else:
                positional.append(argument_source(na.arg, self.source))
                operands += na.arg.refs()
        for i, na in enumerate(node.inputs):
            if na.arg.kind is ArgKind.GRAPH:
                name = self.ctx.helper_name(_HELPER_NAMES.get(node.target, "subgraph"))
                helper = self.helper(name, na.arg.value.graph, [], bind_state=False, as_tuple=True)
                # a plain function: with gradients on, torch traces it, and cannot trace a
                # bound method
                positional[i] = f"lambda *args: self.{helper}(*args)"
        entry = lookup(node.target)
        if entry is None or entry.render is None:
            raise UnsupportedOpError(
                f"node {node.label}: no Python spelling for {node.target[:60]!r}"
            )
        expr = entry.render(Call(node.target.removeprefix("torch.ops."), {}, positional))
        pattern = output_pattern(node)
        if isinstance(pattern, str) and not node.hop_returns_one_tensor:
            expr = f"{expr}[0]"  # the op returns a list; the node its one item
        lhs = bind_target(pattern, self.define, self.used)
        self.line(expr if lhs is None else f"{lhs} = {expr}", node=node)

    def emit_with_effects(self, node: Node) -> None:
        # (token, op, *args) → (new token, *results); tokens carry no data in eager mode
        for v in node_reads(node)[:1]:
            self.env.setdefault(v, "None")
        outs = node_defines(node)
        for v in outs[:1]:
            self.bind(v, "None")
        if len(node.inputs) < 2 or node.inputs[1].arg.kind is not ArgKind.OPERATOR:
            raise UnsupportedOpError(
                f"with_effects node {node.label}: its second input is not an op"
            )
        target = node.inputs[1].arg.value
        target = target if target.startswith("torch.ops.") else f"torch.ops.{target}"
        # the op itself, its keywords kept, written as the registry writes it
        expr = expression(Node(target, list(node.inputs[2:]), [], {}), self.source)
        rest = outs[1:]
        pattern = rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)
        lhs = bind_target(pattern, self.define, self.used)
        self.line(expr if lhs is None else f"{lhs} = {expr}", node=node)

    def emit_return(self, outputs: list, as_tuple: bool = False) -> None:
        texts = [argument_source(a, self.source) for a in outputs]
        if as_tuple and len(texts) == 1:
            self.line(
                f"return ({texts[0]},)"
            )  # a higher-order op treats a bare tensor as one output
        elif texts:
            self.line("return " + (texts[0] if len(texts) == 1 else ", ".join(texts)))


_AUGMENTED = {
    f"torch.ops.aten.{op}_.{overload}": symbol
    for op, symbol in (("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"))
    for overload in ("Tensor", "Scalar")
}


def _op_stem(target: str) -> str:
    """A local name for an op's unnamed outputs: ``aten.split.Tensor`` → ``split``,
    ``_native_batch_norm_legit_no_training`` → ``batch_norm``."""
    name = target.split(".")[-2].lstrip("_")
    name = name.removeprefix("native_").split("_legit")[0].removesuffix("_with_indices")
    return identifier(name)


def _local_last_use(graph: Graph) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for r in node_reads(node):
            last[r] = i
    for a in graph.outputs:
        for r in a.refs():
            last[r] = len(graph.nodes) + 1
    return last


# -- original source lines ---------------------------------------------------------------------

_FRAME = re.compile(r'File "([^"\n]*)", line (\d+), in ([^\n]*)\n([^\n]*)')
_TRAILING_COMMENT = re.compile(r"\s#\s")


def source_line(node: Node, module_path: str) -> str | None:
    """The line of the original source that produced ``node``, in the forward of the module
    at ``module_path``: the stack frame at that module's depth (generated-code frames such
    as ``<eval_with_key>`` skipped), as a one-line comment body."""
    trace = node.stack_trace
    if not trace:
        return None
    frames = [m.group(4).strip() for m in _FRAME.finditer(trace) if not m.group(1).startswith("<")]
    frames = [f for f in frames if f]
    if not frames:
        return None
    fqns = [f.fqn for f in frames_of(node)]
    depth = 0
    if module_path:
        depth = fqns.index(module_path) if module_path in fqns else len(frames) - 1
    text = frames[min(depth, len(frames) - 1)]
    # the source's own trailing comment (`# type: ignore[...]`) is not part of the statement;
    # looked for only where a comment can show (the line may be 500 MB long)
    hash_mark = _TRAILING_COMMENT.search(text, 0, COMMENT_SCAN)
    text = comment(text[: hash_mark.start()] if hash_mark else text)
    if not text or re.fullmatch(r"[\w.]+", text):
        return None  # a bare name is the tail of a statement spread over lines
    depth = 0
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
    return text + " ..." if depth > 0 else text


# -- turning templates into text ----------------------------------------------------------------


class _Substitute(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, ast.expr]):
        self.mapping = mapping

    def visit_Name(self, node: ast.Name):
        repl = self.mapping.get(node.id)
        if repl is None:
            return node
        return ast.copy_location(repl, node)


def substitute(text: str, names: dict[str, str], mode: str = "exec") -> ast.AST:
    """Parse a template and put the local names in for its markers (as syntax tree nodes,
    so a name can never be read as anything but a name)."""
    tree = ast.parse(text, mode=mode)
    mapping: dict[str, ast.expr] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in mapping and MARKER.match(node.id):
            if node.id not in names:
                raise GraphError(f"internal: no name for {node.id} in {text[:80]!r}")
            mapping[node.id] = ast.Name(names[node.id], ast.Load())
    if mapping:
        tree = _Substitute(mapping).visit(tree)
    return tree


def render_line(line: CodeLine, names: dict[str, str], indent: int) -> list[str]:
    """The source lines (comment included) of one template line at ``indent`` columns."""
    pad = " " * (indent + 4 * line.depth)
    out = []
    if line.comment:
        out.append(f"{pad}# {line.comment}")
    if line.kind == "else":
        out.append(f"{pad}else:")
    elif line.kind in ("with", "while"):
        tree = substitute(line.text[len(line.kind) + 1 : -1], names, mode="eval")
        out.append(printer.format_header(line.kind, ast.unparse(tree), indent + 4 * line.depth))
    elif line.kind == "if":
        test = line.text[3:-1]
        tree = substitute(test, names, mode="eval")
        out.append(printer.format_if(ast.unparse(tree), indent + 4 * line.depth))
    else:
        tree = substitute(line.text, names)
        stmt = tree.body[0]
        column = indent + 4 * line.depth
        out.append(pad + printer.render(printer.statement_doc(stmt, column), column))
    return out
