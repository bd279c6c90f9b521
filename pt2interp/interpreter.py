"""Compile a graph once into a flat plan, then run the plan many times.

At compile time every node's arguments become direct references into a list of value slots
(or constants), each target is resolved to its kernel through the op registry, outputs get
their slots, and each value's last use is known so its slot is cleared right after. Running is
then one loop over small pre-built steps. :meth:`CompiledGraph.run_hooked` is a separate loop that
reports every value to a callback, so the fast path pays nothing for debugging.

Subclass :class:`GraphCompiler` and override one ``compile_*`` method to change how a kind of
argument or output is handled (as ``torch.fx.Interpreter`` lets one override ``call_function``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pt2interp.errors import (
    ExecutionError,
    GraphError,
    LimitError,
    Pt2Error,
    SchemaError,
    UnsupportedOpError,
)
from pt2interp.kinds import ArgKind
from pt2interp.ops import functorch, policy, registry
from pt2interp.ops.fast import fast_kernel
from pt2interp.schema import Argument, Graph, Node, Ref
from pt2interp.weights import torch_dtype

_MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "channels_last_3d": torch.channels_last_3d,
    "preserve_format": torch.preserve_format,
}
_LAYOUTS = {
    "strided": torch.strided,
    "sparse_coo": torch.sparse_coo,
    "sparse_csr": torch.sparse_csr,
    "sparse_csc": torch.sparse_csc,
    "sparse_bsr": torch.sparse_bsr,
    "sparse_bsc": torch.sparse_bsc,
    "_mkldnn": getattr(torch, "_mkldnn", torch.strided),
}


# -- argument sources: how a step finds each argument at run time ------------------------------


class _Const:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def get(self, env):
        return self.value


class _List:
    __slots__ = ("items",)

    def __init__(self, items):
        self.items = items

    def get(self, env):
        return [env[i] if i.__class__ is int else i.get(env) for i in self.items]


class _Dict:
    __slots__ = ("items",)

    def __init__(self, items):
        self.items = items

    def get(self, env):
        return {k: env[i] if i.__class__ is int else i.get(env) for k, i in self.items.items()}


def _fetch(src, env):
    return env[src] if src.__class__ is int else src.get(env)


@dataclass
class Step:
    """One node, ready to run: ``run(env)`` computes and stores its outputs."""

    node: Node
    kernel: Callable
    run: Callable[[list], None]
    free: tuple[int, ...]
    via_fallback: bool = False
    output_slots: dict[str, int] = field(default_factory=dict)
    subgraphs: list[Subgraph] = field(default_factory=list)


class CompiledGraph:
    """A compiled graph. Call it with the graph's inputs (a list) to get its outputs (a list)."""

    def __init__(
        self,
        graph: Graph,
        nslots: int,
        input_slots: list[int | None],
        steps: list[Step],
        output_sources: list,
        slot_of: dict[str, int],
        where: str,
        member: str = "<graph>",
    ):
        self.member = member
        self.graph = graph
        self.nslots = nslots
        self.input_slots = input_slots
        self.steps = steps
        self.output_sources = output_sources
        self.slot_of = slot_of
        self.where = where
        self._fast = [(s.run, s.free) for s in steps]

    def run(self, inputs: list) -> list:
        env = self.start(inputs)
        self.run_steps(env, self._fast)
        return self.finish(env)

    __call__ = run

    def start(self, inputs: list) -> list:
        """A fresh value list holding the graph's inputs (what :meth:`run_steps` runs in)."""
        env = [None] * self.nslots
        for slot, value in zip(self.input_slots, inputs):
            if slot is not None:
                env[slot] = value
        return env

    def finish(self, env: list) -> list:
        """The graph's outputs, read from a value list the steps have run in."""
        return [env[s] if s.__class__ is int else s.get(env) for s in self.output_sources]

    def steps_between(self, start: int, end: int) -> list[tuple[Callable, tuple[int, ...]]]:
        """``(run, free)`` of nodes ``start`` to ``end - 1``, for :meth:`run_steps`."""
        return self._fast[start:end]

    def run_steps(self, env: list, fast: list[tuple[Callable, tuple[int, ...]]]) -> None:
        """Run some of this graph's steps (from :meth:`steps_between`) in ``env``, clearing
        each value after its last use; a failing kernel is named by its node."""
        step = None
        try:
            for step, free in fast:
                step(env)
                for s in free:
                    env[s] = None
        except BaseException as exc:
            functorch.unwind()  # a failed vmap or jvp body must not leave this thread inside it
            if isinstance(exc, LimitError):
                raise self._located(step, exc) from None
            if isinstance(exc, Pt2Error) or not isinstance(exc, Exception):
                raise
            raise self._failure(step, exc) from exc  # a kernel failed: ``step`` is the failing one

    def run_hooked(self, inputs: list, on_node: Callable[[str, str, Any], None]) -> list:
        """Like :meth:`run`, calling ``on_node(name, target, value)`` after every node."""
        env = [None] * self.nslots
        for slot, value in zip(self.input_slots, inputs):
            if slot is not None:
                env[slot] = value
        for step in self.steps:
            try:
                step.run(env)
            except BaseException as exc:
                functorch.unwind()
                if isinstance(exc, LimitError):
                    raise self._located(step.run, exc) from None
                if isinstance(exc, Pt2Error) or not isinstance(exc, Exception):
                    raise
                raise self._failure(step.run, exc) from exc
            for name, slot in step.output_slots.items():
                on_node(name, step.node.target, env[slot])
            for s in step.free:
                env[s] = None
        return [_fetch(s, env) for s in self.output_sources]

    def _located(self, run: Callable | None, exc: LimitError) -> LimitError:
        """``exc`` naming the node whose ``run`` asked for too much (the innermost one)."""
        if exc.where is not None:
            return exc
        for i, step in enumerate(self.steps):
            if step.run is run:
                node = step.node
                where = f"{self.member}: {self.where}.nodes[{i}] ({node.label}, {node.target})"
                return LimitError(exc.detail, limit=exc.limit, where=where)
        return exc

    def _failure(self, run: Callable | None, exc: Exception) -> ExecutionError:
        """The error for a kernel that raised ``exc`` in the step whose ``run`` is ``run``."""
        what = _kernel_missing(exc)
        if what is None:
            lines = [x for x in str(exc).splitlines() if x.strip()]
            what = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
        for i, step in enumerate(self.steps):
            if step.run is run:
                node = step.node
                return ExecutionError(
                    f"{self.member}: {self.where}.nodes[{i}] ({node.label}, {node.target}) "
                    f"failed: {what}"
                )
        return ExecutionError(f"{self.member}: {self.where} failed: {what}")

    def fallback_targets(self) -> set[str]:
        """Targets that ran through the generic ``torch.ops`` fallback (no registry entry)."""
        out = {s.node.target for s in self.steps if s.via_fallback}
        for s in self.steps:
            for sub in s.subgraphs:
                out |= sub.plan.fallback_targets()
        return out


_NO_KERNEL = re.compile(r"Could not run '([^']+)' with arguments from the '([^']+)' backend")
_KERNELS_ON = re.compile(r"is only available for these backends: \[([^\]]*)\]")
_DEVICE_KEYS = ("CPU", "CUDA", "HIP", "XPU", "MPS", "MTIA", "HPU", "PrivateUse1")


def _kernel_missing(exc: Exception) -> str | None:
    """torch's "Could not run 'aten::x' with arguments from the 'CPU' backend ..." (a paragraph
    about custom builds, then every dispatch key) as one line: which op has no kernel for this
    device, and on which devices it has one: an op bound to the device the program was
    exported on."""
    text = str(exc)
    missing = _NO_KERNEL.search(text)
    if not isinstance(exc, NotImplementedError) or missing is None:
        return None
    op, backend = missing.groups()
    listed = _KERNELS_ON.search(text)
    devices = [k for k in (listed.group(1).split(", ") if listed else []) if k in _DEVICE_KEYS]
    where = f" (this torch runs it on {', '.join(devices)} only)" if devices else ""
    return (
        f"{op} has no kernel for {backend.lower()}{where}: the op is bound to the device the "
        "program was exported on; load it on that device"
    )


class Subgraph:
    """A compiled subgraph of a higher-order op, callable as ``fn(*operands) -> list``.
    ``runner`` runs it (``plan.run`` unless replaced: CUDA graphs replay some subgraphs)."""

    __slots__ = ("name", "plan", "runner")

    def __init__(self, name: str, plan: CompiledGraph):
        self.name = name
        self.plan = plan
        self.runner: Callable[[list], list] = plan.run

    def __call__(self, *operands):
        return self.runner(list(operands))

    def __repr__(self) -> str:
        return f"<subgraph {self.name}: {len(self.plan.steps)} nodes>"


class GraphCompiler:
    """Turns a :class:`Graph` into a :class:`CompiledGraph`.

    ``device``: when set, every device argument recorded in the graph (factory ops' ``device=cpu``,
    ``to.device``) is replaced by it, so a program moved to CUDA creates its tensors there; so is
    an autocast region's device type where it names the device the program was exported on.
    """

    def __init__(self, *, device: torch.device | None = None, member: str = "<graph>"):
        self.device = device
        self.member = member
        self._written: set[str] = set()  # values the graphs being compiled write into
        self._exported_on: str | None = None  # device type of the outermost graph's tensors

    # -- entry point -------------------------------------------------------------------------
    def compile(self, graph: Graph, where: str = "graph") -> CompiledGraph:
        if graph.outline:
            raise GraphError(
                f"{self.member}: {where} was read as an outline (read_program(outline=True)), "
                "which keeps no node arguments: read it in full to run it"
            )
        functorch.check_balanced([n.target for n in graph.nodes], f"{self.member}: {where}")
        if self._exported_on is None:
            self._exported_on = next((m.device.type for m in graph.tensor_values.values()), "")
        slot_of: dict[str, int] = {}

        def define(name: str, what: str) -> int:
            if name in slot_of:
                raise GraphError(
                    f"{self.member}: {where}: value {name!r} is defined twice ({what})"
                )
            slot_of[name] = len(slot_of)
            return slot_of[name]

        input_slots: list[int | None] = []
        for i, arg in enumerate(graph.inputs):
            refs = arg.refs()
            input_slots.append(
                define(refs[0], f"input {i}")
                if len(refs) == 1 and arg.kind is not ArgKind.TENSORS
                else None
            )

        # last use of each value, so its slot can be cleared right after
        reads = [{r for na in node.inputs for r in na.arg.refs()} for node in graph.nodes]
        last_use: dict[str, int] = {}
        for idx, names in enumerate(reads):
            for r in names:
                last_use[r] = idx
        pinned = {r for a in graph.outputs for r in a.refs()}

        outer_written = self._written
        # only views consult it: a graph tree without one pays no schema look-ups
        has_views = any(n.target in _VIEWS for n in graph.iter_nodes())
        self._written = (written_values(graph) if has_views else set()) | outer_written
        steps = []
        for idx, node in enumerate(graph.nodes):
            npath = f"{where}.nodes[{idx}]"
            if not reads[idx] <= slot_of.keys():
                self._undefined_read(node, npath, slot_of)
            step = self.compile_node(node, slot_of, npath, define)
            step.free = tuple(
                sorted(slot_of[r] for r in reads[idx] if last_use[r] == idx and r not in pinned)
            )
            steps.append(step)

        self._written = outer_written
        outputs = []
        for i, arg in enumerate(graph.outputs):
            for r in arg.refs():
                if r not in slot_of:
                    raise GraphError(
                        f"{self.member}: {where}.outputs[{i}] names {r!r}, which nothing defines"
                    )
            outputs.append(self.compile_argument(arg, slot_of, f"{where}.outputs[{i}]"))
        return CompiledGraph(
            graph, len(slot_of), input_slots, steps, outputs, slot_of, where, self.member
        )

    def _undefined_read(self, node: Node, path: str, slot_of: dict[str, int]):
        for na in node.inputs:
            for r in na.arg.refs():
                if r not in slot_of:
                    raise GraphError(
                        f"{self.member}: {path} ({node.label}, {node.target}): input "
                        f"'{na.name or '#'}' reads {r!r}, which no input or earlier node defines"
                    )

    # -- nodes -------------------------------------------------------------------------------
    def resolve(self, node: Node, path: str) -> tuple[Callable, Any, bool]:
        """(kernel, torch op or None, via_fallback) for a node's target."""
        entry = registry.lookup(node.target)
        if entry is not None and entry.kernel is not None:
            op = None
            if node.target.startswith("torch.ops."):
                try:
                    op = registry.resolve_torch_op(node.target)
                except UnsupportedOpError:
                    op = None
            return entry.kernel, op, False
        if not node.target.startswith("torch.ops."):
            raise UnsupportedOpError(
                f"{self.member}: {path} ({node.label}): target {node.target!r} is neither a "
                "torch.ops op nor one of the Python operators pt2interp runs"
            )
        try:
            op = registry.resolve_torch_op(node.target)
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(f"{self.member}: {path} ({node.label}): {exc}") from None
        kernel = getattr(op, "_op", op)  # the C++ callable, skipping OpOverload.__call__'s frame
        return kernel, op, entry is None

    def compile_node(self, node: Node, slot_of: dict, path: str, define) -> Step:
        kernel, op, via_fallback = self.resolve(node, path)
        for i in _SUBGRAPH_INPUTS.get(node.target, ()):
            if i >= len(node.inputs) or node.inputs[i].arg.kind is not ArgKind.GRAPH:
                got = f"a {node.inputs[i].arg.kind} argument" if i < len(node.inputs) else "nothing"
                raise GraphError(
                    f"{self.member}: {path} ({node.label}, {node.target}): input {i} must be a "
                    f"subgraph, got {got}"
                )
        args, kwargs = self.compile_inputs(node, op, slot_of, path)
        if (
            node.target == _AUTOCAST
            and self.device is not None
            and args
            and isinstance(args[0], _Const)
            and args[0].value == self._exported_on
        ):
            args[0] = _Const(self.device.type)  # autocast where the program runs, as export saw it
        # Tensor methods bind only with a tensor first: core ATen writes aten.sub.Tensor(1.0, x)
        if (
            not kwargs
            and not via_fallback
            and node.inputs
            and node.inputs[0].arg.kind is ArgKind.TENSOR
        ):
            kernel = fast_kernel(node.target, len(args)) or kernel
        kernel = policy.guard_target(node.target, op, kernel)
        if node.target in _VIEWS:
            kernel = _view_or_copy(kernel, node, self._aliasing_matters(node))
        if via_fallback:
            self._refuse_unguarded_operators(node, path)
        store, out_slots = self.compile_outputs(node, define, path)
        run = _make_step(kernel, args, kwargs, store)
        step = Step(node, kernel, run, (), via_fallback, out_slots)
        step.subgraphs = [
            a.value
            for a in (*args, *kwargs.values())
            if isinstance(a, _Const) and isinstance(a.value, Subgraph)
        ]
        return step

    def _aliasing_matters(self, node: Node) -> bool:
        """Whether a view's result must share memory with its input: some node writes into
        either (``_written`` is kept by :meth:`compile` for the graphs being compiled)."""
        names = {r for na in node.inputs for r in na.arg.refs()} | {
            r for a in node.outputs for r in a.refs()
        }
        return bool(names & self._written)

    def _refuse_unguarded_operators(self, node: Node, path: str) -> None:
        # torch's own higher-order kernels call an op argument directly, past the policy's checks
        for i, na in enumerate(node.inputs):
            if na.arg.kind is ArgKind.OPERATOR:
                op = self.compile_argument(na.arg, {}, f"{path}.inputs[{i}]").value
                if not policy.passes_unguarded(op):
                    raise UnsupportedOpError(
                        f"{self.member}: {path} ({node.label}): {node.target} would call "
                        f"{na.arg.value} without the checks pt2interp's op policy makes"
                    )

    def compile_inputs(self, node: Node, op, slot_of: dict, path: str) -> tuple[list, dict]:
        schema = getattr(op, "_schema", None)
        given = {}
        positional_unnamed = []
        for i, na in enumerate(node.inputs):
            src = self.compile_argument(na.arg, slot_of, f"{path}.inputs[{i}]")
            if not na.name or schema is None:
                if na.name and na.is_keyword:
                    given[na.name] = src
                else:
                    positional_unnamed.append(src)
            else:
                given[na.name] = src
        if schema is None:
            return positional_unnamed, given
        args, kwargs = [], {}
        params = _schema_params(op)
        for name in given:
            if name not in params.names:
                raise SchemaError(
                    f"node {node.label} passes argument {name!r}, which {node.target} does not "
                    f"take in torch {torch.__version__} (it takes {sorted(params.names)})",
                    member=self.member,
                    path=path,
                )
        gap = False
        for name, kwarg_only, required in params.args:
            if name in given:
                if kwarg_only or gap:
                    kwargs[name] = given[name]
                else:
                    args.append(given[name])
            else:
                if required:
                    raise SchemaError(
                        f"node {node.label} lacks required argument {name!r} of {node.target}",
                        member=self.member,
                        path=path,
                    )
                gap = True
        return positional_unnamed + args, kwargs

    def compile_outputs(self, node: Node, define, path: str):
        """A function storing the kernel's result into slots, and the slots by name."""
        outs = node.outputs
        names: dict[str, int] = {}
        if not outs or (len(outs) == 1 and outs[0].kind is ArgKind.NONE):
            return None, names
        is_hop = node.target.startswith("torch.ops.higher_order.")

        def one(arg: Argument, where: str):
            if arg.kind.names_value:
                refs = arg.refs()
                if not refs:
                    return None  # a constant output (e.g. as_int): nothing to store
                slot = names[refs[0]] = define(refs[0], f"{path} output")
                return slot
            if arg.kind is ArgKind.TENSORS:
                slots = tuple(define(r.name, f"{path} output") for r in arg.value)
                names.update({r.name: s for r, s in zip(arg.value, slots)})
                return slots
            if arg.kind is ArgKind.NONE:
                return None
            raise SchemaError(
                f"node {node.label}: unsupported output kind '{arg.kind}'",
                member=self.member,
                path=where,
            )

        if len(outs) == 1:
            target = one(outs[0], f"{path}.outputs[0]")
            if target is None:
                return None, names
            if isinstance(target, tuple):
                slots = target

                def store(env, result):
                    for s, v in zip(slots, result):
                        env[s] = v

                return store, names
            slot = target
            if is_hop and not node.hop_returns_one_tensor:

                def store(env, result):
                    env[slot] = result[0] if isinstance(result, (list, tuple)) else result

                return store, names
            return slot, names

        targets = [one(a, f"{path}.outputs[{i}]") for i, a in enumerate(outs)]

        def store(env, result):
            for t, v in zip(targets, result):
                if t is None:
                    continue
                if t.__class__ is int:
                    env[t] = v
                else:
                    for s, x in zip(t, v):
                        env[s] = x

        return store, names

    # -- arguments ---------------------------------------------------------------------------
    def compile_argument(self, arg: Argument, slot_of: dict, path: str):
        kind, v = arg.kind, arg.value
        leaf = kind.leaf
        if leaf.holds_ref:  # graph values, or constants in their place
            if not kind.is_list:
                return slot_of[v.name] if isinstance(v, Ref) else _Const(v)
            if not kind.element.is_list:
                items = [slot_of[x.name] if isinstance(x, Ref) else _Const(x) for x in v]
                if all(isinstance(i, _Const) for i in items):
                    return _Const([i.value for i in items])
                return _List(items)
            return _List([_List([slot_of[x.name] for x in inner]) for inner in v])
        if leaf.is_literal:
            if not kind.is_list:
                return _Const(v)
            if not kind.element.is_list:
                return _Const(list(v))
            return _Const([list(x) for x in v])
        if kind is ArgKind.SCALAR_TYPE:
            return _Const(torch_dtype(v, where=f"{self.member}: {path}: "))
        if kind is ArgKind.MEMORY_FORMAT:
            return _Const(_MEMORY_FORMATS.get(v))
        if kind is ArgKind.LAYOUT:
            return _Const(_LAYOUTS.get(v, torch.strided))
        if kind is ArgKind.DEVICE:
            if self.device is not None:
                return _Const(self.device)
            try:
                return _Const(
                    torch.device(v.type, v.index) if v.index is not None else torch.device(v.type)
                )
            except (RuntimeError, ValueError) as exc:
                raise SchemaError(f"not a device: {exc}", member=self.member, path=path) from None
        if kind is ArgKind.GRAPH:
            return _Const(Subgraph(v.name, self.compile(v.graph, where=f"{path}.graph")))
        if kind is ArgKind.OPERATOR:
            try:
                return _Const(
                    registry.resolve_torch_op(v)
                    if v.startswith("torch.ops.")
                    else registry.resolve_torch_op("torch.ops." + v)
                )
            except UnsupportedOpError as exc:
                raise UnsupportedOpError(f"{self.member}: {path}: {exc}") from None
        if kind is ArgKind.CUSTOM_OBJ:
            return slot_of[v.name]
        if kind is ArgKind.STRING_TO_ARGUMENT:
            return _Dict(
                {key: self.compile_argument(a, slot_of, f"{path}.{key}") for key, a in v.items()}
            )
        raise SchemaError(f"unknown argument kind '{kind}'", member=self.member, path=path)


# -- views whose input came out in another layout than export saw -----------------------------

_VIEWS = frozenset({"torch.ops.aten.view.default", "torch.ops.aten._unsafe_view.default"})


def written_values(graph: Graph) -> set[str]:
    """Values some node writes into: an argument its schema marks ``(a!)``."""
    written: set[str] = set()
    for node in graph.nodes:
        written |= node_writes(node)
    return written


def node_writes(node: Node) -> set[str]:
    """The values one node writes into (its arguments the op's schema marks ``(a!)``)."""
    schema = registry.schema_of(node.target) if node.target.startswith("torch.ops.aten.") else None
    if schema is None:
        return set()
    writes = {
        a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write
    }
    if not writes:
        return set()
    return {r for na in node.inputs if na.name in writes for r in na.arg.refs()}


def _view_or_copy(kernel: Callable, node: Node, aliasing_matters: bool) -> Callable:
    """``view``, falling back to ``reshape`` when this device's kernels laid the input out
    differently from the kernels export traced (CUDA's attention output is transposed in
    memory): a copy, so only where nothing needs the view to share its input's memory."""

    def view(self, size):
        try:
            return kernel(self, size)
        except RuntimeError as exc:
            if "view size is not compatible" not in str(exc):
                raise
            if aliasing_matters:
                raise RuntimeError(
                    "the input's layout differs from what export recorded (another device's "
                    "kernel made it) and the view cannot become a copy: the graph writes into "
                    f"it ({str(exc).split('(')[0].strip()})"
                ) from None
            return self.reshape(size)

    view.__wrapped__ = kernel  # what it calls first, for introspection (tests, profiling)
    return view


_AUTOCAST = "torch.ops.higher_order.wrap_with_autocast"

# Higher-order ops: which positional inputs must be subgraphs.
_SUBGRAPH_INPUTS = {
    "torch.ops.higher_order.cond": (1, 2),
    "torch.ops.higher_order.while_loop": (0, 1),
    "torch.ops.higher_order.map_impl": (0,),
    "torch.ops.higher_order.wrap_with_set_grad_enabled": (1,),
    "torch.ops.higher_order.wrap_with_autocast": (4,),
    "torch.ops.higher_order.wrap": (0,),
    "torch.ops.higher_order.invoke_subgraph": (0,),
    "torch.ops.higher_order.hints_wrapper": (0,),
    "torch.ops.higher_order.tag_activation_checkpoint": (0,),
}


@dataclass(frozen=True)
class _SchemaParams:
    names: frozenset[str]
    args: tuple[tuple[str, bool, bool], ...]  # (name, kwarg_only, required)


_SCHEMA_PARAMS: dict[int, _SchemaParams] = {}


def _schema_params(op) -> _SchemaParams:
    """What plan-building needs of an op's schema, computed once per op."""
    params = _SCHEMA_PARAMS.get(id(op))
    if params is None:
        arguments = op._schema.arguments
        params = _SchemaParams(
            frozenset(a.name for a in arguments),
            tuple(
                (a.name, a.kwarg_only, not a.has_default_value() and not _is_optional(a))
                for a in arguments
            ),
        )
        _SCHEMA_PARAMS[id(op)] = params
    return params


def _is_optional(schema_arg) -> bool:
    return "Optional" in str(schema_arg.type) or str(schema_arg.type).endswith("?")


def _make_step(kernel, args: list, kwargs: dict, store) -> Callable[[list], None]:
    """A closure specialised for the common shapes: every argument a slot or constant."""
    all_slots = all(a.__class__ is int for a in args) and not kwargs
    if all_slots and store.__class__ is int:
        out = store
        if len(args) == 1:
            (a0,) = args

            def step(env):
                env[out] = kernel(env[a0])

            return step
        if len(args) == 2:
            a0, a1 = args

            def step(env):
                env[out] = kernel(env[a0], env[a1])

            return step
        slots = tuple(args)

        def step(env):
            env[out] = kernel(*[env[i] for i in slots])

        return step

    arg_srcs = tuple(args)
    kw_items = tuple(kwargs.items())

    def call(env):
        a = [env[x] if x.__class__ is int else x.get(env) for x in arg_srcs]
        if kw_items:
            return kernel(
                *a, **{k: env[x] if x.__class__ is int else x.get(env) for k, x in kw_items}
            )
        return kernel(*a)

    if store is None:
        return call
    if store.__class__ is int:
        out = store

        def step(env):
            env[out] = call(env)

        return step

    def step(env):
        store(env, call(env))

    return step
